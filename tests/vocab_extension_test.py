"""A language model's vocabulary extended with SID tokens, the token map, and decoding on it.

The tokenizer is a byte-level BPE without merges (3 special tokens + 256 bytes = 259 tokens);
the model a tiny random Llama-like decoder whose embedding is padded to 264 rows, as Qwen pads
its own, so the first SID tokens reuse padded rows and the rest grow the matrix. Beam search
and sampling with the terminator ('\\n', eos) are checked against teacher forcing every
catalogue item's SID tokens and terminator through the full model.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tokenizers
from tokenizers import decoders, pre_tokenizers

from minirec_jax.data import sid_sequences as ss
from minirec_jax.data import text_tokenizer
from minirec_jax.decoding import beam_search
from minirec_jax.decoding import prompted
from minirec_jax.evaluation import generative
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import vocab_extension as vx
from minirec_jax.semantic_ids import catalogue as catalogue_lib
from minirec_jax.semantic_ids import trie as trie_lib

SPECIALS = ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
ROWS = 264  # embedding rows of the checkpoint: 259 tokens, padded
LEVELS, K = 3, 4


def _tokenizer():
  alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
  inner = tokenizers.Tokenizer(tokenizers.models.BPE(
      {t: i for i, t in enumerate(SPECIALS + alphabet)}, []))
  inner.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  inner.decoder = decoders.ByteLevel()
  inner.add_special_tokens(SPECIALS)
  return text_tokenizer.TextTokenizer(inner, 'tiny tokenizer.json', eos_token='<|im_end|>',
                                      pad_token='<|endoftext|>')


def _model(tied, seed=0):
  config = decoder_lib.DecoderConfig(
      vocab_size=ROWS, width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64,
      rope_theta=1e4, rms_eps=1e-5, qkv_bias=False, tie_embeddings=tied, max_len=128)
  tokens = jnp.zeros((1, 1), jnp.int32)
  params = decoder_lib.Decoder(config).init(jax.random.key(seed), tokens, tokens)['params']
  # Sharper than the 0.02 init, so that item scores are far from ties; numpy, as loaded.
  return config, jax.tree.map(lambda x: np.asarray(4.0 * x), params)


def _prompts(tokenizer, texts):
  """Left-padded ChatML prompts: tokens, positions, mask `[len(texts), T]`."""
  ids = [tokenizer.encode(text_tokenizer.chatml([{'role': 'user', 'content': t}]),
                          add_special_tokens=False) for t in texts]
  width = max(map(len, ids))
  mask = np.array([[i >= width - len(row) for i in range(width)] for row in ids])
  tokens = np.full(mask.shape, tokenizer.pad_id, np.int32)
  tokens[mask] = np.concatenate(ids)
  positions = np.maximum(np.cumsum(mask, 1) - 1, 0).astype(np.int32)
  return {'tokens': tokens, 'positions': positions, 'mask': mask}


def _catalogue(n=20, seed=0):
  """n distinct SIDs in which level 0 never uses code 2 (a code without a token, officially)."""
  combos = np.stack(np.unravel_index(np.arange(K ** LEVELS), (K,) * LEVELS), 1)
  combos = combos[combos[:, 0] != 2]
  return combos[np.random.default_rng(seed).permutation(len(combos))[:n]]


def test_sid_vocabulary_is_in_official_string_order():
  # Python's string order, as the official `sorted(token_set)`: '>' sorts after the digits.
  names = vx.sid_vocabulary(2, 12)
  assert names[:5] == ['<a_0>', '<a_10>', '<a_11>', '<a_1>', '<a_2>'] and len(names) == 24
  assert names[12] == '<b_0>'
  assert vx.sid_vocabulary(2, 12, codes=np.array([[3, 11], [10, 11]])) == [
      '<a_10>', '<a_3>', '<b_11>']
  with pytest.raises(ValueError, match='codes must lie in'):
    vx.sid_vocabulary(2, 4, codes=np.array([[0, 4]]))


def test_added_sid_tokens_are_atomic_normal_tokens_with_consecutive_ids():
  base = _tokenizer()
  assert base.vocab_size == 259
  extended = vx.add_sid_tokens(base, 2, 12)
  assert base.vocab_size == 259 and base.token_to_id('<a_0>') is None  # a copy was extended
  names = vx.sid_vocabulary(2, 12)
  assert extended.added_tokens(special=False) == {t: 259 + i for i, t in enumerate(names)}
  ids = extended.encode('x<a_10><b_3>\n', add_special_tokens=False)
  assert ids[1:3] == [259 + names.index('<a_10>'), 259 + names.index('<b_3>')]
  assert extended.decode(ids + [extended.eos_id], skip_special_tokens=True) == 'x<a_10><b_3>\n'
  # A tokenizer that has them already (an official checkpoint's) keeps its ids.
  again = vx.add_sid_tokens(extended, 2, 12)
  assert again.added_tokens(special=False) == extended.added_tokens(special=False)


def test_token_maps_of_our_vocabulary_and_of_a_language_model():
  ours = ss.SidVocab(3, 4).token_map
  np.testing.assert_array_equal(ours.table, 1 + np.arange(3)[:, None] * 4 + np.arange(4))
  assert ours.terminator == () and ours.max_id() == 12
  codes = _catalogue()
  tokenizer = vx.add_sid_tokens(_tokenizer(), LEVELS, K, codes)
  token_map = vx.sid_token_map(tokenizer, LEVELS, K)
  names = vx.sid_vocabulary(LEVELS, K, codes)
  assert len(names) == LEVELS * K - 1 and '<a_2>' not in names
  for level in range(LEVELS):
    for code in range(K):
      name = ss.sid_token_name(level, code)
      want = 259 + names.index(name) if name in names else -1
      assert token_map.table[level, code] == want
  newline = tokenizer.encode('\n', add_special_tokens=False)
  assert len(newline) == 1 and token_map.terminator == (newline[0], tokenizer.eos_id)
  item_tokens = token_map.item_tokens(codes)
  assert tokenizer.decode(item_tokens[0]) == ''.join(ss.sid_token_name(l, c)
                                                    for l, c in enumerate(codes[0]))
  np.testing.assert_array_equal(token_map.token_codes(item_tokens), codes)
  assert (token_map.token_codes(np.array([[item_tokens[0, 1], 0, 5]])) == -1).all()
  with pytest.raises(ValueError, match='code 2 of level 0'):
    token_map.item_tokens(np.array([[2, 0, 0]]))
  with pytest.raises(ValueError, match='no SID tokens'):
    vx.sid_token_map(_tokenizer(), LEVELS, K)


@pytest.mark.parametrize('tied', [True, False])
def test_extension_keeps_old_logits_and_adds_mean_rows(tied):
  config, params = _model(tied)
  out = vx.extend(_tokenizer(), config, params, LEVELS, K)
  assert out.tokenizer.vocab_size == 259 + LEVELS * K == out.config.vocab_size
  assert dataclasses.replace(out.config, vocab_size=ROWS) == config
  old, new = params['embed_tokens']['embedding'], out.params['embed_tokens']['embedding']
  np.testing.assert_array_equal(new[:ROWS], old)  # the padded rows 259..263 are reused
  np.testing.assert_allclose(new[ROWS:], np.broadcast_to(old.mean(0), new[ROWS:].shape),
                             rtol=1e-6, atol=1e-7)
  if tied:
    assert 'lm_head' not in out.params
  else:
    old_head, head = params['lm_head']['kernel'], out.params['lm_head']['kernel']
    np.testing.assert_array_equal(head[:, :ROWS], old_head)
    np.testing.assert_allclose(head[:, ROWS:].T, np.broadcast_to(old_head.mean(1),
                                                                 new[ROWS:].shape),
                               rtol=1e-6, atol=1e-7)
  p = _prompts(_tokenizer(), ['a history', 'b'])
  apply = lambda c, w: decoder_lib.Decoder(c).apply(
      {'params': w}, p['tokens'], p['positions'], decoder_lib.causal_mask(p['mask']))
  before, after = apply(config, params), apply(out.config, out.params)
  assert after.shape[-1] == out.config.vocab_size
  np.testing.assert_allclose(after[..., :ROWS], before, rtol=1e-6, atol=1e-6)
  noisy = vx.extend_params(config, params, 280, noise_scale=0.1, seed=3)[1]
  again = vx.extend_params(config, params, 280, noise_scale=0.1, seed=3)[1]
  rows = noisy['embed_tokens']['embedding'][ROWS:]
  np.testing.assert_array_equal(rows, again['embed_tokens']['embedding'][ROWS:])
  assert 0.05 < np.std(rows - old.mean(0)) < 0.2
  # Relative noise: in units of each matrix's own element std (the head's differs here).
  scaled = {'embed_tokens': {'embedding': 3.0 * old},
            **({} if tied else {'lm_head': {'kernel': 0.5 * params['lm_head']['kernel']}})}
  grown = vx.extend_params(config, scaled, 2000, noise_scale=0.5, noise_relative=True, seed=3)[1]
  matrices = [(3.0 * old, grown['embed_tokens']['embedding'])]
  if not tied:
    matrices.append((0.5 * params['lm_head']['kernel'].T, grown['lm_head']['kernel'].T))
  for before_rows, after_rows in matrices:
    spread = np.std(after_rows[ROWS:] - before_rows.mean(0)) / np.std(before_rows)
    assert 0.45 < spread < 0.55, spread
  same = vx.extend_params(config, params, ROWS - 5)  # the matrix already has room
  assert same[0] is config and same[1] is params


@pytest.mark.parametrize('tied', [True, False])
def test_title_rows_start_each_sid_token_at_its_items_title_words(tied):
  config, params = _model(tied)
  codes = _catalogue(n=6)
  out = vx.extend(_tokenizer(), config, params, LEVELS, K, codes=codes)
  titles = [out.tokenizer.encode(t, add_special_tokens=False)
            for t in ('glue', 'saw', 'tape', 'drill', 'nail', 'gun')]
  got = vx.title_rows(out.config, out.params, out.token_map, codes, titles)
  embedding = out.params['embed_tokens']['embedding']
  for name, kernel in [('embedding', embedding)] + (
      [] if tied else [('head', out.params['lm_head']['kernel'].T)]):
    new = (got['embed_tokens']['embedding'] if name == 'embedding'
           else got['lm_head']['kernel'].T)
    item_rows = np.stack([kernel[ids].mean(0) for ids in titles])
    for level in range(LEVELS):
      for code in range(K):
        token = out.token_map.table[level, code]
        users = codes[:, level] == code
        if users.any():  # the mean of its items' mean title rows
          np.testing.assert_allclose(new[token], item_rows[users].mean(0), rtol=1e-5, atol=1e-6)
        elif token >= 0:  # a code no item uses keeps its (mean) row
          np.testing.assert_array_equal(new[token], kernel[token])
    sid_rows = out.token_map.table[out.token_map.table >= 0]
    others = np.setdiff1d(np.arange(len(new)), sid_rows)
    np.testing.assert_array_equal(new[others], kernel[others])  # every other token unchanged
  with pytest.raises(ValueError, match='item 1'):
    vx.title_rows(out.config, out.params, out.token_map, codes, [[5], [], [5], [5], [5], [5]])


def _brute_force(config, params, prompts, item_tokens, terminator):
  """Teacher-forced log-probs `[prompts, items, L + T]` of every item's SID and terminator."""
  out = []
  for row in range(len(prompts['tokens'])):
    prompt = prompts['tokens'][row][prompts['mask'][row]]
    n = len(item_tokens)
    seqs = np.concatenate([np.tile(prompt, (n, 1)), item_tokens,
                           np.tile(terminator, (n, 1))], axis=1)
    logits = decoder_lib.Decoder(config).apply(
        {'params': params}, seqs, np.tile(np.arange(seqs.shape[1]), (n, 1)))
    log_probs = jax.nn.log_softmax(logits[:, len(prompt) - 1:-1])
    out.append(np.take_along_axis(np.asarray(log_probs), seqs[:, len(prompt):, None], -1)[..., 0])
  return np.stack(out)


@pytest.fixture(scope='module')
def official_llm():
  """The official-set extension (catalogue codes only; (0, 2) has no token), tied head, with
  noise so that the SID tokens' rows differ."""
  codes = _catalogue()
  config, params = _model(tied=True, seed=1)
  out = vx.extend(_tokenizer(), config, params, LEVELS, K, codes=codes, noise_scale=0.3)
  p = _prompts(out.tokenizer, ['history one <a_1><b_0><c_3>', 'two'])
  truth = _brute_force(out.config, out.params, p, out.token_map.item_tokens(codes),
                       np.array(out.token_map.terminator))
  return codes, out, p, truth


@pytest.mark.parametrize('beam', [16, 20])
def test_recommender_beam_search_with_terminator_matches_brute_force(official_llm, beam):
  # Beam 16 >= the distinct 2-code prefixes: nothing is pruned before the last level, which
  # keeps the 16 best SIDs by their SID tokens; the terminator's log-probs then re-rank them.
  # Beam 20 keeps every item: the ranking is exactly the brute-force total's.
  codes, out, p, truth = official_llm
  sids = catalogue_lib.SidCatalogue.from_codes(codes, K)
  rec = generative.Recommender(out.config, sids, 4, np.zeros(len(codes)),
                               token_map=out.token_map)
  items, scores = rec.rank(out.params, p, beam)
  for row in range(2):
    kept = np.argsort(-truth[row, :, :LEVELS].sum(-1))[:beam]
    totals = truth[row, kept].sum(-1)
    order = np.argsort(-totals)
    assert np.min(np.abs(np.diff(totals[order]))) > 1e-3  # no near-ties to flip
    np.testing.assert_array_equal(items[row], kept[order])
    np.testing.assert_allclose(scores[row], totals[order], atol=2e-4)
  if beam == len(codes):
    assert sorted(items[0]) == list(range(len(codes)))


def test_sampling_with_terminator_scores_every_token(official_llm):
  codes, out, p, truth = official_llm
  trie = trie_lib.build_trie(codes, K)
  sample = jax.jit(prompted.sample_prompts, static_argnames=('config', 'num_samples'))
  result = sample(out.config, out.params, trie, p['tokens'], p['positions'], p['mask'],
                  jax.random.key(0), num_samples=8, token_map=out.token_map)
  items = np.asarray(result.items)
  assert result.token_log_probs.shape == (2, 8, LEVELS + 2)
  np.testing.assert_allclose(result.token_log_probs, truth[np.arange(2)[:, None], items],
                             atol=2e-4)


def test_maps_that_do_not_fit_the_vocabulary_are_errors(official_llm):
  codes, out, _, _ = official_llm
  sids = catalogue_lib.SidCatalogue.from_codes(codes, K)
  small = dataclasses.replace(out.config, vocab_size=ROWS)
  with pytest.raises(ValueError, match='outside the decoder vocabulary of 264'):
    generative.Recommender(small, sids, 4, np.zeros(len(codes)), token_map=out.token_map)
  trie = trie_lib.build_trie(codes, K)
  logits = jnp.zeros((1, out.config.vocab_size))
  far = ss.SidTokenMap(out.token_map.table, (out.config.vocab_size,))
  with pytest.raises(ValueError, match='no room for 3 x 4 SID tokens and 1 terminator'):
    beam_search.check_token_map(logits, trie, far)
  with pytest.raises(ValueError, match='does not match the trie'):
    beam_search.check_token_map(logits, trie, ss.SidVocab(2, K).token_map)
