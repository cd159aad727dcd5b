"""Constrained beam search and masked sampling with the real decoder and its KV cache."""

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax import sid_sequences as ss
from minirec_jax.decoding import beam_search
from minirec_jax.decoding import sampling
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.semantic_ids import trie as trie_lib

K, LEVELS, ITEMS = 4, 3, 23


def _setup(seed=0):
  rng = np.random.default_rng(seed)
  codes = np.stack(np.unravel_index(rng.permutation(K ** LEVELS)[:ITEMS], (K,) * LEVELS), 1)
  vocab = ss.SidVocab(LEVELS, K)
  config = variants.decoder_config('tiny', vocab.vocab_size)
  tokens = jnp.asarray(rng.integers(1, vocab.vocab_size, (2, 6)), jnp.int32)
  mask = jnp.asarray([[True] * 6, [False, False] + [True] * 4])
  tokens = jnp.where(mask, tokens, 0)
  positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
  params = decoder_lib.Decoder(config).init(jax.random.key(seed), tokens, positions,
                                            jnp.ones((2, 6, 6), bool))['params']
  # Sharpen the random model so that paths differ clearly in probability.
  params = jax.tree.map(lambda x: x * 4.0, params)
  return codes, vocab, config, params, tokens, positions, mask


def _search(config, params, trie, tokens, positions, mask, beam, vocab):
  logits, cache = decoder_lib.prefill(config, params, tokens, positions, mask,
                                      tokens.shape[1] + LEVELS)
  start = jnp.repeat(positions[:, -1] + 1, beam)
  fn = lambda c, t, step: decoder_lib.decode_step(config, params, c, t, start + step)
  return beam_search.constrained_beam_search(logits, cache, fn, decoder_lib.reorder_cache, trie,
                                             beam_size=beam, sid_offset=vocab.sid_offset)


def _brute_force(codes, vocab, config, params, tokens, positions, mask):
  """log p(SID) of every catalogue item by teacher forcing the whole sequence."""
  item_tokens = vocab.item_tokens(codes)
  model = decoder_lib.Decoder(config)
  scores = np.zeros((tokens.shape[0], len(codes), LEVELS))
  for row in range(tokens.shape[0]):
    prompt = np.asarray(tokens[row][np.asarray(mask[row])])
    for item in range(len(codes)):
      seq = np.concatenate([prompt, item_tokens[item]])[None]
      n = seq.shape[1]
      logits = model.apply({'params': params}, seq, np.arange(n)[None],
                           np.tril(np.ones((1, n, n), bool)))
      lp = jax.nn.log_softmax(logits[0, len(prompt) - 1:n - 1], axis=-1)
      scores[row, item] = [float(lp[j, item_tokens[item, j]]) for j in range(LEVELS)]
  return scores  # per-level token log-probs [rows, items, L]


def test_top_k_equals_brute_force_enumeration():
  codes, vocab, config, params, tokens, positions, mask = _setup()
  trie = trie_lib.build_trie(codes, K)
  # 16 beams >= the number of prefixes at every level (<= K**2), so nothing is pruned early
  # and beam search must return exactly the 16 most probable catalogue items.
  result = _search(config, params, trie, tokens, positions, mask, 16, vocab)
  truth = _brute_force(codes, vocab, config, params, tokens, positions, mask).sum(-1)
  for row in range(2):
    order = np.argsort(-truth[row])[:16]
    np.testing.assert_array_equal(np.asarray(result.items[row]), order)
    np.testing.assert_allclose(np.asarray(result.scores[row]), truth[row, order], atol=1e-4)
    np.testing.assert_array_equal(np.asarray(result.codes[row]), codes[order])


def test_more_beams_than_items_pads_with_minus_one():
  codes, vocab, config, params, tokens, positions, mask = _setup()
  trie = trie_lib.build_trie(codes, K)
  result = _search(config, params, trie, tokens, positions, mask, 30, vocab)
  items = np.asarray(result.items)
  for row in range(2):
    assert sorted(items[row, :ITEMS].tolist()) == list(range(ITEMS))  # every item once
    assert (items[row, ITEMS:] == -1).all()
    assert (np.asarray(result.scores[row, ITEMS:]) == beam_search.NEG_INF).all()
    assert np.all(np.diff(np.asarray(result.scores[row, :ITEMS])) <= 1e-6)


def test_no_recompilation_for_batches_of_the_same_shape():
  codes, vocab, config, params, tokens, positions, mask = _setup()
  trie = trie_lib.build_trie(codes, K)

  @functools.partial(jax.jit, static_argnums=0)
  @chex.assert_max_traces(n=1)
  def search(beam, params, trie, tokens, positions, mask):
    return _search(config, params, trie, tokens, positions, mask, beam, vocab).items

  for seed in range(3):
    other = jax.random.randint(jax.random.key(seed), tokens.shape, 1, vocab.vocab_size)
    items = search(5, params, trie, jnp.where(mask, other, 0), positions, mask)
    assert np.isin(np.asarray(items), np.arange(ITEMS)).all()


def test_masked_sampling_matches_model_distribution():
  codes, vocab, config, params, tokens, positions, mask = _setup(seed=1)
  params = jax.tree.map(lambda x: x / 4.0, params)  # a flatter model: many items get samples
  trie = trie_lib.build_trie(codes, K)
  tokens, positions, mask = tokens[:1], positions[:1], mask[:1]
  logits, cache = decoder_lib.prefill(config, params, tokens, positions, mask, 6 + LEVELS)
  n = 4000
  start = jnp.repeat(positions[:, -1] + 1, n)
  fn = lambda c, t, step: decoder_lib.decode_step(config, params, c, t, start + step)
  out = sampling.masked_sample(logits, cache, fn, decoder_lib.reorder_cache, trie,
                               jax.random.key(3), num_samples=n, sid_offset=vocab.sid_offset)
  items = np.asarray(out.items[0])
  assert np.isin(items, np.arange(ITEMS)).all()
  levels = _brute_force(codes, vocab, config, params, tokens, positions, mask)[0]
  np.testing.assert_allclose(np.asarray(out.scores[0]), levels.sum(-1)[items], atol=1e-4)
  # Each level samples among the codes the trie allows after the prefix, renormalised there:
  # p(item) = prod_l p(c_l | prefix) / sum_{allowed c} p(c | prefix).
  expected = np.ones(ITEMS)
  for level in range(LEVELS):
    for item in range(ITEMS):
      siblings = (codes[:, :level] == codes[item, :level]).all(axis=1)
      allowed = {int(codes[j, level]): levels[j, level] for j in np.flatnonzero(siblings)}
      expected[item] *= np.exp(levels[item, level]) / np.exp(list(allowed.values())).sum()
  observed = np.bincount(items, minlength=ITEMS) / n
  assert np.abs(observed - expected).max() < 0.03
