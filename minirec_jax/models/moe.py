"""A mixture-of-experts SwiGLU MLP: top-k routing, slot dispatch, load-balancing loss.

Routing: a float32 linear router scores the experts; each token keeps its top k experts, and
its gates are their softmax probabilities renormalised to sum to 1.

Dispatch: every sequence row is routed on its own, so a row's output never depends on the
other rows (or beams) of the batch, and data-parallel sharding of the batch axis never moves
tokens between devices. Each expert has `capacity` slots per row; a row's choices claim them in
order, all first choices before any second choice, then by position, and a choice past
capacity is dropped (that expert adds nothing for the token; the residual still carries it).
The slots are gathered into `[batch, experts, capacity, width]`, all experts run at once as
einsums over stacked weights `[experts, width, mlp]`, and each token gathers its k outputs
back, weighted by its gates.

Cost: the experts compute every slot, filled or not. `capacity_factor` f > 0 gives
capacity = ceil(f * k * seq / experts), about f times the active (k-expert) FLOPs. f = 0 is
dropless (capacity = seq): exact and independent of how tokens compete, at the price of a
dense all-experts compute (experts / k times the active FLOPs), which is fine for a handful of
experts. Slot dispatch was chosen over a one-hot dense combine because the same code covers
both regimes; a ragged (grouped-GEMM) dispatch would be dropless and proportional, but
`jax.lax.ragged_dot` lowers to a dense masked product on CPU, and XLA:GPU's default expansion
pads it the same way unless a grouped-GEMM backend takes the shape.

The Switch/GShard load-balancing loss, experts * sum_e fraction_e * mean_prob_e over the real
tokens (fraction_e: share of the top-k choices that picked expert e, before capacity), is 1 for
a uniform router and experts / k, its maximum, for a collapsed one. The module sows it as
`intermediates/.../moe_aux_loss`; `aux_loss` averages the sown values over layers.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
from flax import traverse_util
import jax
import jax.numpy as jnp

from minirec_jax.models import layers

AUX_LOSS = 'moe_aux_loss'
EXPERT_PARAMS = ('gate_proj', 'up_proj', 'down_proj')


def expert_capacity(seq_len: int, num_experts: int, experts_per_token: int,
                    capacity_factor: float) -> int:
  """Slots per expert and row: all seq_len tokens when capacity_factor is 0 (dropless)."""
  if capacity_factor <= 0:
    return seq_len
  return min(seq_len, math.ceil(capacity_factor * experts_per_token * seq_len / num_experts))


def top_k_gates(probs: jax.Array, k: int) -> tuple[jax.Array, jax.Array]:
  """Router probabilities `[..., E]` -> (gates `[..., k]` summing to 1, experts int `[..., k]`)."""
  top, experts = jax.lax.top_k(probs, k)
  return top / jnp.sum(top, axis=-1, keepdims=True), experts


def dispatch_slots(experts: jax.Array, valid: jax.Array, num_experts: int,
                   capacity: int) -> tuple[jax.Array, jax.Array]:
  """Assigns one row's choices to expert slots.

  Args:
    experts: int `[seq, k]`, the chosen experts of each token.
    valid: bool `[seq]`, False on padding (which takes no slot).
    num_experts: E.
    capacity: slots per expert, C.
  Returns:
    (slot_token int `[E, C]`: the token in each slot, seq where empty;
     choice_slot int `[seq, k]`: flat slot (e * C + position) of each choice, E * C where
     dropped).
  """
  seq, k = experts.shape
  chosen = experts.T.reshape(-1)  # [k * seq]: rank-major, so first choices claim slots first
  real = jnp.tile(valid, k)
  hits = jax.nn.one_hot(chosen, num_experts, dtype=jnp.int32) * real[:, None]
  position = jnp.sum(jnp.cumsum(hits, axis=0) * hits, axis=-1) - 1
  kept = real & (position < capacity)
  slot = jnp.where(kept, chosen * capacity + position, num_experts * capacity)
  slot_token = jnp.full((num_experts * capacity,), seq, jnp.int32).at[slot].set(
      jnp.tile(jnp.arange(seq, dtype=jnp.int32), k), mode='drop')
  return slot_token.reshape(num_experts, capacity), slot.reshape(k, seq).T


def load_balancing_loss(probs: jax.Array, experts: jax.Array, valid: jax.Array) -> jax.Array:
  """Switch/GShard auxiliary loss over the real tokens (float32 scalar).

  Args:
    probs: float32 `[..., E]` router probabilities.
    experts: int `[..., k]` chosen experts.
    valid: bool `[...]`, False on padding tokens (ignored).
  """
  num_experts, k = probs.shape[-1], experts.shape[-1]
  weight = valid.astype(jnp.float32)[..., None]
  count = jnp.maximum(jnp.sum(weight), 1.0)
  picks = jnp.sum(jax.nn.one_hot(experts, num_experts, dtype=jnp.float32), axis=-2)
  fraction = jnp.sum(picks * weight, axis=tuple(range(picks.ndim - 1))) / (k * count)
  mean_prob = jnp.sum(probs * weight, axis=tuple(range(probs.ndim - 1))) / count
  return num_experts * jnp.sum(fraction * mean_prob)


def aux_loss(intermediates: dict[str, Any]) -> jax.Array:
  """Mean over MoE layers of the losses sown into an `apply(..., mutable=['intermediates'])`."""
  losses = [loss for path, sown in traverse_util.flatten_dict(intermediates).items()
            if path[-1] == AUX_LOSS for loss in sown]
  if not losses:
    raise ValueError(f'no {AUX_LOSS!r} among the intermediates: is the model a MoE?')
  return jnp.mean(jnp.stack(losses))


class MoeMlp(nn.Module):
  """SwiGLU experts behind a top-k router (see the module docstring).

  Parameters: router/kernel `[width, E]`, gate_proj and up_proj `[E, width, mlp]`,
  down_proj `[E, mlp, width]`, all float32, no biases.
  """

  num_experts: int
  experts_per_token: int
  mlp_dim: int
  capacity_factor: float
  dtype: Any
  kernel_init: Callable[..., jax.Array]

  @nn.compact
  def __call__(self, x: jax.Array, valid: jax.Array) -> jax.Array:
    """`x [batch, seq, width]`, `valid` bool `[batch, seq]` -> `[batch, seq, width]`."""
    b, s, width = x.shape
    e, k = self.num_experts, self.experts_per_token
    logits = nn.Dense(e, use_bias=False, dtype=jnp.float32, kernel_init=self.kernel_init,
                      name='router')(x.astype(jnp.float32))
    probs = jax.nn.softmax(logits, axis=-1)
    gates, experts = top_k_gates(probs, k)
    self.sow('intermediates', AUX_LOSS, load_balancing_loss(probs, experts, valid))

    capacity = expert_capacity(s, e, k, self.capacity_factor)
    slot_token, choice_slot = jax.vmap(dispatch_slots, in_axes=(0, 0, None, None))(
        experts, valid, e, capacity)
    # Empty slots gather, and dropped choices read back, an extra all-zero row.
    rows = jnp.concatenate([x, jnp.zeros((b, 1, width), x.dtype)], axis=1)
    slots = jax.vmap(lambda r, idx: r[idx])(rows, slot_token).astype(self.dtype)

    def weight(name, shape):
      return self.param(name, self.kernel_init, shape, jnp.float32).astype(self.dtype)

    gate = weight('gate_proj', (e, width, self.mlp_dim))
    up = weight('up_proj', (e, width, self.mlp_dim))
    down = weight('down_proj', (e, self.mlp_dim, width))
    hidden = layers.swiglu(jnp.einsum('becd,edf->becf', slots, gate),
                           jnp.einsum('becd,edf->becf', slots, up))
    out = jnp.einsum('becf,efd->becd', hidden, down).reshape(b, e * capacity, width)
    out = jnp.concatenate([out, jnp.zeros((b, 1, width), out.dtype)], axis=1)
    picked = jax.vmap(lambda r, idx: r[idx])(out, choice_slot)  # [b, s, k, width]
    return jnp.einsum('bsk,bskd->bsd', gates, picked.astype(jnp.float32)).astype(x.dtype)
