"""A T5-style encoder-decoder over SID tokens (TIGER, Rajput et al. 2023), with a cached decoder.

TIGER reads a user's history as SID tokens with a bidirectional encoder and generates the next
item's SID with a decoder that cross-attends to it. Layout (T5 v1.1 without dropout):

* one token embedding `[vocab_size + num_user_buckets, width]` for encoder input, decoder input
  and (tied) LM head. Ids below vocab_size are the SID vocabulary (`sid_sequences.SidVocab`:
  PAD 0, then the SID tokens); id vocab_size + u is TIGER's hashed user token of bucket u
  (encoder input only: the head predicts the vocab_size SID-vocabulary ids alone).
* no absolute positions: each stack has one learned bias per (relative-position bucket, head)
  added to the self-attention scores of all its layers (`relative_position_bucket`:
  bidirectional buckets in the encoder, causal ones in the decoder); cross-attention has none.
* pre-RMSNorm residual blocks: encoder = self-attention, feed-forward; decoder = causal
  self-attention, cross-attention to the encoder output, feed-forward; each stack ends in an
  RMSNorm. Feed-forward: gated GELU (T5 v1.1) or ReLU (T5, TIGER). No biases anywhere.
* unlike T5, scores are scaled by head_dim ** -0.5 and weights start at N(0, 0.02) like the
  decoder-only model's, so a tied head needs no d_model ** -0.5 rescaling.

Parameters are float32, `dtype` sets the compute dtype, logits are float32.

Call paths, all on the same parameters (rows are prompt-major: with G = rows // prompts rows per
prompt, row r reads prompt r // G; G = 1 is the plain batch):
* `encode(config, params, enc_tokens, enc_mask)` -> encoder output `[b, s, width]`;
* `apply(...)` (teacher forcing: encode + `decode`) and `decode(config, params, enc_out,
  enc_mask, dec_tokens)` (teacher-forced rows over encoded prompts, each prompt's
  cross-attention keys/values computed once);
* `init_decode` -> `decode_step` per token -> `reorder_cache` to follow beams: the
  cross-attention keys/values are computed once per prompt and read by all its rows; only the
  per-row self-attention cache of the generated steps is gathered.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.models import layers
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models.decoder import RMSNorm

Params = dict[str, Any]
_INIT = nn.initializers.normal(0.02)
_MASKED = -1e30  # finite: a fully masked score row stays NaN-free
FF_KINDS = ('gated_gelu', 'relu')


@dataclasses.dataclass(frozen=True)
class EncoderDecoderConfig:
  """Architecture hyperparameters; hashable, so it can be a static jit argument.

  Attributes:
    vocab_size: the SID vocabulary (`SidVocab.vocab_size`): embedding rows and LM head outputs.
    width: model (residual stream) width.
    enc_depth, dec_depth: encoder and decoder blocks.
    num_heads: attention heads (self- and cross-attention; no grouped keys/values, as T5).
    mlp_dim: feed-forward hidden width.
    head_dim: per-head width; 0 means width // num_heads.
    num_buckets: relative-position buckets per stack (T5: 32); the encoder gives half to each
      direction, the decoder all to the past.
    max_distance: distances from which on all share the last bucket (T5: 128).
    ff: 'gated_gelu' (wo(gelu(wi_0 x) * wi_1 x), T5 v1.1) or 'relu' (wo(relu(wi x)), TIGER).
    num_user_buckets: extra embedding rows for TIGER's hashed user token (0: no user token).
    tie_embeddings: LM head = the first vocab_size embedding rows transposed.
    rms_eps: RMSNorm epsilon.
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
  """

  vocab_size: int
  width: int
  enc_depth: int
  dec_depth: int
  num_heads: int
  mlp_dim: int
  head_dim: int = 0
  num_buckets: int = 32
  max_distance: int = 128
  ff: str = 'gated_gelu'
  num_user_buckets: int = 0
  tie_embeddings: bool = True
  rms_eps: float = 1e-6
  dtype: str = 'float32'

  def __post_init__(self):
    for name in ('vocab_size', 'width', 'enc_depth', 'dec_depth', 'num_heads', 'mlp_dim'):
      if getattr(self, name) < 1:
        raise ValueError(f'EncoderDecoderConfig.{name} must be >= 1, got {getattr(self, name)}')
    if self.num_buckets < 4 or self.num_buckets % 2:
      raise ValueError(f'num_buckets must be even and >= 4, got {self.num_buckets}')
    if self.max_distance < self.num_buckets:
      raise ValueError(f'max_distance {self.max_distance} must be >= num_buckets '
                       f'{self.num_buckets} (the log buckets start at num_buckets // 2)')
    if self.ff not in FF_KINDS:
      raise ValueError(f'EncoderDecoderConfig.ff must be one of {FF_KINDS}, got {self.ff!r}')
    if self.num_user_buckets < 0:
      raise ValueError(f'num_user_buckets must be >= 0, got {self.num_user_buckets}')
    decoder_lib.check_dtype_and_head_dim(self)

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


# Named sizes. Each of tiny..L has the width and head shape of the decoder-only variant of the
# same name (variants.py), half its depth in each stack, and an MLP width (a multiple of 32)
# that matches its parameter count at the Industrial SID vocabulary (1 + 3 * 256) within 2%
# (S: 0.03%; tiger_test.py checks), for comparisons at equal parameters. 'tiger' is the
# paper's model: 4 + 4 layers, 6 heads of 64, width 128, ReLU MLP 1024, 2000 hashed user
# buckets (its dropout 0.1 is not modelled).
VARIANTS = {
    'tiny': dict(width=32, enc_depth=1, dec_depth=1, num_heads=2, mlp_dim=32),
    'XS': dict(width=128, enc_depth=1, dec_depth=1, num_heads=2, mlp_dim=256),
    'S': dict(width=256, enc_depth=2, dec_depth=2, num_heads=4, mlp_dim=448),
    'M': dict(width=384, enc_depth=2, dec_depth=2, num_heads=6, mlp_dim=576),
    'L': dict(width=512, enc_depth=3, dec_depth=3, num_heads=8, mlp_dim=832),
    'tiger': dict(width=128, enc_depth=4, dec_depth=4, num_heads=6, head_dim=64, mlp_dim=1024,
                  ff='relu', num_user_buckets=2000),
}


def encoder_decoder_config(variant: str, vocab_size: int, **overrides) -> EncoderDecoderConfig:
  """The named variant's config with `overrides` (any EncoderDecoderConfig field) applied.

  Raises:
    ValueError: unknown variant or field, or an inconsistent result.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown encoder-decoder variant {variant!r}; choose one of '
                     f'{sorted(VARIANTS)}')
  known = {f.name for f in dataclasses.fields(EncoderDecoderConfig)} - {'vocab_size'}
  unknown = set(overrides) - known
  if unknown:
    raise ValueError(f'unknown encoder-decoder fields {sorted(unknown)}; known: {sorted(known)}')
  return EncoderDecoderConfig(vocab_size=vocab_size, **{**VARIANTS[variant], **overrides})


# ---------------------------------------------------------------------------------------------
# Relative positions.


@functools.lru_cache(maxsize=None)
def _distance_buckets(num_buckets: int, max_distance: int) -> np.ndarray:
  """int32 `[max_distance + 1]`: the bucket of each distance n >= 0 within `num_buckets`.

  The first e = num_buckets // 2 buckets are exact (bucket n for n < e); the other m buckets
  split [e, max_distance) logarithmically: n >= e goes to e + floor(m * log(n / e) /
  log(max_distance / e)), capped at num_buckets - 1. That floor is the largest j with
  (max_distance / e) ** j <= (n / e) ** m, i.e. max_distance ** j * e ** (m - j) <= n ** m,
  which is decided here in exact integer arithmetic (floating-point logs can land just below
  an integer at the bucket edges).
  """
  exact = num_buckets // 2
  m = num_buckets - exact
  table = np.empty(max_distance + 1, np.int32)
  for n in range(max_distance + 1):
    if n < exact:
      table[n] = n
    else:
      j = max(j for j in range(m + 1) if max_distance ** j * exact ** (m - j) <= n ** m)
      table[n] = min(exact + j, num_buckets - 1)
  return table


def relative_position_bucket(relative_position: jax.Array, *, bidirectional: bool,
                             num_buckets: int, max_distance: int) -> jax.Array:
  """T5's relative-position buckets of `key position - query position` (int, any shape).

  Bidirectional (encoder): half the buckets for keys at or before the query, half (offset by
  num_buckets // 2) for keys after it, each split by `_distance_buckets` of |distance|.
  Causal (decoder): all buckets for keys at or before the query; later keys (never attended)
  share bucket 0 with distance 0.

  Returns:
    int32 buckets in [0, num_buckets), the shape of `relative_position`.
  """
  relative_position = jnp.asarray(relative_position, jnp.int32)
  if bidirectional:
    half = num_buckets // 2
    table = jnp.asarray(_distance_buckets(half, max_distance))
    offset = jnp.where(relative_position > 0, half, 0)
    distance = jnp.abs(relative_position)
  else:
    table = jnp.asarray(_distance_buckets(num_buckets, max_distance))
    offset = 0
    distance = jnp.maximum(-relative_position, 0)
  return offset + table[jnp.minimum(distance, max_distance)]


class RelativeBias(nn.Module):
  """A learned score bias per (bucket, head), shared by every layer of a stack."""

  config: EncoderDecoderConfig
  bidirectional: bool

  @nn.compact
  def __call__(self, relative_position: jax.Array) -> jax.Array:
    """int `[q, k]` key minus query positions -> float32 bias `[heads, q, k]`."""
    c = self.config
    table = self.param('embedding', _INIT, (c.num_buckets, c.num_heads))
    buckets = relative_position_bucket(relative_position, bidirectional=self.bidirectional,
                                       num_buckets=c.num_buckets, max_distance=c.max_distance)
    return jnp.moveaxis(table[buckets], -1, 0)


# ---------------------------------------------------------------------------------------------
# Layers.


def attend(q: jax.Array, k: jax.Array, v: jax.Array, bias: jax.Array | None,
           mask: jax.Array) -> jax.Array:
  """Multi-head attention on projected heads, scores and softmax in float32.

  Args:
    q: `[b, s, heads, head_dim]`.
    k, v: `[b, t, heads, head_dim]`.
    bias: float32 `[heads, s, t]` added to every row's scores, or None.
    mask: bool `[b or 1, s or 1, t]`: True where query i may attend to key j.
  Returns:
    `[b, s, heads, head_dim]` in q's dtype.
  """
  scores = jnp.einsum('bshd,bthd->bhst', q, k,
                      preferred_element_type=jnp.float32) * q.shape[-1] ** -0.5
  if bias is not None:
    scores = scores + bias[None]
  scores = jnp.where(mask[:, None], scores, _MASKED)
  weights = jax.nn.softmax(scores, axis=-1)
  return jnp.einsum('bhst,bthd->bshd', weights.astype(q.dtype), v)


def attend_grouped(q: jax.Array, k: jax.Array, v: jax.Array, key_valid: jax.Array) -> jax.Array:
  """Cross-attention of prompt-major rows to their prompt's keys/values, stored once per prompt.

  Args:
    q: `[rows, s, heads, head_dim]`, G = rows // prompts rows per prompt.
    k, v: `[prompts, t, heads, head_dim]`.
    key_valid: bool `[prompts, t]`, False on the prompts' padding.
  Returns:
    `[rows, s, heads, head_dim]`: with no bias and a mask of the keys alone, a prompt's G * s
    queries are one query block over its keys.
  """
  rows, s, heads, head_dim = q.shape
  prompts = k.shape[0]
  grouped = q.reshape(prompts, rows // prompts * s, heads, head_dim)
  out = attend(grouped, k.astype(q.dtype), v.astype(q.dtype), None, key_valid[:, None, :])
  return out.reshape(rows, s, heads, head_dim)


def _dense(config: EncoderDecoderConfig, features: int, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=False, dtype=config.compute_dtype, kernel_init=_INIT,
                  name=name)


class Attention(nn.Module):
  """q/k/v/o projections; the attention itself is `attend` / `attend_grouped`."""

  config: EncoderDecoderConfig

  def setup(self):
    c = self.config
    features = c.num_heads * c.head_dim
    self.q = _dense(c, features, 'q')
    self.k = _dense(c, features, 'k')
    self.v = _dense(c, features, 'v')
    self.o = _dense(c, c.width, 'o')

  def _heads(self, layer, x):
    c = self.config
    return layers.on_rows(layer, x).reshape(*x.shape[:-1], c.num_heads, c.head_dim)

  def queries(self, x: jax.Array) -> jax.Array:
    """`[b, s, width]` -> `[b, s, heads, head_dim]`."""
    return self._heads(self.q, x)

  def keys_values(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[b, t, width]` -> (k, v), each `[b, t, heads, head_dim]`."""
    return self._heads(self.k, x), self._heads(self.v, x)

  def output(self, heads: jax.Array) -> jax.Array:
    """`[b, s, heads, head_dim]` -> `[b, s, width]`."""
    return layers.on_rows(self.o, heads.reshape(*heads.shape[:-2], -1))

  def __call__(self, x, bias, mask):
    """Self-attention of `x [b, s, width]` (bias `[heads, s, s]`, mask as `attend`)."""
    k, v = self.keys_values(x)
    return self.output(attend(self.queries(x), k, v, bias, mask))


class FeedForward(nn.Module):
  """Gated GELU (wi_0, wi_1, wo) or ReLU (wi, wo), by `config.ff`."""

  config: EncoderDecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    if c.ff == 'gated_gelu':
      hidden = (jax.nn.gelu(_dense(c, c.mlp_dim, 'wi_0')(x), approximate=True)
                * _dense(c, c.mlp_dim, 'wi_1')(x))
    else:
      hidden = jax.nn.relu(_dense(c, c.mlp_dim, 'wi')(x))
    return _dense(c, c.width, 'wo')(hidden)


class EncoderBlock(nn.Module):
  """x + self_attn(norm(x)), then + ff(norm(x))."""

  config: EncoderDecoderConfig

  @nn.compact
  def __call__(self, x, bias, mask):
    c = self.config
    x = x + Attention(c, name='self_attn')(RMSNorm(c.rms_eps, name='self_attn_norm')(x), bias,
                                           mask)
    h = RMSNorm(c.rms_eps, name='ff_norm')(x)
    return x + layers.on_rows(FeedForward(c, name='ff'), h)


class DecoderBlock(nn.Module):
  """x + self_attn(norm(x)) (causal, cached when decoding), + cross_attn(norm(x)), + ff."""

  config: EncoderDecoderConfig

  def setup(self):
    c = self.config
    self.self_attn_norm = RMSNorm(c.rms_eps)
    self.self_attn = Attention(c)
    self.cross_attn_norm = RMSNorm(c.rms_eps)
    self.cross_attn = Attention(c)
    self.ff_norm = RMSNorm(c.rms_eps)
    self.ff = FeedForward(c)

  def cross_keys_values(self, enc_out: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`[prompts, S, width]` -> cross-attention (k, v), each `[prompts, S, heads, head_dim]`."""
    return self.cross_attn.keys_values(enc_out)

  def __call__(self, x, bias, mask, cross_k, cross_v, enc_mask, cache=None, index=None):
    """One decoder block.

    Args:
      x: `[rows, s, width]`.
      bias: float32 `[heads, s, t]` self-attention position bias.
      mask: bool `[1, s, t]` self-attention mask.
      cross_k, cross_v: `[prompts, S, heads, head_dim]` (`cross_keys_values`).
      enc_mask: bool `[prompts, S]`.
      cache: None (then t == s: the s tokens attend among themselves), or this layer's
        self-attention (k, v), each `[rows, t, heads, head_dim]`: the s new keys/values are
        written at slots index..index+s-1 and the queries attend over all t slots.
      index: int32 scalar, the first slot written (with `cache`).
    Returns:
      (`[rows, s, width]`, None or the updated (k, v)).
    """
    h = self.self_attn_norm(x)
    k, v = self.self_attn.keys_values(h)
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache[0], k.astype(cache[0].dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache[1], v.astype(cache[1].dtype), (0, index, 0, 0))
      cache = (k, v)
    q = self.self_attn.queries(h)
    x = x + self.self_attn.output(attend(q, k.astype(q.dtype), v.astype(q.dtype), bias, mask))
    h = self.cross_attn_norm(x)
    x = x + self.cross_attn.output(attend_grouped(self.cross_attn.queries(h), cross_k, cross_v,
                                                  enc_mask))
    return x + layers.on_rows(self.ff, self.ff_norm(x)), cache


class EncoderDecoder(nn.Module):
  """The model. `__call__(enc_tokens [b, s], enc_mask [b, s], dec_tokens [b, t])` returns
  teacher-forced float32 logits `[b, t, vocab_size]`; the other methods are the pieces the
  module-level functions call (see the module docstring)."""

  config: EncoderDecoderConfig

  def setup(self):
    c = self.config
    self.embedding = self.param('embedding', _INIT, (c.vocab_size + c.num_user_buckets, c.width))
    self.encoder_bias = RelativeBias(c, bidirectional=True)
    self.encoder_layers = [EncoderBlock(c) for _ in range(c.enc_depth)]
    self.encoder_norm = RMSNorm(c.rms_eps)
    self.decoder_bias = RelativeBias(c, bidirectional=False)
    self.decoder_layers = [DecoderBlock(c) for _ in range(c.dec_depth)]
    self.decoder_norm = RMSNorm(c.rms_eps)
    if not c.tie_embeddings:
      self.lm_head = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32, kernel_init=_INIT)

  def _embed(self, tokens):
    return self.embedding[tokens].astype(self.config.compute_dtype)

  def _logits(self, x):
    # The final norm and the head run in float32 whatever the compute dtype.
    x = self.decoder_norm(x.astype(jnp.float32))
    if self.config.tie_embeddings:
      head = lambda rows: rows @ self.embedding[:self.config.vocab_size].T
    else:
      head = self.lm_head
    return layers.on_rows(head, x).astype(jnp.float32)

  def encode(self, enc_tokens, enc_mask):
    """`[b, s]` tokens and bool mask -> `[b, s, width]` (compute dtype)."""
    s = enc_tokens.shape[1]
    positions = jnp.arange(s)
    bias = self.encoder_bias(positions[None, :] - positions[:, None])
    x = self._embed(enc_tokens)
    mask = enc_mask[:, None, :]  # padding queries attend too; nothing reads them
    for layer in self.encoder_layers:
      x = layer(x, bias, mask)
    return self.encoder_norm(x)

  def cross_keys_values(self, enc_out):
    """`[prompts, S, width]` -> (k, v), each `[dec_depth, prompts, S, heads, head_dim]`."""
    kv = [layer.cross_keys_values(enc_out) for layer in self.decoder_layers]
    return jnp.stack([k for k, _ in kv]), jnp.stack([v for _, v in kv])

  def decode(self, enc_out, enc_mask, dec_tokens):
    """Teacher-forced logits `[rows, t, vocab]` of prompt-major rows `dec_tokens [rows, t]`."""
    t = dec_tokens.shape[1]
    positions = jnp.arange(t)
    bias = self.decoder_bias(positions[None, :] - positions[:, None])
    mask = jnp.tril(jnp.ones((t, t), bool))[None]
    cross_k, cross_v = self.cross_keys_values(enc_out)
    x = self._embed(dec_tokens)
    for i, layer in enumerate(self.decoder_layers):
      x, _ = layer(x, bias, mask, cross_k[i], cross_v[i], enc_mask)
    return self._logits(x)

  def step(self, tokens, index, k, v, cross_k, cross_v, enc_mask):
    """One cached decoder step: tokens `[rows]` at position `index` -> (logits `[rows, vocab]`,
    k, v); k, v `[dec_depth, rows, T, heads, head_dim]` with slot `index` written."""
    slots = jnp.arange(k.shape[2])
    bias = self.decoder_bias((slots - index)[None, :])
    mask = (slots <= index)[None, None, :]
    x = self._embed(tokens[:, None])
    new_k, new_v = [], []
    for i, layer in enumerate(self.decoder_layers):
      x, (ki, vi) = layer(x, bias, mask, cross_k[i], cross_v[i], enc_mask, (k[i], v[i]), index)
      new_k.append(ki)
      new_v.append(vi)
    return self._logits(x)[:, 0], jnp.stack(new_k), jnp.stack(new_v)

  def __call__(self, enc_tokens, enc_mask, dec_tokens):
    return self.decode(self.encode(enc_tokens, enc_mask), enc_mask, dec_tokens)


# ---------------------------------------------------------------------------------------------
# Functional API.


def _check_encoder_inputs(enc_tokens, enc_mask) -> None:
  chex.assert_rank([enc_tokens, enc_mask], 2)
  chex.assert_equal_shape([enc_tokens, enc_mask])
  chex.assert_type(enc_mask, bool)


def encode(config: EncoderDecoderConfig, params: Params, enc_tokens: jax.Array,
           enc_mask: jax.Array) -> jax.Array:
  """Encoder output `[b, s, width]` (compute dtype) of tokens `[b, s]`, bool mask `[b, s]`
  (False on padding; every row needs a real token)."""
  _check_encoder_inputs(enc_tokens, enc_mask)
  return EncoderDecoder(config).apply({'params': params}, enc_tokens, enc_mask,
                                      method=EncoderDecoder.encode)


def decode(config: EncoderDecoderConfig, params: Params, enc_out: jax.Array,
           enc_mask: jax.Array, dec_tokens: jax.Array) -> jax.Array:
  """Teacher-forced float32 logits `[rows, t, vocab]`.

  Args:
    enc_out: `[prompts, S, width]` from `encode`.
    enc_mask: bool `[prompts, S]`.
    dec_tokens: int `[rows, t]` decoder inputs (start token first), prompt-major with
      rows // prompts rows per prompt.
  """
  chex.assert_rank([enc_out, dec_tokens], [3, 2])
  chex.assert_type(enc_mask, bool)
  if dec_tokens.shape[0] % enc_out.shape[0]:
    raise ValueError(f'{dec_tokens.shape[0]} decoder rows are not a multiple of '
                     f'{enc_out.shape[0]} prompts')
  return EncoderDecoder(config).apply({'params': params}, enc_out, enc_mask, dec_tokens,
                                      method=EncoderDecoder.decode)


def apply(config: EncoderDecoderConfig, params: Params, enc_tokens: jax.Array,
          enc_mask: jax.Array, dec_tokens: jax.Array) -> jax.Array:
  """Teacher-forced float32 logits `[b, t, vocab]` (`dec_tokens [b, t]`, start token first)."""
  _check_encoder_inputs(enc_tokens, enc_mask)
  chex.assert_rank(dec_tokens, 2)
  chex.assert_equal_shape_prefix([enc_tokens, dec_tokens], 1)
  return EncoderDecoder(config).apply({'params': params}, enc_tokens, enc_mask, dec_tokens)


def init_params(config: EncoderDecoderConfig, rng: jax.Array) -> Params:
  """Fresh parameters."""
  ones = jnp.ones((1, 1), jnp.int32)
  return EncoderDecoder(config).init(rng, ones, jnp.ones((1, 1), bool), ones)['params']


@flax.struct.dataclass
class DecodeCache:
  """The incremental decoder's state: a pytree (jit, lax.scan).

  Attributes:
    k, v: `[dec_depth, rows, max_steps, heads, head_dim]` self-attention keys/values of the
      fed steps (rows on axis 1, prompt-major), compute dtype.
    cross_k, cross_v: `[dec_depth, prompts, S, heads, head_dim]` cross-attention keys/values,
      once per prompt.
    enc_mask: bool `[prompts, S]`.
  """

  k: jax.Array
  v: jax.Array
  cross_k: jax.Array
  cross_v: jax.Array
  enc_mask: jax.Array


def init_decode(config: EncoderDecoderConfig, params: Params, enc_out: jax.Array,
                enc_mask: jax.Array, rows_per_prompt: int, max_steps: int) -> DecodeCache:
  """An empty decoder cache for `rows_per_prompt` rows per prompt (static).

  Args:
    enc_out: `[prompts, S, width]` from `encode`.
    enc_mask: bool `[prompts, S]`.
    rows_per_prompt: G; row r continues prompt r // G.
    max_steps: tokens each row will be fed (the start token included; static).
  """
  chex.assert_rank([enc_out, enc_mask], [3, 2])
  chex.assert_type(enc_mask, bool)
  if rows_per_prompt < 1 or max_steps < 1:
    raise ValueError(f'rows_per_prompt {rows_per_prompt} and max_steps {max_steps} must be >= 1')
  cross_k, cross_v = EncoderDecoder(config).apply({'params': params}, enc_out,
                                                  method=EncoderDecoder.cross_keys_values)
  shape = (config.dec_depth, enc_out.shape[0] * rows_per_prompt, max_steps, config.num_heads,
           config.head_dim)
  zeros = jnp.zeros(shape, config.compute_dtype)
  return DecodeCache(k=zeros, v=zeros, cross_k=cross_k.astype(config.compute_dtype),
                     cross_v=cross_v.astype(config.compute_dtype), enc_mask=enc_mask)


def decode_step(config: EncoderDecoderConfig, params: Params, cache: DecodeCache,
                tokens: jax.Array, step: int | jax.Array) -> tuple[jax.Array, DecodeCache]:
  """Feeds decoder token number `step` (0: the start token) of every row.

  Every row must have been fed steps 0..step-1, and step < max_steps: a write past the end is
  clamped by `dynamic_update_slice` (it would overwrite the last slot), which jit cannot check.

  Args:
    cache: from `init_decode` or an earlier `decode_step` / `reorder_cache`.
    tokens: int `[rows]`.
    step: int32 scalar (may be traced).
  Returns:
    (float32 next-token logits `[rows, vocab]`, the updated cache).
  """
  chex.assert_rank(tokens, 1)
  chex.assert_axis_dimension(tokens, 0, cache.k.shape[1])
  logits, k, v = EncoderDecoder(config).apply(
      {'params': params}, tokens, jnp.asarray(step, jnp.int32), cache.k, cache.v, cache.cross_k,
      cache.cross_v, cache.enc_mask, method=EncoderDecoder.step)
  return logits, cache.replace(k=k, v=v)


def reorder_cache(cache: DecodeCache, rows: jax.Array) -> DecodeCache:
  """Gathers the per-row cache (`rows`: int `[new_rows]`), e.g. to follow surviving beams.

  The per-prompt cross-attention keys/values stay as they are, so `rows` must keep the result
  prompt-major: row r of the result continues a row of prompt r // (new_rows / prompts).
  """
  return cache.replace(k=cache.k[:, rows], v=cache.v[:, rows])


# ---------------------------------------------------------------------------------------------
# Size and cost.


def abstract_params(config: EncoderDecoderConfig) -> Params:
  """The parameter tree as `jax.ShapeDtypeStruct`s (jax.eval_shape: allocates nothing)."""
  return jax.eval_shape(lambda: init_params(config, jax.random.key(0)))


def count_params(config: EncoderDecoderConfig) -> dict[str, int]:
  """Parameter counts, with the keys of `decoder.count_params`.

  Returns:
    {'params': total, 'embedding_params': the embedding (user rows included) plus a separate
     LM head if any, 'non_embedding_params': the rest, 'active_non_embedding_params': the same
     (dense model)}.
  """
  shapes = abstract_params(config)
  size = lambda x: int(np.prod(x.shape))
  total = sum(size(x) for x in jax.tree.leaves(shapes))
  embedding = size(shapes['embedding'])
  if not config.tie_embeddings:
    embedding += size(shapes['lm_head']['kernel'])
  rest = total - embedding
  return {'params': total, 'embedding_params': embedding, 'non_embedding_params': rest,
          'active_non_embedding_params': rest}


def flops_per_token(config: EncoderDecoderConfig, enc_len: int, dec_len: int) -> dict[str, int]:
  """Matmul FLOPs (2 per multiply-add) per encoder token and per target (decoder) token.

  With A = width * heads * head_dim (one projection) and F = 2 or 3 feed-forward matrices:
    encoder token = 2 * enc_depth * (4 A + F width mlp_dim)       # q, k, v, o; feed-forward
                    + 4 * enc_depth * enc_len * heads * head_dim  # scores and values
                    + 2 * dec_depth * 2 A                         # its cross-attention k, v
    target token  = 2 * dec_depth * (6 A + F width mlp_dim)       # self q,k,v,o; cross q, o
                    + 2 * width * vocab_size                      # LM head
                    + 4 * dec_depth * (dec_len + enc_len) * heads * head_dim
  Attention counts every key of the sequence, as `decoder.flops_per_token` does; norms,
  softmax, position biases and embedding lookups are ignored. Training ~= 3 x forward. An
  example of E encoder and T target tokens costs E * per-encoder-token + T * per-target-token,
  to be set against the decoder-only model's (E + T) * its per-token cost at E + T tokens.

  Returns:
    {'forward_flops_per_enc_token', 'forward_flops_per_target_token',
     'train_flops_per_enc_token', 'train_flops_per_target_token',
     'train_flops_per_example'} (the last for enc_len encoder and dec_len target tokens).
  """
  c = config
  proj = c.width * c.num_heads * c.head_dim
  ff = (3 if c.ff == 'gated_gelu' else 2) * c.width * c.mlp_dim
  enc = 2 * c.enc_depth * (4 * proj + ff) + 4 * c.enc_depth * enc_len * c.num_heads * c.head_dim
  enc += 2 * c.dec_depth * 2 * proj
  dec = 2 * c.dec_depth * (6 * proj + ff) + 2 * c.width * c.vocab_size
  dec += 4 * c.dec_depth * (dec_len + enc_len) * c.num_heads * c.head_dim
  return {'forward_flops_per_enc_token': enc, 'forward_flops_per_target_token': dec,
          'train_flops_per_enc_token': 3 * enc, 'train_flops_per_target_token': 3 * dec,
          'train_flops_per_example': 3 * (enc_len * enc + dec_len * dec)}
