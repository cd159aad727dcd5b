"""Supervised fine-tuning (next-SID prediction) as pure, un-jitted step factories.

Batches are packed sequences (`minirec_jax.data.sid_sequences.PackedSequences` rows):
  tokens, positions, segment_ids, labels: int32 [batch, seq];  weights: float32 [batch, seq]
or, when only some positions are supervised (a language model's prompt tokens are not), the
compact form of `compact_targets`: tokens, positions, segment_ids as above, and
  target_positions, target_labels: int32 [batch, n];  target_weights: float32 [batch, n]
with which the model computes logits at the n target positions only.

The loss is the token-weighted mean cross-entropy over supervised SID tokens. It is computed
from sums (loss sum and weight sum) so that one device, a sharded jit over N devices and pmap
over N devices (which psums both sums and the gradients) optimise exactly the same objective.
A model's auxiliary scalars (e.g. a MoE load-balancing loss) enter those sums times the
batch's token count, so pmap averages them over shards by tokens (a jit over N devices sees the
global batch, so a MoE balance loss, a nonlinear batch statistic, differs slightly from pmap's
per-shard average); `aux[PENALTY]` is added to the objective.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import moe
from minirec_jax.training.state import TrainState

# apply_fn(params, tokens, positions, attention_mask[b, q, k], rng, head_positions=None)
# -> logits [b, seq, vocab] (at `head_positions` [b, n] only: [b, n, vocab]), or (logits, aux):
# aux maps names to float32 scalars, reported as metrics; aux[PENALTY], if present, is a
# regulariser added to the mean token loss.
ApplyFn = Callable[..., jax.Array | tuple[jax.Array, dict[str, jax.Array]]]
PENALTY = 'penalty'


def segment_causal_mask(segment_ids: jax.Array) -> jax.Array:
  """`[batch, seq]` segment ids (0 = padding) -> bool `[batch, seq, seq]` attention mask."""
  seq = segment_ids.shape[-1]
  same = segment_ids[:, :, None] == segment_ids[:, None, :]
  causal = jnp.tril(jnp.ones((seq, seq), bool))
  return same & causal[None] & (segment_ids[:, :, None] > 0)


def compact_targets(labels: np.ndarray, weights: np.ndarray,
                    num_targets: int | None = None) -> dict[str, np.ndarray]:
  """The supervised positions of packed rows, left-aligned: what `target_positions` batches hold.

  Args:
    labels: int32 `[n, seq]`.
    weights: float32 `[n, seq]` (0: not supervised).
    num_targets: slots per row (default: the most supervised positions of any row); rows with
      more raise, since dropping targets would silently change the objective.
  Returns:
    target_positions, target_labels (int32) and target_weights (float32), each
    `[n, num_targets]`; unused slots point at position 0 with weight 0.
  """
  chex.assert_equal_shape([labels, weights])
  supervised = weights > 0
  counts = supervised.sum(axis=1)
  most = int(counts.max(initial=0))
  num_targets = most if num_targets is None else num_targets
  if most > num_targets:
    raise ValueError(f'a row has {most} supervised positions, more than num_targets='
                     f'{num_targets}')
  # A stable sort puts each row's supervised positions first, in position order.
  order = np.argsort(~supervised, axis=1, kind='stable')[:, :max(num_targets, 1)]
  slot_used = np.arange(order.shape[1])[None] < counts[:, None]
  positions = np.where(slot_used, order, 0).astype(np.int32)
  return {'target_positions': positions,
          'target_labels': np.where(slot_used, np.take_along_axis(labels, order, 1),
                                    0).astype(np.int32),
          'target_weights': np.where(slot_used, np.take_along_axis(weights, order, 1),
                                     0).astype(np.float32)}


def weighted_token_loss(logits: jax.Array, labels: jax.Array,
                        weights: jax.Array) -> dict[str, jax.Array]:
  """Sums for a token-weighted cross-entropy: loss_sum, weight_sum, correct_sum (scalars).

  Args:
    logits: `[batch, seq, vocab]` (any float dtype; computed in float32).
    labels: `[batch, seq]` int32.
    weights: `[batch, seq]` float32.
  """
  chex.assert_rank(logits, 3)
  chex.assert_equal_shape([labels, weights])
  logits = logits.astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  # The label's logit reaching the row max (ties count as hits) shares the max that the
  # cross-entropy computes anyway; argmax is a separate variadic reduce (~1% of a CPU step).
  label_logits = jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]
  correct = (label_logits >= jnp.max(logits, axis=-1)).astype(jnp.float32)
  return {'loss_sum': jnp.sum(losses * weights), 'weight_sum': jnp.sum(weights),
          'correct_sum': jnp.sum(correct * weights)}


def decoder_apply_fn(model: decoder_lib.Decoder) -> ApplyFn:
  """The ApplyFn of a decoder: logits, plus {moe_aux_loss, PENALTY} for a MoE decoder.

  Every mask this module builds is causal within segments, so the decoder may skip the key
  blocks above the diagonal (`causal=True`).
  """
  c = model.config

  def apply_fn(params, tokens, positions, mask, rng, head_positions=None):
    del rng  # the decoder has no dropout
    if not c.num_experts:
      return model.apply({'params': params}, tokens, positions, mask, causal=True,
                         head_positions=head_positions)
    logits, state = model.apply({'params': params}, tokens, positions, mask, causal=True,
                                head_positions=head_positions, mutable=['intermediates'])
    balance = moe.aux_loss(state['intermediates'])
    return logits, {moe.AUX_LOSS: balance, PENALTY: c.moe_aux_weight * balance}

  return apply_fn


def _forward_sums(apply_fn: ApplyFn, params, batch, rng) -> dict[str, Any]:
  """weighted_token_loss sums plus 'aux': each aux scalar times weight_sum."""
  mask = segment_causal_mask(batch['segment_ids'])
  if 'target_positions' in batch:
    out = apply_fn(params, batch['tokens'], batch['positions'], mask, rng,
                   head_positions=batch['target_positions'])
    labels, weights = batch['target_labels'], batch['target_weights']
  else:
    out = apply_fn(params, batch['tokens'], batch['positions'], mask, rng)
    labels, weights = batch['labels'], batch['weights']
  logits, aux = out if isinstance(out, tuple) else (out, {})
  sums = weighted_token_loss(logits, labels, weights)
  sums['aux'] = {name: value * sums['weight_sum'] for name, value in aux.items()}
  return sums


# forward_sums(params, batch, rng) -> weighted_token_loss sums, optionally with 'aux' (each aux
# scalar times weight_sum; aux[PENALTY] is added to the objective).
ForwardSums = Callable[[Any, dict[str, jax.Array], Any], dict[str, Any]]


def make_weighted_loss_step(forward_sums: ForwardSums, *,
                            axis_name: str | None = None) -> Callable:
  """`step(state, batch, rng) -> (state, metrics)` minimising the token-weighted mean loss whose
  sums `forward_sums` computes (any model: this decoder, an encoder-decoder). Metrics: loss,
  accuracy, tokens (weight sum), grad_norm and each aux scalar per token."""

  def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)

    def loss_fn(params):
      sums = forward_sums(params, batch, rng)
      return sums['loss_sum'] + sums.get('aux', {}).get(PENALTY, 0.0), sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    if axis_name is not None:
      grads, sums = jax.lax.psum((grads, sums), axis_name)
    denom = jnp.maximum(sums['weight_sum'], 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    new_state = state.apply_gradients(grads=grads)
    metrics = {'loss': sums['loss_sum'] / denom, 'accuracy': sums['correct_sum'] / denom,
               'tokens': sums['weight_sum'], 'grad_norm': optax.tree.norm(grads),
               **{name: value / denom for name, value in sums.get('aux', {}).items()}}
    return new_state, metrics

  return step


def make_weighted_loss_eval_step(forward_sums: ForwardSums, *,
                                 axis_name: str | None = None) -> Callable:
  """`eval_step(params, batch) -> sums` of `forward_sums` (psum-ed over `axis_name`)."""

  def eval_step(params: Any, batch: dict[str, jax.Array]):
    sums = forward_sums(params, batch, None)
    if axis_name is not None:
      sums = jax.lax.psum(sums, axis_name)
    return sums

  return eval_step


def make_sft_step(apply_fn: ApplyFn, *, axis_name: str | None = None) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)`, pure and un-jitted.

  Args:
    apply_fn: the model forward (see ApplyFn); `rng` is for dropout.
    axis_name: set when the step runs under pmap/shard_map over that axis: the loss and
      gradient sums are psum-ed so the update is that of the global batch.
  """
  return make_weighted_loss_step(functools.partial(_forward_sums, apply_fn),
                                 axis_name=axis_name)


def make_sft_eval_step(apply_fn: ApplyFn, *, axis_name: str | None = None) -> Callable:
  """Returns `eval_step(params, batch) -> sums` (loss_sum, weight_sum, correct_sum, aux)."""
  return make_weighted_loss_eval_step(functools.partial(_forward_sums, apply_fn),
                                      axis_name=axis_name)
