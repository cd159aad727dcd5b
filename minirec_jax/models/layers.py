"""Layers and helpers shared by the models."""

from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp


def on_rows(layer: Callable[[jax.Array], jax.Array], x: jax.Array) -> jax.Array:
  """Applies a position-wise layer to `x [..., d]` as one `[rows, d]` matrix.

  XLA:CPU runs the backward pass of a dense layer on a 3-D `[b, s, d]` input markedly slower
  than on the same rows as a 2-D matrix (the kernel gradient contracts two axes).
  """
  return layer(x.reshape(-1, x.shape[-1])).reshape(*x.shape[:-1], -1)


@jax.custom_vjp
def swiglu(gate: jax.Array, up: jax.Array) -> jax.Array:
  """silu(gate) * up, elementwise (any matching shapes).

  Its backward is written by hand to read gate, up and the incoming gradient once and recompute
  the sigmoid: autodiff keeps silu(gate) as a residual and spends two more full passes over
  these `[tokens, mlp_dim]` arrays, the largest activations of the model.
  """
  return _swiglu_fwd(gate, up)[0]


def _swiglu_fwd(gate, up):
  return jax.nn.silu(gate) * up, (gate, up)


def _swiglu_bwd(residuals, d_out):
  # The barrier keeps XLA from sharing sigmoid(gate) with the forward pass, which would
  # materialise it and split the forward product into two passes.
  gate, up = jax.lax.optimization_barrier(residuals)
  sig = jax.nn.sigmoid(gate)
  d_up = d_out * gate * sig
  d_gate = d_out * up * sig * (1 + gate * (1 - sig))
  return d_gate, d_up


swiglu.defvjp(_swiglu_fwd, _swiglu_bwd)


def _fmix32(h: jax.Array) -> jax.Array:
  """murmur3's 32-bit finalizer: a bijective avalanche mix of uint32 values."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def hash_keep_mask(rng: jax.Array, shape: tuple[int, ...], keep_prob: float) -> jax.Array:
  """bool `shape`, True with probability `keep_prob` per element, from a counter-based hash.

  Each element hashes its flat index with two 32-bit seeds drawn from `rng`, so masks of
  different calls (different rngs) are independent and the whole thing fuses into one loop.
  """
  seeds = jax.random.bits(rng, (2,), jnp.uint32)
  index = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    index = index + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride)
    stride *= shape[axis]
  if stride > 2**32:
    raise ValueError(f'hash dropout supports < 2**32 elements per call, got shape {shape}')
  bits = _fmix32(_fmix32(index * jnp.uint32(0x9E3779B9) + seeds[0]) ^ seeds[1])
  threshold = min(int(round((1.0 - keep_prob) * 2.0**32)), 2**32 - 1)
  return bits >= jnp.uint32(threshold)


class Dropout(nn.Module):
  """Inverted dropout with masks from `hash_keep_mask` ('hash') or `nn.Dropout` ('jax').

  The hash masks (two rounds of the murmur3 finalizer over the element index, keyed by 64 bits
  drawn from the flax 'dropout' rng) fuse into the surrounding elementwise code; on CPU that is
  far cheaper than `jax.random.bernoulli`, which otherwise costs more than SASRec's matmuls.
  """

  rate: float
  rng_kind: str = 'hash'

  @nn.compact
  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    if self.rng_kind == 'jax':
      return nn.Dropout(self.rate)(x, deterministic=deterministic)
    if deterministic or self.rate == 0.0:
      return x
    keep_prob = 1.0 - self.rate
    keep = hash_keep_mask(self.make_rng('dropout'), x.shape, keep_prob)
    return jnp.where(keep, x / keep_prob, jnp.zeros_like(x))

