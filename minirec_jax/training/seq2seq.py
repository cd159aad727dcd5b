"""Teacher-forced training of the encoder-decoder (TIGER) as pure, un-jitted step factories.

Batches are rows of `data/seq2seq.examples` (via `pipeline.array_batches`):
  enc_tokens: int32 [batch, S];  enc_mask: bool [batch, S]
  dec_tokens, labels: int32 [batch, L];  weights: float32 [batch, L]
(fold a padded batch's `valid` column into `weights`, as `loops.sft.valid_loss` does).

The loss is the token-weighted mean cross-entropy over the target SID tokens, computed from
sums with `sft.weighted_token_loss` so that one device, a sharded jit and pmap (which psums the
sums and the gradients) optimise the same objective, and the metrics are the SFT step's.
"""

from __future__ import annotations

import functools
from typing import Callable

import jax

from minirec_jax.models import encoder_decoder as model_lib
from minirec_jax.training import sft

# apply_fn(params, enc_tokens [b, S], enc_mask [b, S], dec_tokens [b, L], rng)
#   -> float32 logits [b, L, vocab]; rng is for dropout.
ApplyFn = Callable[..., jax.Array]


def encoder_decoder_apply_fn(config: model_lib.EncoderDecoderConfig) -> ApplyFn:
  """The ApplyFn of `models.encoder_decoder` (no dropout: rng unused)."""

  def apply_fn(params, enc_tokens, enc_mask, dec_tokens, rng):
    del rng
    return model_lib.apply(config, params, enc_tokens, enc_mask, dec_tokens)

  return apply_fn


def _as_apply_fn(model: ApplyFn | model_lib.EncoderDecoderConfig) -> ApplyFn:
  if isinstance(model, model_lib.EncoderDecoderConfig):
    return encoder_decoder_apply_fn(model)
  return model


def _forward_sums(apply_fn: ApplyFn, params, batch, rng) -> dict[str, jax.Array]:
  logits = apply_fn(params, batch['enc_tokens'], batch['enc_mask'], batch['dec_tokens'], rng)
  return sft.weighted_token_loss(logits, batch['labels'], batch['weights'])


def make_seq2seq_step(model: ApplyFn | model_lib.EncoderDecoderConfig, *,
                      axis_name: str | None = None) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)`, pure and un-jitted.

  Args:
    model: an ApplyFn, or an `EncoderDecoderConfig` (then `encoder_decoder_apply_fn` of it).
    axis_name: set when the step runs under pmap/shard_map over that axis: the loss and
      gradient sums are psum-ed so the update is that of the global batch.
  Returns:
    The step (`sft.make_weighted_loss_step`); metrics: loss (mean per target token),
    accuracy (label at the row max), tokens (weight sum), grad_norm.
  """
  return sft.make_weighted_loss_step(functools.partial(_forward_sums, _as_apply_fn(model)),
                                     axis_name=axis_name)


def make_seq2seq_eval_step(model: ApplyFn | model_lib.EncoderDecoderConfig, *,
                           axis_name: str | None = None) -> Callable:
  """Returns `eval_step(params, batch) -> sums` (loss_sum, weight_sum, correct_sum)."""
  return sft.make_weighted_loss_eval_step(functools.partial(_forward_sums, _as_apply_fn(model)),
                                          axis_name=axis_name)
