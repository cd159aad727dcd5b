"""A Qwen2/Llama-architecture decoder-only transformer in Flax linen, with an explicit KV cache.

Blocks: RMSNorm -> grouped-query attention with RoPE (HF "rotate_half" convention, optional
q/k/v bias, no output bias) -> residual -> RMSNorm -> SwiGLU MLP (or, with `num_experts`, a
mixture of SwiGLU experts: see moe.py) -> residual; final RMSNorm; LM head tied to the
embedding or separate. Parameter names follow HF Qwen2 (embed_tokens,
layers_i/self_attn/{q,k,v,o}_proj, mlp/{gate,up,down}_proj, input_layernorm,
post_attention_layernorm, norm, lm_head), so hf_convert.py loads a pretrained checkpoint of the
family without touching the module. Parameters are float32; `dtype` sets the compute dtype;
logits are always float32. The attention kernels themselves are in attention.py.
`output_rows` restricts the head to some vocabulary rows (e.g. a language model's SID and
terminator tokens): only those rows are scored, the others get `UNSCORED_LOGIT`, so every
softmax over the output renormalises over those rows at a fraction of the head's cost.

Two call paths share the same weights:
* training / scoring: `Decoder(config).apply({'params': p}, tokens, positions, mask)` with any
  boolean attention mask `[batch, q, k]` (segment-restricted or windowed causal masks; see
  `causal_mask` for plain causal attention over left-padded rows);
* decoding: `prefill` then `decode_step`, with the cache a `KVCache` pytree (k, v, valid and a
  write index shared by all rows: left padding, not per-row offsets, absorbs different prompt
  lengths). `reorder_cache` gathers its rows, e.g. to follow beams.
* decoding many rows per prompt (beams, samples, GRPO candidates): `prefill_shared` keeps each
  prompt's keys/values once, in the cache's prefix fields, next to a per-row cache of only the
  generated slots. Rows are prompt-major (row r continues prompt r // (rows / prompts));
  attention reads the prefix without copying it per row, and `reorder_cache` moves only the
  per-row part. Same numbers as `prefill` with the prompt repeated per row, for a fraction of
  the memory traffic.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.models import attention
from minirec_jax.models import layers
from minirec_jax.models import moe

Params = dict[str, Any]
_INIT = nn.initializers.normal(0.02)
_COMPUTE_DTYPES = ('float32', 'bfloat16')
# The logit of a row `output_rows` leaves out: finite, so that log-softmax outputs, sums of them
# and p * log p (= 0) stay finite, and low enough that exp() of it underflows to 0.
UNSCORED_LOGIT = -1e9


def check_dtype_and_head_dim(config) -> None:
  """Shared by the model configs' checks: a known compute dtype, and head_dim 0 resolved to
  width // num_heads (set on the frozen dataclass `config`)."""
  name = type(config).__name__
  if config.dtype not in _COMPUTE_DTYPES:
    raise ValueError(f'{name}.dtype must be one of {_COMPUTE_DTYPES}, got {config.dtype!r}')
  if not config.head_dim:
    if config.width % config.num_heads:
      raise ValueError(f'width {config.width} is not divisible by num_heads '
                       f'{config.num_heads}; set head_dim explicitly')
    object.__setattr__(config, 'head_dim', config.width // config.num_heads)


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  """Architecture hyperparameters; hashable, so it can be a static jit argument.

  Attributes:
    vocab_size: rows of the token embedding (and LM head outputs).
    width: model (residual stream) width, HF `hidden_size`.
    depth: number of blocks, HF `num_hidden_layers`.
    num_heads: query heads.
    num_kv_heads: key/value heads (grouped-query attention); must divide num_heads.
    mlp_dim: SwiGLU hidden width, HF `intermediate_size`.
    head_dim: per-head width; 0 means width // num_heads.
    rope_theta: RoPE base (Qwen2: 1e6, Llama 2: 1e4).
    rms_eps: RMSNorm epsilon.
    qkv_bias: whether q/k/v projections have a bias (Qwen2 yes, Llama no).
    tie_embeddings: LM head = embedding transposed (no separate lm_head parameter).
    dtype: compute dtype, 'float32' or 'bfloat16' (parameters stay float32).
    max_len: longest sequence (positions and cache length) the model is meant for, HF
      `max_position_embeddings`; `init_cache` refuses longer caches.
    num_experts: 0 for the dense SwiGLU MLP; E > 0 replaces it with E SwiGLU experts of width
      mlp_dim behind a top-k router (moe.py).
    experts_per_token: k, the experts each token is routed to (MoE only).
    moe_aux_weight: weight of the load-balancing loss in the training loss (MoE only).
    moe_capacity_factor: 0 routes without dropping tokens; f > 0 caps each expert at
      ceil(f * k * seq / E) tokens per row in training/scoring calls (cached decoding calls
      never drop tokens).
    output_rows: sorted vocabulary ids the LM head scores; () scores all. The others' logits
      are UNSCORED_LOGIT: the model's distribution is a softmax over these rows only (e.g. SID
      tokens and the terminator for SID-only targets: 770 of SmolLM2's 49,920 rows).
  """

  vocab_size: int
  width: int
  depth: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  head_dim: int = 0
  rope_theta: float = 1e6
  rms_eps: float = 1e-6
  qkv_bias: bool = True
  tie_embeddings: bool = True
  dtype: str = 'float32'
  max_len: int = 32768
  num_experts: int = 0
  experts_per_token: int = 2
  moe_aux_weight: float = 0.01
  moe_capacity_factor: float = 0.0
  output_rows: tuple[int, ...] = ()

  def __post_init__(self):
    for name in ('vocab_size', 'width', 'depth', 'num_heads', 'num_kv_heads', 'mlp_dim',
                 'max_len'):
      if getattr(self, name) < 1:
        raise ValueError(f'DecoderConfig.{name} must be >= 1, got {getattr(self, name)}')
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} must be a multiple of num_kv_heads '
                       f'{self.num_kv_heads}')
    check_dtype_and_head_dim(self)
    if self.head_dim % 2:
      raise ValueError(f'head_dim must be even for RoPE, got {self.head_dim}')
    for name in ('num_experts', 'moe_aux_weight', 'moe_capacity_factor'):
      if getattr(self, name) < 0:
        raise ValueError(f'DecoderConfig.{name} must be >= 0, got {getattr(self, name)}')
    if self.num_experts and not 1 <= self.experts_per_token <= self.num_experts:
      raise ValueError(f'DecoderConfig.experts_per_token must be in [1, num_experts='
                       f'{self.num_experts}], got {self.experts_per_token}')
    rows = self.output_rows
    if rows and (list(rows) != sorted(set(rows)) or rows[0] < 0 or rows[-1] >= self.vocab_size):
      raise ValueError(f'DecoderConfig.output_rows must be sorted unique ids in [0, vocab_size='
                       f'{self.vocab_size}), got {len(rows)} ids from {min(rows)} to '
                       f'{max(rows)}')

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)


class RMSNorm(nn.Module):
  """y = x / rms(x) * weight, computed in float32, returned in x's dtype."""

  eps: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * weight).astype(x.dtype)


def rope_tables(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
  """Rotary-embedding tables, computed once per forward pass and shared by every layer.

  Args:
    positions: int `[batch, seq]`.
    head_dim: even head size d.
    theta: RoPE base.
  Returns:
    (cos, signed_sin), float32 `[batch, seq, 1, d]`; signed_sin carries rotate_half's sign
    (-sin on the first half), so `apply_rope` is two products and a half swap.
  """
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq        # [b, s, d/2]
  cos, sin = jnp.cos(angles), jnp.sin(angles)
  tables = (jnp.concatenate([cos, cos], axis=-1)[:, :, None, :],
            jnp.concatenate([-sin, sin], axis=-1)[:, :, None, :])

  return tables


def apply_rope(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotary embedding in the HF rotate_half layout (pairs dims i and i + d/2).

  Args:
    x: `[batch, seq, heads, head_dim]`.
    tables: `rope_tables(positions, head_dim, theta)`.
  Returns:
    `x` rotated, same shape and dtype (computed in float32).
  """
  cos, signed_sin = tables
  half = x.shape[-1] // 2
  x32 = x.astype(jnp.float32)
  swapped = jnp.concatenate([x32[..., half:], x32[..., :half]], axis=-1)
  return (x32 * cos + swapped * signed_sin).astype(x.dtype)


def _dense(config: DecoderConfig, features: int, bias: bool, name: str) -> nn.Dense:
  return nn.Dense(features, use_bias=bias, dtype=config.compute_dtype, kernel_init=_INIT,
                  name=name)


@flax.struct.dataclass
class LayerCache:
  """One layer's view of a `KVCache`, as `Attention` reads and updates it.

  Attributes:
    k, v: `[batch, max_len, kv_heads, head_dim]`, the rows' own slots.
    index: int32 scalar, the first slot the call writes.
    prefix_k, prefix_v: `[prompts, T, kv_heads, head_dim]` shared prompt keys/values, or None.
    prefix_valid: bool `[prompts, T]`, or None.
  """

  k: jax.Array
  v: jax.Array
  index: jax.Array
  prefix_k: jax.Array | None = None
  prefix_v: jax.Array | None = None
  prefix_valid: jax.Array | None = None


@flax.struct.dataclass
class KVCache:
  """The decoder's key/value cache for `prefill` / `decode_step`: a pytree (jit, lax.scan).

  Attributes:
    k, v: `[layers, batch, max_len, kv_heads, head_dim]` (batch on axis 1), in the compute
      dtype.
    valid: bool `[batch, max_len]`, True on slots that hold a real token (batch on axis 0).
    index: int32 scalar, the next slot to write, shared by all rows.
    prefix_k, prefix_v: None, or (`prefill_shared`) each prompt's keys/values stored once,
      `[layers, prompts, T, kv_heads, head_dim]`, read by every row of the prompt; rows are
      prompt-major and k, v, valid then hold only the generated slots.
    prefix_valid: None, or bool `[prompts, T]`, False on the prompts' left padding.
  """

  k: jax.Array
  v: jax.Array
  valid: jax.Array
  index: jax.Array
  prefix_k: jax.Array | None = None
  prefix_v: jax.Array | None = None
  prefix_valid: jax.Array | None = None

  def layer(self, i: int) -> LayerCache:
    """Layer i's view, what `Attention` reads."""
    if self.prefix_k is None:
      return LayerCache(self.k[i], self.v[i], self.index)
    return LayerCache(self.k[i], self.v[i], self.index, self.prefix_k[i], self.prefix_v[i],
                      self.prefix_valid)


class Attention(nn.Module):
  """Grouped-query self-attention with RoPE; optionally reads and writes a KV cache."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x, rope, mask, cache: LayerCache | None = None, causal=False):
    """Attends `x` to itself, or to the cache when `cache` is given.

    Args:
      x: `[b, s, width]`.
      rope: `rope_tables` of the s tokens' positions.
      mask: bool `[b, s, t]`, True where query i may attend to key j (with a shared prefix:
        over the rows' own slots only; every query sees every valid prefix slot).
      cache: None (then t == s), or this layer's cache: the s new keys/values are written at
        slots index..index+s-1 and the queries attend over all t == max_len slots (and the
        shared prefix, if any).
      causal: without `cache`, a promise that `mask` never lets query i see a key j > i; the
        key blocks above the diagonal are then skipped (`attention.CAUSAL_QUERY_BLOCK`).
    Returns:
      (`[b, s, width]`, None or the updated `LayerCache`).
    """
    c = self.config
    b, s, _ = x.shape
    q = layers.on_rows(_dense(c, c.num_heads * c.head_dim, c.qkv_bias, 'q_proj'), x)
    k = layers.on_rows(_dense(c, c.num_kv_heads * c.head_dim, c.qkv_bias, 'k_proj'), x)
    v = layers.on_rows(_dense(c, c.num_kv_heads * c.head_dim, c.qkv_bias, 'v_proj'), x)
    q = apply_rope(q.reshape(b, s, c.num_heads, c.head_dim), rope)
    k = apply_rope(k.reshape(b, s, c.num_kv_heads, c.head_dim), rope)
    v = v.reshape(b, s, c.num_kv_heads, c.head_dim)
    if cache is not None:
      k = jax.lax.dynamic_update_slice(cache.k, k.astype(cache.k.dtype), (0, cache.index, 0, 0))
      v = jax.lax.dynamic_update_slice(cache.v, v.astype(cache.v.dtype), (0, cache.index, 0, 0))
      cache = cache.replace(k=k, v=v)
    if cache is not None and cache.prefix_k is not None:
      out = attention.attend_with_prefix(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                         cache.prefix_k, cache.prefix_v, cache.prefix_valid)
    else:
      out = attention.attend_by_kv_head(q, k.astype(q.dtype), v.astype(q.dtype), mask,
                                        causal=causal and cache is None)
    out = out.reshape(b, s, c.num_heads * c.head_dim)
    out = layers.on_rows(_dense(c, c.width, False, 'o_proj'), out)
    return out, cache


class Mlp(nn.Module):
  """SwiGLU: down(silu(gate(x)) * up(x)), no biases."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    hidden = layers.swiglu(_dense(c, c.mlp_dim, False, 'gate_proj')(x),
                           _dense(c, c.mlp_dim, False, 'up_proj')(x))
    return _dense(c, c.width, False, 'down_proj')(hidden)


class Block(nn.Module):
  """Pre-norm residual block: x + attn(norm(x)), then + mlp(norm(x))."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, x, rope, mask, cache: LayerCache | None = None, causal=False):
    """`x [b, s, width]` -> (`[b, s, width]`, None or the updated cache); as `Attention`."""
    c = self.config
    attn, cache = Attention(c, name='self_attn')(
        RMSNorm(c.rms_eps, name='input_layernorm')(x), rope, mask, cache, causal)
    x = x + attn
    h = RMSNorm(c.rms_eps, name='post_attention_layernorm')(x)
    if not c.num_experts:
      return x + layers.on_rows(Mlp(c, name='mlp'), h), cache
    # Cached (decoding) calls never drop tokens, so generation is exact whatever the
    # training capacity. A token is real iff it may attend somewhere: every mask built here
    # lets a real token see itself and gives padding an all-False row.
    capacity_factor = c.moe_capacity_factor if cache is None else 0.0
    mlp = moe.MoeMlp(c.num_experts, c.experts_per_token, c.mlp_dim, capacity_factor,
                     c.compute_dtype, _INIT, name='mlp')
    return x + mlp(h, jnp.any(mask, axis=-1)), cache


class HeadKernel(nn.Module):
  """An untied LM head's kernel `[width, vocab]`, with nn.Dense's parameter name and init (so
  HF's lm_head maps onto it), returned rather than applied: the head may score some rows only."""

  shape: tuple[int, int]

  @nn.compact
  def __call__(self) -> jax.Array:
    return self.param('kernel', _INIT, self.shape, jnp.float32)


class Decoder(nn.Module):
  """Decoder-only LM.

  `__call__(tokens [b, s], positions [b, s], mask [b, s, t] | None, cache=None, causal=False,
  head_positions=None, hidden_only=False)` returns float32 logits `[b, s, vocab]` (with
  `head_positions` int32 `[b, n]`: only at those positions, `[b, n, vocab]`; a language model's
  prompt tokens need no logits, and its head is the largest matrix), or `(logits, cache)` when a
  cache is given (use `prefill` and `decode_step` rather than passing a cache directly), or with
  `hidden_only` the final-normed hidden states float32 `[b, s, width]` (text embeddings; no head,
  no cache). `mask=None` means plain
  causal attention over the s tokens (no padding). `causal=True` promises that `mask` is
  causal (no query sees a later key; e.g. `causal_mask`, segment-causal packing masks), so the
  cache-free path skips the key blocks above the diagonal; a non-causal mask would then be
  silently cut to its causal part.
  """

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens, positions, mask=None, cache: KVCache | None = None,
               causal: bool = False, head_positions: jax.Array | None = None,
               hidden_only: bool = False):
    c = self.config
    if hidden_only and cache is not None:
      raise ValueError('hidden_only runs without a cache')
    chex.assert_rank([tokens, positions], 2)
    chex.assert_equal_shape([tokens, positions])
    b, s = tokens.shape
    if mask is None:
      if cache is not None:
        raise ValueError('decoding with a cache needs an explicit mask (see prefill)')
      mask = jnp.broadcast_to(jnp.tril(jnp.ones((s, s), bool)), (b, s, s))
      causal = True
    chex.assert_rank(mask, 3)
    chex.assert_type(mask, bool)
    embed = nn.Embed(c.vocab_size, c.width, embedding_init=_INIT, name='embed_tokens')
    x = embed(tokens).astype(c.compute_dtype)
    rope = rope_tables(positions, c.head_dim, c.rope_theta)
    new_k, new_v = [], []
    for i in range(c.depth):
      layer = None if cache is None else cache.layer(i)
      x, layer = Block(c, name=f'layers_{i}')(x, rope, mask, layer, causal)
      if cache is not None:
        new_k.append(layer.k)
        new_v.append(layer.v)
    if head_positions is not None:
      chex.assert_rank(head_positions, 2)
      x = jnp.take_along_axis(x, head_positions[..., None], axis=1)
    # The final norm and the LM head run in float32 whatever the compute dtype.
    x = RMSNorm(c.rms_eps, name='norm')(x.astype(jnp.float32))
    if hidden_only:
      return x
    # [vocab, width]: one row per output token.
    head = embed.embedding if c.tie_embeddings else HeadKernel(
        (c.width, c.vocab_size), name='lm_head')().T
    if c.output_rows:
      rows = np.asarray(c.output_rows, np.int32)
      scored = layers.on_rows(lambda h: h @ head[rows].T, x)
      logits = jnp.full((*x.shape[:-1], c.vocab_size), UNSCORED_LOGIT,
                        jnp.float32).at[..., rows].set(scored)
    else:
      logits = layers.on_rows(lambda h: h @ head.T, x)
    if cache is None:
      return logits
    return logits, cache.replace(k=jnp.stack(new_k), v=jnp.stack(new_v), index=cache.index + s)


def causal_mask(valid: jax.Array) -> jax.Array:
  """Causal attention over rows with (left) padding.

  Args:
    valid: bool `[batch, seq]`, False on padding tokens.
  Returns:
    bool `[batch, seq, seq]`: query i sees key j iff j <= i and key j is valid.
  """
  chex.assert_rank(valid, 2)
  s = valid.shape[1]
  return jnp.tril(jnp.ones((s, s), bool))[None] & valid[:, None, :].astype(bool)


def init_cache(config: DecoderConfig, batch: int, max_len: int) -> KVCache:
  """An empty cache of `batch` rows and `max_len` slots (no prefix), in the compute dtype."""
  if not 1 <= max_len <= config.max_len:
    raise ValueError(f'cache length {max_len} must be in [1, config.max_len={config.max_len}]')
  shape = (config.depth, batch, max_len, config.num_kv_heads, config.head_dim)
  return KVCache(k=jnp.zeros(shape, config.compute_dtype), v=jnp.zeros(shape, config.compute_dtype),
                 valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


def _cache_mask(cache: KVCache, steps: int) -> jax.Array:
  """`[b, steps, max_len]`: query j (slot index + j) sees valid slots up to its own."""
  max_len = cache.valid.shape[1]
  slots = jnp.arange(max_len)
  query_slots = cache.index + jnp.arange(steps)
  causal = slots[None, :] <= query_slots[:, None]
  return causal[None] & cache.valid[:, None, :]


def prefill(config: DecoderConfig, params: Params, tokens: jax.Array, positions: jax.Array,
            mask: jax.Array, max_len: int) -> tuple[jax.Array, KVCache]:
  """Reads left-padded prompts into a fresh cache.

  Args:
    config: the model config (static under jit).
    params: the decoder parameters.
    tokens: int `[b, T]` prompts, left-padded.
    positions: int `[b, T]` per-row positions (0 at each row's first real token; any value on
      padding).
    mask: bool `[b, T]`, False on padding.
    max_len: cache length, T + the number of tokens to be generated (static under jit).
  Returns:
    (float32 next-token logits `[b, vocab]`, the cache with `index == T`).
  """
  chex.assert_rank([tokens, positions, mask], 2)
  chex.assert_equal_shape([tokens, positions, mask])
  b, t = tokens.shape
  if max_len < t:
    raise ValueError(f'cache length {max_len} is shorter than the prompts ({t} tokens)')
  cache = init_cache(config, b, max_len)
  cache = cache.replace(valid=cache.valid.at[:, :t].set(mask.astype(bool)))
  logits, cache = Decoder(config).apply({'params': params}, tokens, positions,
                                        _cache_mask(cache, t), cache)
  return logits[:, -1], cache


def prefill_shared(config: DecoderConfig, params: Params, tokens: jax.Array,
                   positions: jax.Array, mask: jax.Array, gen_len: int
                   ) -> tuple[jax.Array, KVCache]:
  """Reads left-padded prompts once, for decoding several rows per prompt.

  Args:
    config, params, tokens, positions, mask: as `prefill` (prompts `[b, T]`).
    gen_len: generated slots per row (static under jit).
  Returns:
    (float32 next-token logits `[b, vocab]`, a `KVCache` with the prompts as its prefix and
    `b` rows of gen_len empty slots; `reorder_cache(cache, rows)` then makes any prompt-major
    number of rows.)
  """
  logits, cache = prefill(config, params, tokens, positions, mask, max_len=tokens.shape[1])
  own = init_cache(config, tokens.shape[0], gen_len)
  return logits, own.replace(prefix_k=cache.k, prefix_v=cache.v, prefix_valid=cache.valid)


def decode_step(config: DecoderConfig, params: Params, cache: KVCache, tokens: jax.Array,
                positions: jax.Array) -> tuple[jax.Array, KVCache]:
  """Feeds one token per row at cache slot `cache.index`.

  The caller must keep `cache.index < max_len`: a write past the end is clamped by
  `dynamic_update_slice` (it would overwrite the last slot), which cannot be checked in jit.

  Args:
    config: the model config (static under jit).
    params: the decoder parameters.
    cache: from `prefill` or an earlier `decode_step`.
    tokens: int `[b]`.
    positions: int `[b]`, each row's position of this token.
  Returns:
    (float32 logits `[b, vocab]` for the next token, the updated cache).
  """
  chex.assert_rank([tokens, positions], 1)
  chex.assert_equal_shape([tokens, positions])
  cache = cache.replace(valid=jax.lax.dynamic_update_slice(
      cache.valid, jnp.ones((tokens.shape[0], 1), bool), (0, cache.index)))
  logits, cache = Decoder(config).apply({'params': params}, tokens[:, None], positions[:, None],
                                        _cache_mask(cache, 1), cache)
  return logits[:, 0], cache


def reorder_cache(cache: KVCache, rows: jax.Array) -> KVCache:
  """Gathers cache rows (`rows`: int `[new_batch]`), e.g. to follow surviving beams.

  A shared prefix (`prefill_shared`) stays as it is: with it, `rows` must keep the rows
  prompt-major (row r of the result continues a row of prompt r // (new_batch / prompts)).
  """
  return cache.replace(k=cache.k[:, rows], v=cache.v[:, rows], valid=cache.valid[rows])


def abstract_params(config: DecoderConfig) -> Params:
  """The parameter tree as `jax.ShapeDtypeStruct`s (jax.eval_shape: allocates nothing)."""
  ones = jnp.ones((1, 1), jnp.int32)
  return jax.eval_shape(lambda: Decoder(config).init(jax.random.key(0), ones, ones)['params'])


def count_params(config: DecoderConfig) -> dict[str, int]:
  """Parameter counts from `abstract_params`.

  Returns:
    {'params': total, 'embedding_params': the embedding table plus a separate LM head if any,
     'non_embedding_params': the rest (the Kaplan et al. scaling-law N),
     'active_non_embedding_params': those a token uses: a MoE layer counts its router and
       experts_per_token of its num_experts experts (equal to non_embedding_params if dense)}.
  """
  shapes = abstract_params(config)
  size = lambda x: int(np.prod(x.shape))
  total = sum(size(x) for x in jax.tree.leaves(shapes))
  embedding = size(shapes['embed_tokens']['embedding'])
  if not config.tie_embeddings:
    embedding += size(shapes['lm_head']['kernel'])
  idle = 0  # parameters of the experts a token is not routed to
  if config.num_experts:
    experts = sum(size(shapes[f'layers_{i}']['mlp'][name])
                  for i in range(config.depth) for name in moe.EXPERT_PARAMS)
    idle = experts // config.num_experts * (config.num_experts - config.experts_per_token)
  return {'params': total, 'embedding_params': embedding, 'non_embedding_params': total - embedding,
          'active_non_embedding_params': total - embedding - idle}


def flops_per_token(config: DecoderConfig, seq_len: int) -> dict[str, int]:
  """Matmul FLOPs per token (2 per multiply-add) for sequences of `seq_len` tokens.

  forward = 2 * (depth * (width * head_dim * (2 * heads + 2 * kv_heads)   # q, k, v, o
                          + 3 * width * mlp_dim)                           # gate, up, down
                 + width * vocab)              # LM head (vocab = len(output_rows) if set)
            + 2 * 2 * depth * seq_len * heads * head_dim   # scores q.k and probs.v
  The attention term counts all seq_len keys per query, like PaLM's appendix-B formula (the
  `causal=True` path computes only about 3/4 of them at 2 query blocks, so MFU measured with it
  overstates the useful work slightly: attention is 8% of model S forward FLOPs at seq_len 128,
  so by ~2%). Norms, RoPE,
  softmax and the embedding lookup are ignored. Training ~= 3 x forward (the backward pass
  costs twice the forward).

  A MoE MLP counts its active work, width * num_experts (router) + experts_per_token *
  3 * width * mlp_dim. The slot dispatch computes every slot, filled or not: about
  moe_capacity_factor times that expert term, or num_experts / experts_per_token times it when
  dropless (see moe.py).

  Returns:
    {'forward_flops_per_token', 'train_flops_per_token', 'train_head_flops_per_token'}: the
    last is the LM head's share of the training FLOPs, which a step that computes logits only
    at its target positions (`head_positions`) spends on those alone.
  """
  c = config
  attn = c.width * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = 3 * c.width * c.mlp_dim
  if c.num_experts:
    mlp = c.width * c.num_experts + c.experts_per_token * mlp
  head_rows = len(c.output_rows) or c.vocab_size
  forward = 2 * (c.depth * (attn + mlp) + c.width * head_rows)
  forward += 4 * c.depth * seq_len * c.num_heads * c.head_dim
  return {'forward_flops_per_token': forward, 'train_flops_per_token': 3 * forward,
          'train_head_flops_per_token': 3 * 2 * c.width * head_rows}
