"""Constrained beam search and masked sampling, checked by brute force over the catalogue.

The toy model is a small recurrent net with a per-row state as its cache, so a wrong cache
reorder changes the scores; brute force scores every catalogue item by teacher forcing it
(with a terminator: its SID tokens, then the terminator tokens).
"""

import functools
import itertools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.data import sid_sequences as ss
from minirec_jax.decoding import beam_search
from minirec_jax.decoding import sampling
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.semantic_ids import trie as trie_lib

SID_OFFSET = 3  # PAD, BOS, EOS below the SID tokens
HIDDEN = 8
EOS = 2


def _token_map(levels, k, terminator=False, sid_offset=SID_OFFSET):
  """SID tokens from `sid_offset`; the terminator: the first spare token above them, then EOS."""
  table = ss.SidVocab(levels, k, sid_offset).token_map.table
  return ss.SidTokenMap(table, (sid_offset + levels * k, EOS) if terminator else ())


def _codes(n, levels, k, seed=0):
  flat = np.random.default_rng(seed).permutation(k ** levels)[:n]
  return np.stack(np.unravel_index(flat, (k,) * levels), axis=1)


def _toy_model(levels, k, batch, seed=0, sharpness=3.0):
  """(first_logits [batch, V], cache, logits_fn, reorder_cache) of a random recurrent net."""
  vocab = SID_OFFSET + levels * k + 2  # two spare tokens above the SIDs, as a real vocab has
  keys = jax.random.split(jax.random.key(seed), 5)
  embed = jax.random.normal(keys[0], (vocab, HIDDEN))
  mix = jax.random.normal(keys[1], (HIDDEN, HIDDEN)) / np.sqrt(HIDDEN)
  level_embed = jax.random.normal(keys[2], (levels, HIDDEN))
  out = jax.random.normal(keys[3], (HIDDEN, vocab)) * sharpness / np.sqrt(HIDDEN)
  state = jax.random.normal(keys[4], (batch, HIDDEN))

  def logits_fn(cache, tokens, step):
    chex.assert_rank(tokens, 1)
    # Terminator steps (step >= levels) share the last level's embedding.
    h = jnp.tanh(cache['h'] @ mix + embed[tokens] + level_embed[jnp.minimum(step, levels - 1)])
    return h @ out, {'h': h}

  def reorder_cache(cache, rows):
    return jax.tree.map(lambda x: x[rows], cache)

  return state @ out, {'h': state}, logits_fn, reorder_cache


def _brute_force(first_logits, cache, logits_fn, codes, token_map):
  """Per-token log-probs of every catalogue item for every user: `[batch, items, L + T]` (its
  SID tokens, then the terminator)."""
  batch, n = first_logits.shape[0], codes.shape[0]
  rows = jnp.repeat(jnp.arange(batch), n)
  logits, cache = first_logits[rows], jax.tree.map(lambda x: x[rows], cache)
  tokens = np.tile(token_map.item_tokens(codes), (batch, 1))                  # [batch*n, L]
  terminator = np.asarray(token_map.terminator, np.int32).reshape(1, -1)
  tokens = np.concatenate([tokens, np.tile(terminator, (batch * n, 1))], axis=1)
  out = []
  for step in range(tokens.shape[1]):
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    out.append(np.asarray(log_probs)[np.arange(batch * n), tokens[:, step]])
    logits, cache = logits_fn(cache, jnp.asarray(tokens[:, step]), step)
  return np.stack(out, axis=-1).reshape(batch, n, -1)


def _search(model, trie, beam, token_map):
  """Jitted constrained beam search of the toy `model` over `trie`."""
  first_logits, cache, logits_fn, reorder = model
  search = jax.jit(lambda logits, cache, trie, token_map: beam_search.constrained_beam_search(
      logits, cache, logits_fn, reorder, trie, beam_size=beam, token_map=token_map))
  return search(first_logits, cache, trie, token_map)


def _resort(items, token_scores, levels):
  """The official final ranking: beams fixed after the last SID level (`items`, in order),
  re-sorted by their total score with the terminator's log-probs (stable)."""
  totals = token_scores[items].sum(-1)
  order = np.argsort(-totals, kind='stable')
  assert np.all(np.diff(token_scores[items, :levels].sum(-1)) <= 1e-6)  # items come SID-sorted
  return np.asarray(items)[order], totals[order]


def _reference_beam_search(item_scores, codes, beam):
  """Plain-Python beam search over explicit prefixes (one user): (items, scores) best first.

  `item_scores` `[items, L]` holds per-level log-probs; the log-prob of code c after a prefix
  is the same for every item sharing that prefix, so it can be read off any of them.
  """
  beams = [((), 0.0)]
  for level in range(codes.shape[1]):
    step = {}
    for prefix, score in beams:
      for item in np.flatnonzero((codes[:, :level] == prefix).all(axis=1)):
        path = prefix + (int(codes[item, level]),)
        step[path] = score + item_scores[item, level]
    beams = sorted(step.items(), key=lambda kv: -kv[1])[:beam]
  index = {tuple(c): i for i, c in enumerate(codes.tolist())}
  return [index[p] for p, _ in beams], [s for _, s in beams]


@pytest.mark.parametrize('terminator', [False, True])
@pytest.mark.parametrize('n,levels,k,beam', [(23, 3, 4, 16), (40, 4, 3, 27), (5, 1, 8, 5)])
def test_top_k_equals_brute_force_when_beams_cover_every_prefix(n, levels, k, beam,
                                                                terminator):
  # `beam` >= the number of distinct prefixes below the last level, so nothing is pruned early
  # and the search must keep exactly the `beam` most probable catalogue SIDs, then (with a
  # terminator) rank them by their scores with the terminator tokens.
  codes = _codes(n, levels, k, seed=n)
  trie = trie_lib.build_trie(codes, k)
  model = _toy_model(levels, k, batch=3, seed=n)
  token_map = _token_map(levels, k, terminator)
  result = _search(model, trie, beam, token_map)
  token_scores = _brute_force(*model[:3], codes, token_map)
  assert token_scores.shape == (3, n, levels + 2 * terminator)
  assert result.items.shape == (3, beam) and result.codes.shape == (3, beam, levels)
  for row in range(3):
    kept = np.argsort(-token_scores[row, :, :levels].sum(-1))[:beam]
    order, scores = _resort(kept, token_scores[row], levels)
    np.testing.assert_array_equal(result.items[row], order)
    np.testing.assert_allclose(result.scores[row], scores, atol=1e-5)
    np.testing.assert_array_equal(result.codes[row], codes[order])
  if terminator and n == beam:  # every item kept: the ranking is the brute-force total's
    totals = token_scores.sum(-1)
    np.testing.assert_array_equal(result.items, np.argsort(-totals, axis=1))


@pytest.mark.parametrize('terminator', [False, True])
@pytest.mark.parametrize('beam', [1, 3, 7])
def test_narrow_beams_prune_like_a_reference_beam_search(beam, terminator):
  codes = _codes(30, 3, 4, seed=1)
  trie = trie_lib.build_trie(codes, 4)
  model = _toy_model(3, 4, batch=4, seed=1)
  token_map = _token_map(3, 4, terminator)
  result = _search(model, trie, beam, token_map)
  token_scores = _brute_force(*model[:3], codes, token_map)
  for row in range(4):
    items, _ = _reference_beam_search(token_scores[row, :, :3], codes, beam)
    items, scores = _resort(items, token_scores[row], 3)
    np.testing.assert_array_equal(result.items[row], items)  # (a) catalogue items only
    np.testing.assert_allclose(result.scores[row], scores, atol=1e-5)


def test_more_beams_than_items_pads_with_minus_one():
  codes = _codes(23, 3, 4)
  trie = trie_lib.build_trie(codes, 4)
  model = _toy_model(3, 4, batch=2)
  result = _search(model, trie, 30, _token_map(3, 4))
  truth = _brute_force(*model[:3], codes, _token_map(3, 4)).sum(-1)
  for row in range(2):
    np.testing.assert_array_equal(result.items[row, :23], np.argsort(-truth[row]))
    assert (np.asarray(result.items[row, 23:]) == -1).all()
    assert (np.asarray(result.scores[row, 23:]) == beam_search.NEG_INF).all()
    assert (np.asarray(result.codes[row, 23:]) == -1).all()


def test_scores_ignore_tokens_outside_the_sid_slice():
  # Official semantics: log-probs are normalised over the whole vocabulary, so mass moved onto
  # a non-SID token lowers every path score by the same amount and keeps the ranking.
  codes = _codes(10, 2, 4)
  trie = trie_lib.build_trie(codes, 4)
  first_logits, cache, logits_fn, reorder = _toy_model(2, 4, batch=2)
  base = _search((first_logits, cache, logits_fn, reorder), trie, 4, _token_map(2, 4))
  boosted = first_logits.at[:, 0].add(5.0)  # token 0 is PAD, not a SID token
  shift = (jax.nn.log_softmax(boosted) - jax.nn.log_softmax(first_logits))[:, SID_OFFSET]
  other = _search((boosted, cache, logits_fn, reorder), trie, 4, _token_map(2, 4))
  np.testing.assert_array_equal(other.items, base.items)
  np.testing.assert_allclose(other.scores, base.scores + shift[:, None], atol=1e-5)


def test_no_recompilation_for_batches_of_the_same_shape():
  codes = _codes(23, 3, 4)
  trie = trie_lib.build_trie(codes, 4)
  _, _, logits_fn, reorder = _toy_model(3, 4, batch=2)

  @functools.partial(jax.jit, static_argnames='beam')
  @chex.assert_max_traces(n=1)
  def search(first_logits, cache, trie, beam):
    return beam_search.constrained_beam_search(first_logits, cache, logits_fn, reorder, trie,
                                               beam_size=beam, token_map=_token_map(3, 4))

  for seed in range(3):
    first_logits, cache, _, _ = _toy_model(3, 4, batch=2, seed=seed)
    items = search(first_logits, cache, trie, beam=5).items
    assert np.isin(np.asarray(items), np.arange(23)).all()


def test_vocab_too_small_for_the_sids_is_an_error():
  trie = trie_lib.build_trie(_codes(10, 3, 4), 4)
  first_logits, cache, logits_fn, reorder = _toy_model(3, 4, batch=1)
  with pytest.raises(ValueError, match='no room for 3 x 4 SID tokens'):
    beam_search.constrained_beam_search(first_logits, cache, logits_fn, reorder, trie,
                                        beam_size=2,
                                        token_map=_token_map(3, 4, sid_offset=SID_OFFSET + 3))


def test_beams_on_the_official_trie_are_distinct_catalogue_items(amazon18_dir):
  path = os.path.join(amazon18_dir, 'index', 'Industrial_and_Scientific.index.json')
  if not os.path.isfile(path):
    pytest.skip(f'{path} not found')
  codes, k = trie_lib.read_index_json(path)
  trie = trie_lib.build_trie(codes, k, dedupe='first')
  model = _toy_model(3, k, batch=2, sharpness=6.0)
  result = _search(model, trie, 50, _token_map(3, k))
  items = np.asarray(result.items)
  groups = np.unique(np.asarray(trie.item_to_group))
  truth = _brute_force(*model[:3], codes, _token_map(3, k)).sum(-1)
  for row in range(2):
    assert np.isin(items[row], groups).all() and len(set(items[row])) == 50
    np.testing.assert_allclose(result.scores[row], truth[row, items[row]], atol=1e-4)
    assert np.all(np.diff(np.asarray(result.scores[row])) <= 0)


@pytest.mark.parametrize('temperature,terminator', [(1.0, False), (0.5, False), (1.0, True)])
def test_masked_sampling_matches_the_model_distribution(temperature, terminator):
  codes = _codes(12, 3, 3, seed=2)
  trie = trie_lib.build_trie(codes, 3)
  first_logits, cache, logits_fn, reorder = _toy_model(3, 3, batch=2, seed=2, sharpness=1.0)
  n = 6000
  token_map = _token_map(3, 3, terminator)
  sample = jax.jit(functools.partial(sampling.masked_sample, logits_fn=logits_fn,
                                     reorder_cache=reorder, num_samples=n,
                                     token_map=token_map, temperature=temperature))
  out = sample(first_logits, cache, trie=trie, rng=jax.random.key(3))
  items = np.asarray(out.items)
  assert np.isin(items, np.arange(12)).all()
  np.testing.assert_array_equal(out.codes, codes[items])
  levels = _brute_force(first_logits, cache, logits_fn, codes, token_map)
  np.testing.assert_allclose(out.token_log_probs, levels[np.arange(2)[:, None], items],
                             atol=1e-5)
  np.testing.assert_allclose(out.scores, np.asarray(out.token_log_probs).sum(-1), atol=1e-5)
  for row in range(2):
    # Per level: p(c | prefix)^(1/T) renormalised over the codes the trie allows there.
    expected = np.ones(12)
    for level, item in itertools.product(range(3), range(12)):
      siblings = np.flatnonzero((codes[:, :level] == codes[item, :level]).all(axis=1))
      allowed = {int(codes[j, level]): levels[row, j, level] / temperature for j in siblings}
      expected[item] *= np.exp(levels[row, item, level] / temperature
                               - np.logaddexp.reduce(list(allowed.values())))
    observed = np.bincount(items[row], minlength=12)
    chi2 = np.sum((observed - n * expected) ** 2 / (n * expected))
    assert chi2 < 32.9, (chi2, observed, n * expected)  # 99.95% quantile for 11 dof


def test_sampling_rejects_non_positive_temperature():
  trie = trie_lib.build_trie(_codes(10, 3, 4), 4)
  first_logits, cache, logits_fn, reorder = _toy_model(3, 4, batch=1)
  with pytest.raises(ValueError, match='temperature must be > 0'):
    sampling.masked_sample(first_logits, cache, logits_fn, reorder, trie, jax.random.key(0),
                           num_samples=2, token_map=_token_map(3, 4), temperature=0.0)


def test_real_decoder_with_kv_cache_plugs_in():
  """The project's decoder: beams covering every prefix give the brute-force top items."""
  levels, k, n = 3, 4, 23
  codes = _codes(n, levels, k)
  trie = trie_lib.build_trie(codes, k)
  vocab = ss.SidVocab(levels, k)
  config = variants.decoder_config('tiny', vocab.vocab_size)
  rng = np.random.default_rng(0)
  mask = jnp.asarray([[True] * 6, [False, False] + [True] * 4])
  tokens = jnp.where(mask, jnp.asarray(rng.integers(1, vocab.vocab_size, (2, 6))), 0)
  positions = jnp.maximum(jnp.cumsum(mask, 1) - 1, 0)
  params = decoder_lib.Decoder(config).init(jax.random.key(0), tokens, positions,
                                            jnp.ones((2, 6, 6), bool))['params']
  params = jax.tree.map(lambda x: x * 4.0, params)  # sharper: paths differ clearly

  @functools.partial(jax.jit, static_argnums=0)
  def run(beam, params):
    logits, cache = decoder_lib.prefill(config, params, tokens, positions, mask, 6 + levels)
    start = jnp.repeat(positions[:, -1] + 1, beam)
    step_fn = lambda c, t, step: decoder_lib.decode_step(config, params, c, t, start + step)
    return beam_search.constrained_beam_search(logits, cache, step_fn, decoder_lib.reorder_cache,
                                               trie, beam_size=beam,
                                               token_map=vocab.token_map)

  result = run(16, params)
  # Brute force: teacher-force every prompt + item SID through the full (no-cache) model.
  item_tokens = vocab.item_tokens(codes)
  truth = np.zeros((2, n))
  for row in range(2):
    prompt = np.asarray(tokens[row])[np.asarray(mask[row])]
    seqs = np.concatenate([np.tile(prompt, (n, 1)), item_tokens], axis=1)
    length = seqs.shape[1]
    logits = decoder_lib.Decoder(config).apply(
        {'params': params}, seqs, np.tile(np.arange(length), (n, 1)),
        np.tril(np.ones((n, length, length), bool)))
    log_probs = jax.nn.log_softmax(logits[:, len(prompt) - 1:-1].astype(jnp.float32))
    truth[row] = np.take_along_axis(np.asarray(log_probs), item_tokens[..., None], -1).sum((1, 2))
  for row in range(2):
    order = np.argsort(-truth[row])[:16]
    np.testing.assert_array_equal(result.items[row], order)
    np.testing.assert_allclose(result.scores[row], truth[row, order], atol=1e-4)
