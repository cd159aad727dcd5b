"""Teacher-forced NLL and perplexity of token sequences (evaluation/language.py).

Batched, right-padded scoring is checked against each sequence run alone through the decoder
(no mask, no padding) with a float64 log-softmax, on a tiny random decoder and sequences
whose lengths span several padding buckets and a partly padded last batch.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.evaluation import language
from minirec_jax.models import decoder as decoder_lib

CONFIG = decoder_lib.DecoderConfig(vocab_size=40, width=16, depth=2, num_heads=2,
                                   num_kv_heads=1, mlp_dim=32, tie_embeddings=True, max_len=64)
LENGTHS = (2, 7, 16, 17, 30, 5, 40)  # buckets of 16: 16, 32 and 48 tokens


@functools.cache
def _params():
  tokens = np.zeros((1, 4), np.int32)
  init = jax.jit(decoder_lib.Decoder(CONFIG).init)
  return init(jax.random.PRNGKey(0), tokens, tokens)['params']


def _sequences(seed=0):
  rng = np.random.default_rng(seed)
  return [rng.integers(0, CONFIG.vocab_size, n) for n in LENGTHS]


@jax.jit
def _logits(params, tokens):
  """Logits `[n, max_len, vocab]` with the decoder's default mask: plain causal, no padding."""
  positions = jnp.broadcast_to(jnp.arange(tokens.shape[1]), tokens.shape)
  return decoder_lib.Decoder(CONFIG).apply({'params': params}, tokens, positions)


def _direct_nll(params, seqs) -> np.ndarray:
  """-sum_{t>=1} log p(seq[t] | seq[:t]) per sequence, float64 log-softmax.

  Each row holds one sequence followed by random filler tokens, not masked: under causal
  attention they cannot reach the sequence's own logits, so each sequence is scored as if
  alone (one compiled shape for all of them).
  """
  rng = np.random.default_rng(123)
  tokens = rng.integers(0, CONFIG.vocab_size, (len(seqs), CONFIG.max_len)).astype(np.int32)
  for row, seq in zip(tokens, seqs):
    row[:len(seq)] = seq
  logits = np.asarray(_logits(params, tokens), np.float64)
  shifted = logits - logits.max(-1, keepdims=True)
  log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
  return np.array([-log_probs[i, np.arange(len(s) - 1), s[1:]].sum()
                   for i, s in enumerate(seqs)])


def test_batched_nll_matches_each_sequence_alone():
  params = _params()
  seqs = _sequences()
  result = language.negative_log_likelihood(CONFIG, params, seqs, batch_size=3)
  expected = _direct_nll(params, seqs)
  np.testing.assert_allclose(result.sequence_nll, expected, rtol=2e-5, atol=1e-4)
  np.testing.assert_array_equal(result.sequence_tokens, np.array(LENGTHS) - 1)
  assert result.tokens == sum(LENGTHS) - len(LENGTHS)
  assert result.nll == pytest.approx(expected.sum(), rel=2e-5)
  assert result.perplexity == pytest.approx(math.exp(expected.sum() / result.tokens), rel=2e-5)
  # A random model is close to uniform over the vocabulary.
  assert 0.5 * CONFIG.vocab_size < result.perplexity < 2 * CONFIG.vocab_size
  # The batching (order, batch size, bucket) does not change the numbers.
  other = language.negative_log_likelihood(CONFIG, params, [list(s) for s in seqs],
                                           batch_size=8, length_bucket=64)
  np.testing.assert_allclose(other.sequence_nll, result.sequence_nll, rtol=1e-5, atol=1e-5)


def test_prefix_token_scores_every_token_of_the_sequence():
  params = _params()
  seqs = _sequences(seed=1)
  eos = 3
  result = language.negative_log_likelihood(CONFIG, params, seqs, batch_size=4, prefix_id=eos)
  expected = _direct_nll(params, [np.concatenate([[eos], s]) for s in seqs])
  np.testing.assert_allclose(result.sequence_nll, expected, rtol=2e-5, atol=1e-4)
  np.testing.assert_array_equal(result.sequence_tokens, LENGTHS)
  # With the prefix, a single-token sequence has something to score.
  single = language.negative_log_likelihood(CONFIG, params, [[7]], prefix_id=eos)
  assert single.tokens == 1
  assert single.nll == pytest.approx(_direct_nll(params, [np.array([eos, 7])])[0], rel=2e-5)


def test_bad_sequences_raise_one_value_error_naming_them():
  params = _params()
  good = [1, 2, 3]
  with pytest.raises(ValueError, match=r'empty: sequences \[1\]'):
    language.negative_log_likelihood(CONFIG, params, [good, []], prefix_id=0)
  with pytest.raises(ValueError, match=r'fewer than 2 tokens.*sequences \[0\]'):
    language.negative_log_likelihood(CONFIG, params, [[5], good])
  with pytest.raises(ValueError, match=r'empty: sequences \[0\].*outside \[0, vocab_size=40\): '
                     r'sequences \[1, 2\]'):
    language.negative_log_likelihood(CONFIG, params, [[], [1, 40], [-1, 2], good], prefix_id=0)
  with pytest.raises(ValueError, match='longer than config.max_len=64'):
    language.negative_log_likelihood(CONFIG, params, [np.ones(65, np.int32)])
  with pytest.raises(ValueError, match='prefix_id 40 outside'):
    language.negative_log_likelihood(CONFIG, params, [good], prefix_id=40)
  with pytest.raises(ValueError, match='no sequences'):
    language.negative_log_likelihood(CONFIG, params, [])
