"""GRPO: golden numbers, rewards on hand-made groups, ratio 1, and a toy task it improves."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minirec_jax.data import sid_sequences as ss
from minirec_jax.decoding import prompted
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import sasrec
from minirec_jax.models import variants
from minirec_jax.rl import grpo
from minirec_jax.rl import rewards
from minirec_jax.rl import rollout as rollout_lib
from minirec_jax.rl import step as step_lib
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.training import state as state_lib


def test_group_advantages_golden():
  r = jnp.array([[1.0, 0.0, 0.0, 0.0], [2.0, 2.0, 2.0, 2.0]])
  adv = grpo.group_advantages(r, ddof=1, eps=1e-4)
  std = math.sqrt(((0.75 ** 2) + 3 * (0.25 ** 2)) / 3)  # unbiased: 0.5
  np.testing.assert_allclose(adv[0], np.array([0.75, -0.25, -0.25, -0.25]) / (std + 1e-4),
                             rtol=1e-6)
  np.testing.assert_array_equal(adv[1], 0.0)  # equal rewards: no signal
  adv0 = grpo.group_advantages(r[:1], ddof=0, eps=0.0)
  np.testing.assert_allclose(adv0, [[0.75 / math.sqrt(0.1875)] + [-0.25 / math.sqrt(0.1875)] * 3],
                             rtol=1e-6)


def test_kl_estimators_golden():
  lp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
  np.testing.assert_allclose(grpo.kl_estimate(lp, ref, 'k1'), [0.5, -1.0])
  np.testing.assert_allclose(grpo.kl_estimate(lp, ref, 'k3'),
                             [math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1], rtol=1e-6)
  with pytest.raises(ValueError):
    grpo.kl_estimate(lp, ref, 'k2')


def test_loss_golden_and_ratio_is_one_on_policy():
  lp = jnp.array([[-1.0, -2.0], [-0.5, -0.5]])
  ref = jnp.array([[-1.0, -1.0], [-0.5, -1.5]])
  adv = jnp.array([1.0, -2.0])
  mask = jnp.ones_like(lp)
  loss, metrics = grpo.grpo_loss(lp, jax.lax.stop_gradient(lp), ref, adv, mask, beta=0.1,
                                 kl_estimator='k3')
  k3 = lambda d: math.exp(d) - d - 1
  seq0 = (-1.0 + 0.1 * k3(0.0) - 1.0 + 0.1 * k3(1.0)) / 2
  seq1 = (2.0 + 0.1 * k3(0.0) + 2.0 + 0.1 * k3(-1.0)) / 2
  np.testing.assert_allclose(loss, (seq0 + seq1) / 2, rtol=1e-6)
  assert metrics['ratio_mean'] == 1.0 and metrics['clip_fraction'] == 0.0
  # The gradient of the on-policy surrogate is -A * grad(logp), as in REINFORCE.
  grad = jax.grad(lambda x: grpo.grpo_loss(x, jax.lax.stop_gradient(x), x, adv, mask,
                                           beta=0.0)[0])(lp)
  np.testing.assert_allclose(grad, [[-0.25, -0.25], [0.5, 0.5]])


def test_clipping_and_token_mean():
  lp = jnp.log(jnp.array([[1.5, 1.0, 1.0]]))  # ratio 1.5 on token 0
  old = jnp.zeros((1, 3))
  mask = jnp.array([[1.0, 1.0, 0.0]])
  loss, metrics = grpo.grpo_loss(lp, old, lp, jnp.array([1.0]), mask, clip_eps=0.2, beta=0.0,
                                 aggregation='token_mean')
  np.testing.assert_allclose(loss, -(1.2 + 1.0) / 2, rtol=1e-6)
  np.testing.assert_allclose(metrics['clip_fraction'], 0.5)


def test_rewards_on_hand_made_groups():
  groups = jnp.arange(10)
  items = jnp.array([[3, 5, 7, 9], [1, 2, 4, 6]])
  targets = jnp.array([7, 8])
  np.testing.assert_array_equal(rewards.rule_reward(items, targets, groups),
                                [[0, 0, 1, 0], [0, 0, 0, 0]])
  p = rewards.rank_penalties(16)
  np.testing.assert_allclose(p[:3], [-0.1638, -0.1033, -0.0819], atol=1e-4)
  np.testing.assert_allclose(p.sum(), -1.0, rtol=1e-6)
  rank = rewards.rank_reward(items, targets, groups)
  p4 = rewards.rank_penalties(4)
  np.testing.assert_allclose(rank[0], [p4[0], p4[1], 0.0, p4[3]], rtol=1e-6)
  np.testing.assert_array_equal(rank[1], 0.0)  # no hit in the group: no signal
  codes = jnp.array([[0, 0, 0], [0, 0, 1], [0, 1, 1], [1, 1, 1]])
  np.testing.assert_allclose(
      rewards.prefix_reward(jnp.array([[0, 1, 2, 3]]), jnp.array([1]), codes),
      [[2 / 3, 1.0, 1 / 3, 0.0]])
  collab = rewards.collaborative_reward(jnp.array([[1.0, 2.0, 3.0]]))
  np.testing.assert_allclose(collab.mean(), 0.0, atol=1e-6)
  assert rewards.hits(jnp.array([[-1]]), jnp.array([0]), groups)[0, 0] == False  # noqa: E712


def test_collaborative_rank_reward_is_the_dcg_gain_of_the_peer_rank():
  all_scores = jnp.array([[0.5, 3.0, 1.0, 2.0, 2.0]])   # ranking: 1, then 3 and 4 (tied), 2, 0
  candidates = jnp.array([1, 3, 0])
  got = rewards.collaborative_rank_reward(all_scores[:, candidates], all_scores)
  np.testing.assert_allclose(got, 1.0 / np.log2(2.0 + np.array([[0, 1, 4]])), rtol=1e-6)


def test_group_rewards_reads_the_scorer_and_skips_empty_histories():
  all_scores = jnp.array([[0.0, 4.0, 1.0, 3.0], [2.0, 1.0, 0.0, 5.0]])
  scorer = sasrec.ScoreFns(
      score=lambda params, history, length, items: jnp.take_along_axis(all_scores, items, 1),
      score_all=lambda params, history, length: all_scores)
  batch = {'items': jnp.array([[1, 2], [3, -1]]), 'target': jnp.array([2, 0]),
           'history': jnp.zeros((2, 3), jnp.int32), 'history_len': jnp.array([2, 0])}
  total, parts = step_lib.group_rewards(
      batch, None, weights={'collab_rank': 1.0, 'collab': 0.0}, item_to_group=jnp.arange(4),
      codes_table=None, scorer=scorer)
  # Row 0: items 1 and 2 rank 0 and 2; row 1 has no history, so no collaborative signal.
  np.testing.assert_allclose(total, [[1.0, 1.0 / np.log2(4.0)], [0.0, 0.0]], rtol=1e-6)
  assert set(parts) == {'reward_collab_rank'}
  with pytest.raises(ValueError, match='need a reward model'):
    step_lib.group_rewards(batch, None, weights={'collab_rank': 1.0}, item_to_group=None,
                           codes_table=None, scorer=None)


def _toy(seed=0, items=12, k=4):
  rng = np.random.default_rng(seed)
  codes = np.stack(np.unravel_index(rng.permutation(k ** 2)[:items], (k, k)), 1)
  vocab = ss.SidVocab(2, k)
  config = variants.decoder_config('tiny', vocab.vocab_size)
  trie = trie_lib.build_trie(codes, k)
  prompts = jnp.asarray(rng.integers(1, vocab.vocab_size, (8, 4)), jnp.int32)
  positions = jnp.broadcast_to(jnp.arange(4), (8, 4))
  mask = jnp.ones((8, 4), bool)
  params = decoder_lib.Decoder(config).init(jax.random.key(seed), prompts, positions,
                                            jnp.ones((8, 4, 4), bool))['params']
  return codes, vocab, config, trie, prompts, positions, mask, params


def _target_prob(config, params, vocab, codes, prompts, positions, mask, targets):
  completion = jnp.asarray(vocab.item_tokens(codes)[np.asarray(targets)])
  lp = prompted.completion_log_probs(config, params, prompts, positions, mask, completion)
  return float(jnp.exp(lp.sum(-1)).mean())


@pytest.mark.parametrize('mode', ['sample', 'beam'])
def test_grpo_increases_expected_reward_on_a_toy_task(mode):
  codes, vocab, config, trie, prompts, positions, mask, params = _toy()
  targets = jnp.arange(8) % 12
  step = jax.jit(step_lib.make_grpo_step(
      config, token_map=vocab.token_map,
      item_to_group=trie.item_to_group, codes_table=trie.codes,
      weights={'rule': 1.0, 'rank': 1.0}, beta=0.0))
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.adam(3e-3))
  before = _target_prob(config, params, vocab, codes, prompts, positions, mask, targets)
  ref = params
  for i in range(20):  # about 3.7x (sample) and 7x (beam) the start's target probability
    roll = rollout_lib.rollout(config, state.params, trie, prompts, positions, mask, targets,
                               jax.random.key(i), mode=mode, group_size=6,
                               token_map=vocab.token_map, add_target=(mode == 'beam'))
    batch = {'tokens': prompts, 'positions': positions, 'mask': mask, 'target': targets,
             'history': jnp.zeros((8, 1), jnp.int32), 'history_len': jnp.ones(8, jnp.int32),
             'items': roll.items, 'codes': roll.codes}
    state, _ = step(state, ref, None, batch, jax.random.key(0))
  after = _target_prob(config, state.params, vocab, codes, prompts, positions, mask, targets)
  assert after > 2 * before, (before, after)


def test_dynamic_sampling_keeps_distinct_items_and_the_target():
  items = jnp.array([[4, 4, 2, 9, 2, 7]])
  keep = rollout_lib._dedupe_keep(items, jnp.array([9]), 3)
  assert np.asarray(items[0, keep[0]]).tolist() == [9, 4, 2]


_log_probs = jax.jit(prompted.completion_log_probs, static_argnames=('config', 'with_entropy'))


def test_shared_prompt_log_probs_equal_a_full_forward_pass():
  _, vocab, config, _, _, _, _, params = _toy()
  rng = np.random.default_rng(3)
  b, g, t, num = 3, 4, 5, 2
  tokens = jnp.asarray(rng.integers(1, vocab.vocab_size, (b, t)), jnp.int32)
  lengths = np.array([5, 3, 1])  # left padding
  mask = jnp.asarray(np.arange(t)[None] >= (t - lengths)[:, None])
  positions = jnp.maximum(jnp.arange(t)[None] - (t - jnp.asarray(lengths))[:, None], 0)
  completion = jnp.asarray(rng.integers(1, vocab.vocab_size, (b, g, num)), jnp.int32)
  lp = _log_probs(config, params, tokens, positions, mask, completion)
  assert lp.shape == (b, g, num)
  lp_too, entropy = _log_probs(config, params, tokens, positions, mask, completion,
                               with_entropy=True)
  np.testing.assert_array_equal(lp_too, lp)
  forward = jax.jit(lambda full: decoder_lib.Decoder(config).apply(
      {'params': params}, full, jnp.arange(full.shape[1])[None]))
  for i in range(b):
    for j in range(g):
      logits = forward(jnp.concatenate([tokens[i, t - lengths[i]:], completion[i, j]])[None])
      log_p = jax.nn.log_softmax(logits[0, -num - 1:-1])
      np.testing.assert_allclose(lp[i, j], log_p[jnp.arange(num), completion[i, j]], atol=2e-5)
      np.testing.assert_allclose(entropy[i, j], -(jnp.exp(log_p) * log_p).sum(-1), atol=2e-5)
  flat = _log_probs(config, params, tokens, positions, mask, completion[:, 0])
  np.testing.assert_allclose(flat, lp[:, 0], atol=1e-6)


def _beam_batch(config, params, trie, prompts, positions, mask, targets, vocab,
                add_target=False):
  """A GRPO update batch from one beam rollout (G = 4) of the toy task."""
  roll = rollout_lib.rollout(config, params, trie, prompts, positions, mask, targets,
                             jax.random.key(0), mode='beam', group_size=4,
                             token_map=vocab.token_map, add_target=add_target)
  return {'tokens': prompts, 'positions': positions, 'mask': mask, 'target': targets,
          'history': jnp.zeros((8, 1), jnp.int32), 'history_len': jnp.ones(8, jnp.int32),
          'items': roll.items, 'codes': roll.codes}


def test_sft_anchor_adds_the_weighted_target_nll():
  codes, vocab, config, trie, prompts, positions, mask, params = _toy()
  targets = jnp.arange(8) % 12
  batch = _beam_batch(config, params, trie, prompts, positions, mask, targets, vocab)
  losses = {}
  for weight in (0.0, 0.5):
    step = jax.jit(step_lib.make_grpo_step(
        config, token_map=vocab.token_map,
        item_to_group=trie.item_to_group, codes_table=trie.codes, weights={'rule': 1.0},
        sft_weight=weight))
    state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.0))
    losses[weight] = step(state, params, None, batch, jax.random.key(0))[1]
  completion = jnp.asarray(vocab.item_tokens(codes)[np.asarray(targets)])
  nll = -float(_log_probs(config, params, prompts, positions, mask, completion).mean())
  np.testing.assert_allclose(losses[0.5]['target_nll'], nll, rtol=1e-5)
  np.testing.assert_allclose(losses[0.5]['loss'] - losses[0.0]['loss'], 0.5 * nll, rtol=1e-4)
  # The logged entropy: the mean over the valid candidates' tokens (no terminator here).
  candidates = jnp.asarray(vocab.item_tokens(codes)[np.maximum(np.asarray(batch['items']), 0)])
  _, entropy = _log_probs(config, params, prompts, positions, mask, candidates,
                          with_entropy=True)
  valid = np.broadcast_to(np.asarray(batch['items'])[..., None] >= 0, entropy.shape)
  for weight in (0.0, 0.5):
    np.testing.assert_allclose(losses[weight]['entropy'], entropy[valid].mean(), rtol=1e-5)


def test_terminator_tokens_are_part_of_the_scored_completion():
  # A language model ends each SID with terminator tokens ('\n', eos); here token 0 plays
  # both. The anchor's target NLL must then average over the L SID tokens and the two.
  codes, vocab, config, trie, prompts, positions, mask, params = _toy()
  targets = jnp.arange(8) % 12
  token_map = ss.SidTokenMap(vocab.token_map.table, (0, 0))
  batch = _beam_batch(config, params, trie, prompts, positions, mask, targets, vocab)
  step = jax.jit(step_lib.make_grpo_step(
      config, token_map=token_map, item_to_group=trie.item_to_group, codes_table=trie.codes,
      weights={'rule': 1.0}, sft_weight=1.0))
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.0))
  metrics = step(state, params, None, batch, jax.random.key(0))[1]
  sid_tokens = jnp.asarray(vocab.item_tokens(codes)[np.asarray(targets)])
  completion = jnp.concatenate([sid_tokens, jnp.zeros((8, 2), jnp.int32)], axis=1)
  nll = -float(_log_probs(config, params, prompts, positions, mask, completion).mean())
  np.testing.assert_allclose(metrics['target_nll'], nll, rtol=1e-5)
  sid_only = -float(_log_probs(config, params, prompts, positions, mask, sid_tokens).mean())
  assert abs(nll - sid_only) > 1e-3


def test_sibling_advantages_compare_tokens_that_share_a_prefix():
  # One group of 4 candidates, SIDs of 2 codes; rewards 1, 0, 0, 3.
  codes = jnp.array([[[0, 1], [0, 2], [1, 5], [1, 6]]])
  rewards = jnp.array([[1.0, 0.0, 0.0, 3.0]])
  valid = jnp.array([[True, True, True, False]])  # the 4th candidate is missing
  adv = grpo.token_advantages(rewards, codes, valid, mode='sibling', ddof=0, eps=0.0)
  scale = float(jnp.std(rewards, ddof=0))
  # Level 0: siblings are the 3 valid candidates (mean 1/3).
  np.testing.assert_allclose(adv[0, :3, 0], (np.array([1.0, 0.0, 0.0]) - 1 / 3) / scale,
                             rtol=1e-6)
  # Level 1: candidates 0 and 1 share code 0 (mean 0.5); candidate 2 has no valid sibling.
  np.testing.assert_allclose(adv[0, :3, 1], [0.5 / scale, -0.5 / scale, 0.0], rtol=1e-6)
  group = grpo.token_advantages(rewards, codes, valid, mode='group')
  np.testing.assert_allclose(group, jnp.broadcast_to(
      grpo.group_advantages(rewards)[..., None], (1, 4, 2)))
  levels = jnp.stack([jnp.array([[1.0, 1.0, 0.0, 0.0]]), rewards], axis=-1)
  adv = grpo.token_advantages(rewards, codes, valid, mode='level', level_rewards=levels)
  np.testing.assert_allclose(adv[..., 0], grpo.group_advantages(levels[..., 0]))
  np.testing.assert_allclose(adv[..., 1], grpo.group_advantages(rewards))
  with pytest.raises(ValueError, match='unknown advantage mode'):
    grpo.token_advantages(rewards, codes, valid, mode='token')


# 'sibling' reaches the step through the same call as 'group' (its arithmetic is checked above);
# 'level' has its own branch (per-level rewards).
@pytest.mark.parametrize('mode', ['group', 'level'])
def test_several_updates_per_rollout_move_the_ratio(mode):
  codes, vocab, config, trie, prompts, positions, mask, params = _toy()
  targets = jnp.arange(8) % 12
  batch = _beam_batch(config, params, trie, prompts, positions, mask, targets, vocab,
                      add_target=True)
  out = {}
  # With one update per rollout the ratio is 1 whatever the advantages: checked in one mode.
  for updates in ((1, 2) if mode == 'group' else (2,)):
    step = jax.jit(step_lib.make_grpo_step(
        config, token_map=vocab.token_map,
        item_to_group=trie.item_to_group, codes_table=trie.codes,
        weights={'rule': 1.0, 'rank': 1.0}, advantage_mode=mode, updates_per_rollout=updates,
        clip_eps=0.05))
    state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.adam(1e-2))
    out[updates] = step(state, params, None, batch, jax.random.key(0))
  state2, m2 = out[2]
  assert int(state2.step) == 2
  assert abs(float(m2['ratio_mean']) - 1.0) > 1e-4  # the last update sees a moved policy
  assert float(m2['clip_fraction']) > 0.0
  assert float(m2['zero_advantage_groups']) < 1.0
  if 1 in out:
    state1, m1 = out[1]
    assert int(state1.step) == 1
    assert float(m1['ratio_mean']) == 1.0 and float(m1['clip_fraction']) == 0.0


def test_gate_quantities_on_hand_made_groups():
  # Two groups of 3 candidates, 2 tokens each; group 1's last candidate is missing.
  log_probs = jnp.log(jnp.array([[[0.5, 1.0], [0.5, 0.5], [0.25, 1.0]],
                                 [[0.9, 1.0], [0.1, 0.5], [0.3, 0.3]]]))
  valid = jnp.array([[True, True, True], [True, True, False]])
  # Sequence probabilities 0.5 / 0.25 / 0.25, and 0.9 / 0.05 (the third is not counted).
  np.testing.assert_allclose(step_lib.top_candidate_prob(log_probs, valid),
                             [0.5, 0.9 / 0.95], rtol=1e-6)
  scores = jnp.array([[0.0, 3.0, 1.0, 2.0, 5.0]])  # scorer: one score per item
  scorer = sasrec.ScoreFns(
      score=lambda params, history, length, items: jnp.take_along_axis(
          jnp.broadcast_to(scores, (items.shape[0], 5)), items, 1),
      score_all=None)
  batch = {'items': jnp.array([[4, 1, 2, -1], [0, 2, 4, 4], [3, -1, -1, -1]]),
           'target': jnp.array([3, 1, 3]), 'history': jnp.zeros((3, 2), jnp.int32),
           'history_len': jnp.ones(3, jnp.int32)}
  # Target 3 scores 2: above item 2 (1), below 4 (5) and 1 (3) -> 1/3; target 1 (3) beats 0
  # and 2 but not 4 (twice) -> 2/4; the third group holds only its target -> 1.
  np.testing.assert_allclose(step_lib.reward_auc(batch, None, scorer, jnp.arange(5)),
                             [1 / 3, 0.5, 1.0], rtol=1e-6)


def test_confidence_gate_drops_the_groups_the_policy_is_sure_of():
  codes, vocab, config, trie, prompts, positions, mask, params = _toy()
  targets = jnp.arange(8) % 12
  batch = _beam_batch(config, params, trie, prompts, positions, mask, targets, vocab)
  candidates = jnp.asarray(vocab.item_tokens(codes)[np.maximum(np.asarray(batch['items']), 0)])
  top = np.asarray(step_lib.top_candidate_prob(
      _log_probs(config, params, prompts, positions, mask, candidates), batch['items'] >= 0))
  threshold = float(np.median(top))
  step = jax.jit(step_lib.make_grpo_step(
      config, token_map=vocab.token_map, item_to_group=trie.item_to_group,
      codes_table=trie.codes, weights={'rule': 1.0, 'rank': 1.0}, beta=0.0,
      gate_max_top_prob=threshold))
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(0.0))
  metrics = step(state, params, None, batch, jax.random.key(0))[1]
  assert 0.0 < float(metrics['gated_groups']) < 1.0
  np.testing.assert_allclose(metrics['gated_groups'], (top > threshold).mean(), atol=1e-6)
  with pytest.raises(ValueError, match='needs a reward model'):
    step_lib.make_grpo_step(config, token_map=vocab.token_map, item_to_group=None,
                            codes_table=None, weights={'rule': 1.0}, gate_min_reward_auc=0.5)
  with pytest.raises(ValueError, match='gate_max_top_prob must be in'):
    step_lib.make_grpo_step(config, token_map=vocab.token_map, item_to_group=None,
                            codes_table=None, weights={'rule': 1.0}, gate_max_top_prob=0.0)
