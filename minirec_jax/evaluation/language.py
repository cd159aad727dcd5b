"""Language-model likelihood of token sequences under our decoder: NLL and perplexity.

`negative_log_likelihood(config, params, sequences, batch_size=..., prefix_id=...)` scores
each sequence by teacher forcing: token t is predicted from tokens 0..t-1, so a sequence's
first token is context only and tokens 1..n-1 are scored. With `prefix_id` (e.g. eos or bos
as a document separator) that token is put before every sequence and all of the sequence's
own tokens are scored. The log-softmax is float32 over the full vocabulary (with an extended
vocabulary, its SID rows take probability mass too), whatever the compute dtype.

Sequences are sorted by length, grouped `batch_size` at a time and right-padded to a multiple
of `length_bucket` tokens (the last group with padding rows), so the forward pass compiles
once per padded length. Padding keys are masked out and padding queries see nothing.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.models import decoder as decoder_lib

_SHOWN = 5  # offending sequence indices an error message lists


@dataclasses.dataclass(frozen=True)
class Likelihood:
  """Teacher-forced likelihood of a set of sequences.

  Attributes:
    nll: total negative log-likelihood in nats, summed over every scored token.
    tokens: the number of scored tokens.
    sequence_nll: float64 `[num_sequences]`, each sequence's NLL, in input order.
    sequence_tokens: int64 `[num_sequences]`, each sequence's scored tokens.
  """

  nll: float
  tokens: int
  sequence_nll: np.ndarray
  sequence_tokens: np.ndarray

  @property
  def nll_per_token(self) -> float:
    return self.nll / self.tokens

  @property
  def perplexity(self) -> float:
    """exp(nll / tokens)."""
    return math.exp(self.nll_per_token)


def _validate(config: decoder_lib.DecoderConfig, sequences: list[np.ndarray],
              prefix_id: int | None) -> None:
  """One ValueError listing every kind of bad input, with the first offending indices."""
  if not sequences:
    raise ValueError('no sequences to score')
  extra = prefix_id is not None
  problems = []

  def report(what: str, bad: list[int]):
    if bad:
      more = f' (and {len(bad) - _SHOWN} more)' if len(bad) > _SHOWN else ''
      problems.append(f'{what}: sequences {bad[:_SHOWN]}{more}')

  report('empty' if extra else 'fewer than 2 tokens (the first is context only)',
         [i for i, s in enumerate(sequences) if s.size + extra < 2])
  report(f'longer than config.max_len={config.max_len} tokens'
         + (' with the prefix token' if extra else ''),
         [i for i, s in enumerate(sequences) if s.size + extra > config.max_len])
  report(f'token ids outside [0, vocab_size={config.vocab_size})',
         [i for i, s in enumerate(sequences)
          if s.size and (s.min() < 0 or s.max() >= config.vocab_size)])
  if extra and not 0 <= prefix_id < config.vocab_size:
    problems.append(f'prefix_id {prefix_id} outside [0, vocab_size={config.vocab_size})')
  if problems:
    raise ValueError('cannot score these sequences: ' + '; '.join(problems))


@functools.partial(jax.jit, static_argnums=0)
def _row_nll(config: decoder_lib.DecoderConfig, params: Any, tokens: jax.Array,
             valid: jax.Array) -> jax.Array:
  """Summed NLL of each right-padded row.

  Args:
    config: the decoder's config.
    params: its parameters.
    tokens: int32 `[batch, seq]`.
    valid: bool `[batch, seq]`, True on real tokens (a prefix of each row).
  Returns:
    float32 `[batch]`: -sum_t log p(tokens[t] | tokens[:t]) over valid t >= 1.
  """
  chex.assert_rank(tokens, 2)
  chex.assert_equal_shape([tokens, valid])
  b, s = tokens.shape
  positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
  # causal_mask drops padding keys; padding queries get an all-False row as well, which keeps
  # them out of MoE routing (a token counts as real iff it attends somewhere).
  mask = decoder_lib.causal_mask(valid) & valid[:, :, None]
  logits = decoder_lib.Decoder(config).apply({'params': params}, tokens, positions, mask,
                                             causal=True)
  logits = logits[:, :-1].astype(jnp.float32)                        # [b, s-1, vocab]
  targets = tokens[:, 1:]
  target_logits = jnp.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]
  nll = jax.nn.logsumexp(logits, axis=-1) - target_logits           # [b, s-1]
  # Rows are right-padded, so a valid target's context is valid too.
  return jnp.sum(jnp.where(valid[:, 1:], nll, 0.0), axis=1)


def negative_log_likelihood(config: decoder_lib.DecoderConfig, params: Any,
                            sequences: Sequence[Any], *, batch_size: int = 16,
                            prefix_id: int | None = None,
                            length_bucket: int = 16) -> Likelihood:
  """Teacher-forced NLL of `sequences` under `Decoder(config)` with `params`.

  Args:
    config: the decoder's config.
    params: its parameters (numpy or jax arrays), as `Decoder(config).init` makes them.
    sequences: 1-D integer token-id arrays (or lists), of any lengths.
    batch_size: rows per forward pass.
    prefix_id: None to score tokens 1..n-1 of each sequence (token 0 is context only);
      else a token id put before every sequence, so all n tokens are scored.
    length_bucket: rows are right-padded to a multiple of this many tokens (at most
      config.max_len), which bounds the number of compiled shapes.
  Returns:
    A `Likelihood` (totals, per-sequence values, perplexity).
  Raises:
    ValueError: no sequences; a sequence with nothing to score (empty, or a single token
      without `prefix_id`); one longer than config.max_len; token ids (or `prefix_id`)
      outside the vocabulary. One error lists every kind of problem found.
  """
  if batch_size < 1 or length_bucket < 1:
    raise ValueError(f'batch_size and length_bucket must be >= 1, got {batch_size}, '
                     f'{length_bucket}')
  # An empty list becomes a float array; its emptiness is what _validate reports.
  arrays = [np.asarray(s) if len(s) else np.zeros((0,), np.int32) for s in sequences]
  chex.assert_rank(arrays, 1)
  chex.assert_type(arrays, int)
  _validate(config, arrays, prefix_id)
  if prefix_id is not None:
    arrays = [np.concatenate([np.array([prefix_id]), a]) for a in arrays]
  lengths = np.array([a.size for a in arrays])
  params = jax.device_put(params)  # once, not per batch: numpy leaves would be copied each call
  order = np.argsort(-lengths, kind='stable')  # similar lengths share a batch
  row_nll = np.zeros(len(arrays), np.float64)
  for start in range(0, len(arrays), batch_size):
    rows = order[start:start + batch_size]
    seq = min(config.max_len, -(-int(lengths[rows].max()) // length_bucket) * length_bucket)
    tokens = np.zeros((batch_size, seq), np.int32)
    valid = np.zeros((batch_size, seq), bool)
    for r, i in enumerate(rows):
      tokens[r, :lengths[i]] = arrays[i]
      valid[r, :lengths[i]] = True
    row_nll[rows] = np.asarray(_row_nll(config, params, tokens, valid))[:len(rows)]
  scored = lengths - 1
  return Likelihood(nll=float(row_nll.sum()), tokens=int(scored.sum()), sequence_nll=row_nll,
                    sequence_tokens=scored.astype(np.int64))
