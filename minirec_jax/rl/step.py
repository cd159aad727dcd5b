"""The GRPO update as a pure step: `(state, ref_params, reward_params, batch, rng)`.

batch (B prompts, G candidates each, from `rollout`):
  tokens, positions, mask: [B, T] prompts;  history: [B, H], history_len: [B];
  target: [B];  items: [B, G];  codes: [B, G, L]
Rewards are computed inside the step (so a frozen reward model's params are an argument),
then group-relative advantages (per candidate, or per token: `grpo.token_advantages`), the
clipped surrogate with KL to the reference, and `updates_per_rollout` optimizer updates on the
same rollout. With one update the old policy is the current one (old_log_probs =
stop_gradient(log_probs): ratio exactly 1, clipping inactive, as the official code); with more,
the old log-probs are those of the policy that made the rollout, so the ratio moves and the
clipping bounds how far the later updates go.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from minirec_jax.data.sid_sequences import SidTokenMap
from minirec_jax.decoding import beam_search
from minirec_jax.decoding import prompted
from minirec_jax.models.decoder import DecoderConfig
from minirec_jax.models.sasrec import ScoreFns
from minirec_jax.rl import grpo
from minirec_jax.rl import rewards as rewards_lib


def group_rewards(batch, reward_params, *, weights: dict[str, float], item_to_group,
                  codes_table, scorer: ScoreFns | None) -> tuple[jax.Array, dict]:
  """Weighted reward `[B, G]` and each part's mean. `scorer`: a frozen collaborative model's
  `score(params, history [B, H], history_len [B], items [B, G]) -> [B, G]` and
  `score_all(params, history, history_len) -> [B, num_items]` (`models.sasrec.score_fns`), for
  the 'collab' and 'collab_rank' parts."""
  items, target = batch['items'], batch['target']
  parts = {}
  if weights.get('rule'):
    parts['rule'] = rewards_lib.rule_reward(items, target, item_to_group)
  if weights.get('rank'):
    parts['rank'] = rewards_lib.rank_reward(items, target, item_to_group)
  if weights.get('prefix'):
    parts['prefix'] = rewards_lib.prefix_reward(items, target, codes_table)
  collab = [name for name in ('collab', 'collab_rank') if weights.get(name)]
  if collab:
    if scorer is None:
      raise ValueError(f'reward weights {collab} > 0 need a reward model (scorer)')
    history, history_len = batch['history'], batch['history_len']
    scores = scorer.score(reward_params, history, history_len, jnp.maximum(items, 0))
    # A prompt without a history (an item-text RL prompt) has no collaborative signal.
    has_history = history_len[:, None] > 0
    if 'collab' in collab:
      parts['collab'] = jnp.where(has_history, rewards_lib.collaborative_reward(scores), 0.0)
    if 'collab_rank' in collab:
      all_scores = scorer.score_all(reward_params, history, history_len)
      parts['collab_rank'] = jnp.where(
          has_history, rewards_lib.collaborative_rank_reward(scores, all_scores), 0.0)
  total = rewards_lib.combine(weights, parts)
  return total, {f'reward_{k}': v.mean() for k, v in parts.items()}


def top_candidate_prob(log_probs: jax.Array, valid: jax.Array) -> jax.Array:
  """`[B]`: the largest share of a group's probability on one candidate, from the candidates'
  token log-probs `[B, G, T]` (summed per candidate, renormalised over the valid ones `[B, G]`)."""
  sequence = jnp.where(valid, log_probs.sum(-1), -jnp.inf)
  share = jnp.exp(sequence.max(-1) - jax.nn.logsumexp(sequence, axis=-1))
  return jnp.where(valid.any(-1), share, 0.0)


def reward_auc(batch, reward_params, scorer: ScoreFns, item_to_group) -> jax.Array:
  """`[B]`: the share of each group's valid candidates other than the target (and items
  sharing its SID) that the collaborative scorer ranks below the target; 1 when there are
  none."""
  items, target = batch['items'], batch['target']
  history, history_len = batch['history'], batch['history_len']
  scores = scorer.score(reward_params, history, history_len, jnp.maximum(items, 0))
  target_score = scorer.score(reward_params, history, history_len, target[:, None])
  negative = (items >= 0) & ~rewards_lib.hits(items, target, item_to_group)
  below = ((scores < target_score) & negative).sum(1)
  return jnp.where(negative.any(1), below / jnp.maximum(negative.sum(1), 1), 1.0)


def make_grpo_step(config: DecoderConfig, *, token_map: SidTokenMap, item_to_group: jax.Array,
                   codes_table: jax.Array,
                   weights: dict[str, float], beta: float = 1e-3, kl_estimator: str = 'k3',
                   clip_eps: float = 0.2, aggregation: str = 'seq_mean_token_mean',
                   adv_ddof: int = 1, adv_eps: float = 1e-4, sft_weight: float = 0.0,
                   advantage_mode: str = 'group', updates_per_rollout: int = 1,
                   gate_max_top_prob: float = 1.0, gate_min_reward_auc: float = 0.0,
                   scorer: ScoreFns | None = None, axis_name: str | None = None) -> Callable:
  """Returns the un-jitted pure GRPO step.

  `token_map` gives the vocabulary ids of the candidates' SID tokens and terminator: the
  loss covers each candidate's L SID tokens and then its T terminator tokens (a language
  model's '\n' and eos, which it must learn to end a SID with; none for our SID-only
  vocabulary), a terminator token with the advantage of the candidate's last SID token.

  `sft_weight > 0` adds that multiple of the target's token-mean NLL to the loss (an SFT anchor,
  as in AdaGRPO); the target is scored in the same pass as the G candidates.
  `advantage_mode`: 'group' (official), 'sibling' or 'level' (`grpo.token_advantages`; 'level'
  rewards level l < L - 1 with a hit of the target's first l + 1 codes, the last level with the
  full reward). `updates_per_rollout`: optimizer updates on each rollout batch.

  A per-prompt gate (after AdaGRPO: RL helps where the policy is unsure and the reward model
  can tell the target from the rollout's negatives) zeroes the advantages of a group when
  the rollout policy puts more than `gate_max_top_prob` of the group's probability on one
  candidate (a prompt it has learnt; e.g. most train prompts after 8 SFT epochs), or when
  the collaborative scorer ranks the target above less than `gate_min_reward_auc` of the
  group's valid non-hit candidates (needs `scorer`). The defaults gate nothing.
  """
  if updates_per_rollout < 1:
    raise ValueError(f'updates_per_rollout must be >= 1, got {updates_per_rollout}')
  if not 0.0 < gate_max_top_prob <= 1.0 or not 0.0 <= gate_min_reward_auc <= 1.0:
    raise ValueError(f'gate_max_top_prob must be in (0, 1] and gate_min_reward_auc in [0, 1], '
                     f'got {gate_max_top_prob} and {gate_min_reward_auc}')
  if gate_min_reward_auc > 0 and scorer is None:
    raise ValueError('gate_min_reward_auc > 0 needs a reward model (scorer)')

  def step(state, ref_params, reward_params, batch, rng):
    del rng  # the update is deterministic given the rollout
    items, codes = batch['items'], batch['codes']
    b, g, num_levels = codes.shape
    reward, reward_metrics = group_rewards(batch, reward_params, weights=weights,
                                           item_to_group=item_to_group,
                                           codes_table=codes_table, scorer=scorer)
    level_rewards = None
    if advantage_mode == 'level':
      target_codes = codes_table[batch['target']][:, None, :]                 # [B, 1, L]
      prefix_hit = jnp.cumprod(codes == target_codes, axis=-1).astype(jnp.float32)
      level_rewards = prefix_hit.at[..., -1].set(reward)
    advantages = grpo.token_advantages(reward, codes, items >= 0, mode=advantage_mode,
                                       level_rewards=level_rewards, ddof=adv_ddof, eps=adv_eps)
    keep = jnp.ones((b,), bool)
    if gate_min_reward_auc > 0:
      keep = reward_auc(batch, reward_params, scorer, item_to_group) >= gate_min_reward_auc
    table = beam_search.token_ids(token_map)
    terminator = jnp.asarray(token_map.terminator, jnp.int32)
    num_tokens = num_levels + len(token_map.terminator)

    def with_terminator(sid_tokens):  # [..., L] -> [..., L + T]
      shape = sid_tokens.shape[:-1] + terminator.shape
      return jnp.concatenate([sid_tokens, jnp.broadcast_to(terminator, shape)], axis=-1)

    completion = with_terminator(table[jnp.arange(num_levels), jnp.maximum(codes, 0)])
    advantages = jnp.concatenate(
        [advantages, jnp.repeat(advantages[..., -1:], num_tokens - num_levels, axis=-1)], -1)
    prompt = (batch['tokens'], batch['positions'], batch['mask'])
    valid = jnp.broadcast_to((items >= 0).reshape(b * g, 1), (b * g, num_tokens))
    ref_lp = jax.lax.stop_gradient(
        prompted.completion_log_probs(config, ref_params, *prompt, completion))

    target_completion = with_terminator(
        table[jnp.arange(num_levels), codes_table[batch['target']]])
    scored = (jnp.concatenate([completion, target_completion[:, None]], axis=1) if sft_weight
              else completion)

    def loss_fn(params, old_lp):
      all_lp, entropy = prompted.completion_log_probs(config, params, *prompt, scored,
                                                      with_entropy=True)
      lp = all_lp[:, :g].reshape(b * g, num_tokens)
      old_lp = jax.lax.stop_gradient(lp) if old_lp is None else old_lp
      kept = keep
      if gate_max_top_prob < 1.0:
        kept = kept & (top_candidate_prob(old_lp.reshape(b, g, num_tokens), items >= 0)
                       <= gate_max_top_prob)
      gated = advantages * kept[:, None, None]
      loss, metrics = grpo.grpo_loss(
          lp, old_lp, ref_lp.reshape(b * g, num_tokens), gated.reshape(b * g, num_tokens), valid,
          clip_eps=clip_eps, beta=beta, kl_estimator=kl_estimator, aggregation=aggregation)
      metrics['gated_groups'] = 1.0 - kept.mean()
      # Mean next-token entropy over the candidates' tokens: a collapsing policy shows here
      # before its rollouts stop differing.
      metrics['entropy'] = jax.lax.stop_gradient(
          (entropy[:, :g].reshape(b * g, num_tokens) * valid).sum() / jnp.maximum(valid.sum(), 1))
      if sft_weight:
        metrics['target_nll'] = -all_lp[:, g].mean()
        loss = loss + sft_weight * metrics['target_nll']
      return loss, metrics

    old_lp = None
    if updates_per_rollout > 1:  # the rollout policy's log-probs, fixed for every update
      old_lp = jax.lax.stop_gradient(prompted.completion_log_probs(
          config, state.params, *prompt, completion)).reshape(b * g, num_tokens)
    for update in range(updates_per_rollout):
      (loss, loss_metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params,
                                                                              old_lp)
      if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
      if update < updates_per_rollout - 1:
        state = state.apply_gradients(grads=grads)
    hit = rewards_lib.hits(items, batch['target'], item_to_group)
    metrics = {
        'loss': loss, 'reward_mean': reward.mean(),
        'reward_std': jnp.std(reward, axis=1, ddof=adv_ddof).mean(),
        'zero_advantage_groups': (jnp.abs(advantages).max(axis=(1, 2)) == 0).mean(),
        'rollout_hit_rate': hit.any(axis=1).mean(), **loss_metrics, **reward_metrics}
    if axis_name is not None:
      metrics = jax.lax.pmean(metrics, axis_name)
    metrics['grad_norm'] = optax.tree.norm(grads)
    return state.apply_gradients(grads=grads), metrics

  return step
