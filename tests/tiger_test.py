"""The encoder-decoder recommender (TIGER): position buckets, cached decoding, beam search,
training, data layout and sizes.

One tiny random model (scaled up so that its log-probs are far from uniform) serves the
equivalence tests; the beam search is checked against brute-force teacher-forced scoring of
every catalogue SID, a path that shares no code with the incremental decoder's cache.
"""

import math
import zlib

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minirec_jax.data import pipeline
from minirec_jax.data import seq2seq as data_lib
from minirec_jax.data import sid_sequences as ss
from minirec_jax.decoding import encoder_decoder as decoding_lib
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import encoder_decoder as ed
from minirec_jax.models import variants
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.training import seq2seq as train_lib
from minirec_jax.training import state as state_lib

LEVELS, K = 3, 4
VOCAB = ss.SidVocab(LEVELS, K)
USER_BUCKETS = 3


def _config(**overrides):
  return ed.encoder_decoder_config('tiny', VOCAB.vocab_size, num_user_buckets=USER_BUCKETS,
                                   num_buckets=8, max_distance=16, **overrides)


def _sharp_params(config, seed=0, scale=8.0):
  """Random parameters scaled up, so log-probs differ clearly between paths and items."""
  init = jax.jit(lambda key: jax.tree.map(lambda x: x * scale, ed.init_params(config, key)))
  return init(jax.random.key(seed))


def _encoder_batch(histories, users):
  codes = np.stack(np.unravel_index(np.arange(K ** LEVELS), (K,) * LEVELS), axis=1)
  out = data_lib.encoder_inputs(histories, VOCAB.item_tokens(codes), 4, user_ids=users,
                                num_user_buckets=USER_BUCKETS, vocab_size=VOCAB.vocab_size)
  return jnp.asarray(out['enc_tokens']), jnp.asarray(out['enc_mask'])


def _direct_bucket(relative_position, bidirectional, num_buckets, max_distance):
  """T5's bucket of one key - query distance, from its defining formula in float64."""
  n = -relative_position
  bucket = 0
  if bidirectional:
    num_buckets //= 2
    bucket = num_buckets if n < 0 else 0
    n = abs(n)
  else:
    n = max(n, 0)
  exact = num_buckets // 2
  if n < exact:
    return bucket + n
  scaled = math.log(n / exact) / math.log(max_distance / exact) * (num_buckets - exact)
  return bucket + min(num_buckets - 1, exact + int(scaled))


@pytest.mark.parametrize('bidirectional', [True, False])
@pytest.mark.parametrize('num_buckets,max_distance', [(32, 128), (8, 20), (16, 50), (64, 256)])
def test_relative_position_bucket_equals_direct_computation(bidirectional, num_buckets,
                                                           max_distance):
  distances = np.arange(-2 * max_distance - 3, 2 * max_distance + 4)
  got = ed.relative_position_bucket(distances, bidirectional=bidirectional,
                                    num_buckets=num_buckets, max_distance=max_distance)
  want = [_direct_bucket(int(d), bidirectional, num_buckets, max_distance) for d in distances]
  np.testing.assert_array_equal(got, want)
  assert int(np.max(got)) == num_buckets - 1 and int(np.min(got)) == 0
  # A [q, k] grid gives the bucket of k - q.
  pos = np.arange(7)
  grid = ed.relative_position_bucket(pos[None, :] - pos[:, None], bidirectional=bidirectional,
                                     num_buckets=num_buckets, max_distance=max_distance)
  np.testing.assert_array_equal(grid[2, 5], got[np.flatnonzero(distances == 3)[0]])


def test_incremental_decoder_matches_teacher_forcing():
  config = _config()
  params = _sharp_params(config)
  enc_tokens, enc_mask = _encoder_batch([[1, 7], [3, 9, 20, 5, 2]], ['ann', 'bob'])
  assert not enc_mask[0, 0] and enc_mask[1].all()  # a padded row and a full one
  rng = np.random.default_rng(0)
  steps, per_prompt = 4, 2
  dec = jnp.asarray(rng.integers(0, VOCAB.vocab_size, (2 * per_prompt, steps)), jnp.int32)
  # After two steps the rows of each prompt swap (as beams do) and are fed new tokens: their
  # logits must be those of the spliced sequences.
  swap = jnp.asarray([1, 0, 3, 2])
  later = jnp.asarray(rng.integers(0, VOCAB.vocab_size, (4, steps)), jnp.int32)
  spliced = jnp.concatenate([dec[swap, :2], later[:, 2:]], axis=1)

  @jax.jit
  def teacher_forced(params):
    per_row = lambda tokens: ed.apply(config, params, jnp.repeat(enc_tokens, per_prompt, 0),
                                      jnp.repeat(enc_mask, per_prompt, 0), tokens)
    enc_out = ed.encode(config, params, enc_tokens, enc_mask)
    return (per_row(dec), ed.decode(config, params, enc_out, enc_mask, dec), per_row(spliced),
            per_row(dec.at[:, -1].set(0)))

  @jax.jit
  def incremental(params):
    enc_out = ed.encode(config, params, enc_tokens, enc_mask)
    cache = ed.init_decode(config, params, enc_out, enc_mask, per_prompt, steps)
    assert cache.cross_k.shape[1] == 2 and cache.k.shape[1] == 4  # cross once per prompt
    out = []
    for step in range(steps):
      if step == 2:
        cache = ed.reorder_cache(cache, swap)
      tokens = dec if step < 2 else spliced
      logits, cache = ed.decode_step(config, params, cache, tokens[:, step], jnp.int32(step))
      out.append(logits)
    return jnp.stack(out, axis=1)

  full, grouped, spliced_logits, changed = teacher_forced(params)
  assert full.shape == (4, steps, VOCAB.vocab_size) and full.dtype == jnp.float32
  close = lambda a, b: np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-4)
  # Grouped rows (each prompt's cross keys/values once) == per-row teacher forcing.
  close(grouped, full)
  stepped = incremental(params)
  close(stepped[:, :2], full[:, :2])
  close(stepped[:, 2:], spliced_logits[:, 2:])
  # The decoder is causal: a later token does not change earlier logits.
  close(changed[:, :-1], full[:, :-1])
  assert np.abs(changed[:, -1] - full[:, -1]).max() > 1e-3


def test_beam_search_equals_brute_force_over_the_catalogue():
  config = _config(tie_embeddings=False)
  params = _sharp_params(config, seed=1, scale=6.0)
  rng = np.random.default_rng(1)
  n = 12
  codes = np.stack(np.unravel_index(rng.permutation(K ** LEVELS)[:n], (K,) * LEVELS), axis=1)
  trie = trie_lib.build_trie(codes, K)
  enc_tokens, enc_mask = _encoder_batch([[0, 5], [9], [4, 3, 2, 1, 8]], ['a', 'b', 'c'])
  batch = enc_tokens.shape[0]
  item_tokens = jnp.asarray(VOCAB.item_tokens(codes))

  @jax.jit
  def brute_force(params):
    """Every catalogue SID teacher-forced after every user's history (one row each), and
    `completion_log_probs` of all of them per user: both `[batch, n, L]`."""
    targets = jnp.tile(item_tokens, (batch, 1))                                 # [b*n, L]
    dec = jnp.concatenate([jnp.zeros((batch * n, 1), jnp.int32), targets[:, :-1]], axis=1)
    log_probs = jax.nn.log_softmax(ed.apply(config, params, jnp.repeat(enc_tokens, n, 0),
                                            jnp.repeat(enc_mask, n, 0), dec))
    token_scores = jnp.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    completion = decoding_lib.completion_log_probs(
        config, params, enc_tokens, enc_mask, jnp.broadcast_to(item_tokens, (batch, n, LEVELS)))
    return token_scores.reshape(batch, n, LEVELS), completion

  token_scores, completion = brute_force(params)
  np.testing.assert_allclose(completion, token_scores, atol=1e-4)
  scores = np.asarray(token_scores.sum(-1))
  # beam = n covers every prefix, so the search is exact: the full ranking.
  result = jax.jit(decoding_lib.beam_search, static_argnames=('config', 'beam_size'))(
      config, params, trie, enc_tokens, enc_mask, beam_size=n, token_map=VOCAB.token_map)
  order = np.argsort(-scores, axis=1)
  assert np.min(np.abs(np.diff(np.sort(scores, axis=1), axis=1))) > 1e-4  # no near-ties
  np.testing.assert_array_equal(result.items, order)
  np.testing.assert_allclose(result.scores, np.take_along_axis(scores, order, 1), atol=1e-4)
  np.testing.assert_array_equal(result.codes, codes[order])


def _toy_rows(num, num_items, rng):
  """Rows whose target is a function of the history's last item."""
  rows = []
  for i in range(num):
    history = rng.integers(0, num_items, rng.integers(1, 5)).tolist()
    rows.append({'user_id': f'u{i % 7}', 'history': history,
                 'target': (5 * history[-1] + 1) % num_items})
  return rows


def test_training_steps_lower_the_loss_on_a_toy_task():
  config = _config()
  rng = np.random.default_rng(2)
  num_items = 16
  codes = np.stack(np.unravel_index(rng.permutation(K ** LEVELS)[:num_items], (K,) * LEVELS), 1)
  train, held_out = (
      next(iter(pipeline.array_batches(data_lib.examples(
          _toy_rows(n, num_items, rng), VOCAB.item_tokens(codes), 4,
          num_user_buckets=USER_BUCKETS, vocab_size=VOCAB.vocab_size), n))) for n in (256, 64))
  assert train.pop('valid').all() and held_out.pop('valid').all()
  state = state_lib.create(lambda key: ed.init_params(config, key), optax.adam(1e-2),
                           jax.random.key(0))
  step = jax.jit(chex.assert_max_traces(train_lib.make_seq2seq_step(config), n=1))
  eval_step = jax.jit(train_lib.make_seq2seq_eval_step(config))
  before = eval_step(state.params, held_out)
  assert float(before['weight_sum']) == 64 * LEVELS
  losses = []
  for _ in range(40):
    state, metrics = step(state, train, jax.random.key(1))
    losses.append(float(metrics['loss']))
  assert set(metrics) == {'loss', 'accuracy', 'tokens', 'grad_norm'}
  assert np.isfinite(losses).all() and losses[-1] < 0.25 * losses[0], losses
  # The mapping generalises to new histories (of the same 16 last items).
  after = eval_step(state.params, held_out)
  assert float(after['loss_sum']) < 0.4 * float(before['loss_sum'])
  assert float(after['correct_sum'] / after['weight_sum']) > 0.6


def test_examples_layout():
  item_tokens = VOCAB.item_tokens(np.asarray([[0, 1, 2], [3, 3, 3], [1, 0, 1]]))
  rows = [{'user_id': b'alice', 'history': [0, 1, 2, 0, 1], 'target': 2},
          {'user_id': 'bob', 'history': [2], 'target': 0}]
  out = data_lib.examples(rows, item_tokens, 3, num_user_buckets=5, vocab_size=VOCAB.vocab_size)
  assert out['enc_tokens'].shape == (2, 3 * LEVELS + 1) == out['enc_mask'].shape
  # Right-aligned: the user token, then the last 3 items' tokens; padding on the left.
  alice = VOCAB.vocab_size + zlib.crc32(b'alice') % 5
  np.testing.assert_array_equal(out['enc_tokens'][0], [alice, *item_tokens[[2, 0, 1]].ravel()])
  bob = VOCAB.vocab_size + data_lib.user_bucket(b'bob', 5)
  assert data_lib.user_bucket('bob', 5) == zlib.crc32(b'bob') % 5
  np.testing.assert_array_equal(out['enc_tokens'][1, -4:], [bob, *item_tokens[2]])
  np.testing.assert_array_equal(out['enc_mask'][1], [False] * 6 + [True] * 4)
  np.testing.assert_array_equal(out['enc_tokens'][1, :6], 0)
  np.testing.assert_array_equal(out['labels'], item_tokens[[2, 0]])
  np.testing.assert_array_equal(out['dec_tokens'][:, 0], data_lib.START_TOKEN)
  np.testing.assert_array_equal(out['dec_tokens'][:, 1:], item_tokens[[2, 0]][:, :-1])
  np.testing.assert_array_equal(out['weights'], 1.0)
  plain = data_lib.history_encoder_inputs(np.asarray([[0, 1, 2, 0, 1], [2, -1, -1, -1, -1]]),
                                          np.asarray([5, 1]), item_tokens, 3)
  no_users = data_lib.examples(rows, item_tokens, 3)
  np.testing.assert_array_equal(plain['enc_tokens'], no_users['enc_tokens'])
  np.testing.assert_array_equal(no_users['enc_tokens'][0], out['enc_tokens'][0, 1:])
  with pytest.raises(ValueError, match='user_ids'):
    data_lib.encoder_inputs([[0]], item_tokens, 3, num_user_buckets=5)


def test_variant_sizes_match_the_decoder_only_models_and_flops_cover_every_weight():
  industrial = ss.SidVocab(3, 256).vocab_size
  assert industrial == 1 + 3 * 256
  for name in ('tiny', 'XS', 'S', 'M', 'L'):
    ours = ed.count_params(ed.encoder_decoder_config(name, industrial))['params']
    theirs = decoder_lib.count_params(variants.decoder_config(name, industrial))['params']
    assert abs(ours / theirs - 1) < (0.10 if name == 'S' else 0.02), (name, ours, theirs)
  # Every matmul weight is read once per encoder or target token (attention terms off with
  # zero lengths): the forward FLOPs are twice the matmul parameters.
  for config in (_config(), _config(ff='relu', tie_embeddings=False)):
    counts = ed.count_params(config)
    shapes = ed.abstract_params(config)
    not_matmul = sum(np.prod(x.shape) for path, x in jax.tree_util.tree_leaves_with_path(shapes)
                     if 'norm' in jax.tree_util.keystr(path)
                     or 'bias' in jax.tree_util.keystr(path))
    head = config.width * config.vocab_size
    flops = ed.flops_per_token(config, 0, 0)
    assert (flops['forward_flops_per_enc_token'] + flops['forward_flops_per_target_token']
            == 2 * (counts['non_embedding_params'] - not_matmul + head))
    with_attention = ed.flops_per_token(config, 31, 3)
    assert with_attention['train_flops_per_example'] == 3 * (
        31 * with_attention['forward_flops_per_enc_token']
        + 3 * with_attention['forward_flops_per_target_token'])
  with pytest.raises(ValueError, match='ff'):
    ed.encoder_decoder_config('tiny', 10, ff='swish')
  with pytest.raises(ValueError, match='unknown encoder-decoder fields'):
    ed.encoder_decoder_config('tiny', 10, depth=3)
