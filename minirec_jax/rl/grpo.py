"""GRPO objective: group-relative advantages, clipped policy ratio, KL to a reference.

Shapes: B prompts, G completions each, L tokens per completion (one SID).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def group_advantages(rewards: jax.Array, *, ddof: int = 1, eps: float = 1e-4) -> jax.Array:
  """(r - mean_group) / (std_group + eps): `[B, G]` -> `[B, G]`.

  Official MiniOneRec: unbiased std (ddof=1) and eps 1e-4. A group with equal rewards gets 0.
  """
  mean = rewards.mean(axis=1, keepdims=True)
  std = jnp.std(rewards, axis=1, keepdims=True, ddof=ddof)
  return (rewards - mean) / (std + eps)


ADVANTAGE_MODES = ('group', 'sibling', 'level')


def token_advantages(rewards: jax.Array, codes: jax.Array, valid: jax.Array, *, mode: str,
                     level_rewards: jax.Array | None = None, ddof: int = 1,
                     eps: float = 1e-4) -> jax.Array:
  """Per-token advantages `[B, G, L]` of G candidates (SIDs of L codes) per prompt.

  Args:
    rewards: `[B, G]` the candidates' rewards.
    codes: int `[B, G, L]` their SID codes.
    valid: bool `[B, G]`, False for missing candidates (never anyone's sibling).
    mode: 'group': every token gets its candidate's `group_advantages` (official GRPO).
      'sibling': the token at level l is compared only with its siblings, the candidates of
      the group that share its first l codes (all of them at l = 0): (r - mean over siblings)
      / (group std + eps), so a token is credited for its choice given its prefix (as
      V-STAR's sibling groups); a token without siblings gets 0.
      'level': each level its own `group_advantages` of `level_rewards[..., l]`.
    level_rewards: `[B, G, L]`, for mode 'level' (e.g. whether the first l + 1 codes match
      the target's, and the full reward at the last level).
    ddof, eps: as `group_advantages`.
  """
  if mode not in ADVANTAGE_MODES:
    raise ValueError(f'unknown advantage mode {mode!r}; use one of {ADVANTAGE_MODES}')
  num_levels = codes.shape[-1]
  if mode == 'level':
    if level_rewards is None:
      raise ValueError("advantage mode 'level' needs level_rewards [B, G, L]")
    return jnp.stack([group_advantages(level_rewards[..., l], ddof=ddof, eps=eps)
                      for l in range(num_levels)], axis=-1)
  if mode == 'group':
    return jnp.broadcast_to(group_advantages(rewards, ddof=ddof, eps=eps)[..., None],
                            codes.shape).astype(jnp.float32)
  scale = jnp.std(rewards, axis=1, keepdims=True, ddof=ddof) + eps
  out = []
  for l in range(num_levels):
    # siblings[b, i, j]: j shares i's first l codes (l = 0: every valid candidate).
    same = jnp.all(codes[:, :, None, :l] == codes[:, None, :, :l], axis=-1)
    siblings = same & valid[:, None, :] & valid[:, :, None]
    count = siblings.sum(-1)
    mean = jnp.where(siblings, rewards[:, None, :], 0.0).sum(-1) / jnp.maximum(count, 1)
    out.append(jnp.where(count > 1, (rewards - mean) / scale, 0.0))
  return jnp.stack(out, axis=-1).astype(jnp.float32)


def kl_estimate(log_probs: jax.Array, ref_log_probs: jax.Array, estimator: str) -> jax.Array:
  """Per-token KL(policy || reference) estimates from sampled tokens.

  k1: logp - ref_logp (unbiased, high variance, can be negative);
  k3: exp(ref - logp) - (ref - logp) - 1 (unbiased, >= 0; the official choice).
  """
  diff = ref_log_probs - log_probs
  if estimator == 'k1':
    return -diff
  if estimator == 'k3':
    return jnp.exp(diff) - diff - 1.0
  raise ValueError(f"unknown KL estimator {estimator!r}; use 'k1' or 'k3'")


def aggregate(per_token: jax.Array, mask: jax.Array, mode: str) -> jax.Array:
  """`[N, L]` per-token values -> scalar.

  seq_mean_token_mean: mean over each sequence's tokens, then over sequences (official);
  token_mean: mean over all tokens of the batch (DAPO).
  """
  mask = mask.astype(jnp.float32)
  if mode == 'seq_mean_token_mean':
    per_seq = (per_token * mask).sum(-1) / jnp.maximum(mask.sum(-1), 1.0)
    has = (mask.sum(-1) > 0).astype(jnp.float32)
    return (per_seq * has).sum() / jnp.maximum(has.sum(), 1.0)
  if mode == 'token_mean':
    return (per_token * mask).sum() / jnp.maximum(mask.sum(), 1.0)
  raise ValueError(f"unknown aggregation {mode!r}; use 'seq_mean_token_mean' or 'token_mean'")


def grpo_loss(log_probs: jax.Array, old_log_probs: jax.Array, ref_log_probs: jax.Array,
              advantages: jax.Array, mask: jax.Array, *, clip_eps: float = 0.2,
              beta: float = 1e-3, kl_estimator: str = 'k3',
              aggregation: str = 'seq_mean_token_mean') -> tuple[jax.Array, dict]:
  """Clipped surrogate + beta * KL, aggregated.

  Args:
    log_probs: `[N, L]` current policy log-probs of the sampled tokens (differentiated).
    old_log_probs: `[N, L]` log-probs under the rollout policy (constant). With one update
      per rollout they equal `stop_gradient(log_probs)`, so the ratio is exactly 1 and clipping
      is inactive (the official setting).
    ref_log_probs: `[N, L]` under the frozen reference policy.
    advantages: `[N]` one per sequence, or `[N, L]` one per token.
    mask: `[N, L]` real tokens (0 for missing completions).
  """
  ratio = jnp.exp(log_probs - old_log_probs)
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  surrogate = jnp.minimum(ratio * adv, jnp.clip(ratio, 1 - clip_eps, 1 + clip_eps) * adv)
  kl = kl_estimate(log_probs, ref_log_probs, kl_estimator)
  per_token = -surrogate + beta * kl
  loss = aggregate(per_token, mask, aggregation)
  m = mask.astype(jnp.float32)
  count = jnp.maximum(m.sum(), 1.0)
  clipped = (jnp.abs(ratio - 1.0) > clip_eps).astype(jnp.float32)
  metrics = {'kl': (kl * m).sum() / count, 'clip_fraction': (clipped * m).sum() / count,
             'ratio_mean': (ratio * m).sum() / count}
  return loss, metrics
