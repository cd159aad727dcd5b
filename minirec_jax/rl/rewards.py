"""GRPO rewards for a group of G candidate items per prompt; each a pure, jittable function.

All take candidate items int32 `[batch, G]` (in rollout order: beam rank for beam search) and
return float32 `[batch, G]`. Items that share a SID count as the same item (`item_to_group`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def hits(items: jax.Array, targets: jax.Array, item_to_group: jax.Array) -> jax.Array:
  """bool `[batch, G]`: candidate is the target (same SID group); item -1 never hits."""
  groups = jnp.where(items >= 0, item_to_group[jnp.maximum(items, 0)], -1)
  return groups == item_to_group[targets][:, None]


def rule_reward(items, targets, item_to_group) -> jax.Array:
  """1.0 for the exact hit, 0.0 otherwise (official `rule_reward`)."""
  return hits(items, targets, item_to_group).astype(jnp.float32)


def rank_penalties(group_size: int) -> jax.Array:
  """p_i = -(1/log2(i+2)) / sum_j 1/log2(j+2), i = 0..G-1 (sums to -1; G=16: p_0 = -0.1638)."""
  weights = 1.0 / jnp.log2(jnp.arange(group_size, dtype=jnp.float32) + 2.0)
  return -weights / weights.sum()


def rank_reward(items, targets, item_to_group) -> jax.Array:
  """Official `ndcg_rule_reward`: in a group that contains the hit, each miss at rank i gets
  p_i and the hit 0; a group without a hit gets 0 everywhere."""
  hit = hits(items, targets, item_to_group)
  penalty = jnp.broadcast_to(rank_penalties(items.shape[1]), items.shape)
  return jnp.where(hit.any(axis=1, keepdims=True) & ~hit, penalty, 0.0)


def prefix_reward(items, targets, codes: jax.Array) -> jax.Array:
  """Partial credit: fraction of the target's SID prefix the candidate matches.

  codes: int32 `[num_items, L]` SID codes. A candidate matching the first m levels gets m/L.
  """
  cand = codes[jnp.maximum(items, 0)]                      # [b, G, L]
  target = codes[targets][:, None, :]                      # [b, 1, L]
  matched = jnp.cumprod(cand == target, axis=-1).sum(-1)   # length of the common prefix
  return jnp.where(items >= 0, matched / codes.shape[1], 0.0).astype(jnp.float32)


def group_normalise(scores: jax.Array, eps: float = 1e-6) -> jax.Array:
  """z-score within each group (row): `[batch, G]`."""
  mean = scores.mean(axis=1, keepdims=True)
  std = scores.std(axis=1, keepdims=True)
  return (scores - mean) / (std + eps)


def collaborative_reward(scores: jax.Array) -> jax.Array:
  """A frozen CF model's scores of the candidates (e.g. SASRec logits), z-normalised within
  the group so every group has spread (official: raw logits, which dwarf the rule reward)."""
  return group_normalise(scores.astype(jnp.float32))


def collaborative_rank_reward(candidate_scores: jax.Array, all_scores: jax.Array) -> jax.Array:
  """The DCG gain 1 / log2(2 + r) of each candidate's rank r (0 = first) in a frozen CF model's
  ranking of every item: an absolute signal of where the peer ranks it, so a group whose
  candidates all sit deep in that ranking gets little spread, unlike the z-score of
  `collaborative_reward`, which spreads every group to unit variance.

  Args:
    candidate_scores: float `[batch, G]`, the model's scores of the candidates.
    all_scores: float `[batch, num_items]`, its scores of every item for the same prompts.
  """
  rank = (all_scores[:, None, :] > candidate_scores[:, :, None]).sum(-1)  # ties share a rank
  return 1.0 / jnp.log2(2.0 + rank.astype(jnp.float32))


def combine(weights: dict[str, float], parts: dict[str, jax.Array]) -> jax.Array:
  """Weighted sum of reward parts; weights of 0 skip a part."""
  total = None
  for name, weight in weights.items():
    if weight:
      term = weight * parts[name]
      total = term if total is None else total + term
  if total is None:
    raise ValueError(f'all reward weights are zero: {weights}')
  return total
