"""A Qwen2/Llama-architecture decoder-only transformer in Flax linen, with an explicit KV cache.

Blocks: RMSNorm -> grouped-query attention with RoPE (HF "rotate_half" convention, optional
q/k/v bias, no output bias) -> residual -> RMSNorm -> SwiGLU MLP -> residual; final RMSNorm;
LM head tied to the embedding or separate. Parameter names follow HF Qwen2 (embed_tokens,
layers_i/self_attn/{q,k,v,o}_proj, mlp/{gate,up,down}_proj, input_layernorm,
post_attention_layernorm, norm, lm_head), so `params_from_hf` loads a pretrained checkpoint
of the family without touching the module. Parameters are float32; `dtype` sets compute.

Two call paths share the same weights:
* training / scoring: `model.apply({'params': p}, tokens, positions, mask) -> logits` with any
  boolean attention mask `[batch, q, k]` (e.g. segment-restricted causal masks);
* decoding: `prefill` then `decode_step` with a cache pytree whose arrays carry the batch on
  axis 1 (k/v: `[layers, batch, max_len, kv_heads, head_dim]`) or 0 (`valid: [batch, max_len]`),
  so `reorder_cache` can gather rows for beam search.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Cache = dict[str, jax.Array]
_INIT = nn.initializers.normal(0.02)
NEG_INF = -1e30  # finite: keeps fully masked rows (left padding) NaN-free


@dataclasses.dataclass(frozen=True)
class DecoderConfig:
  vocab_size: int
  width: int
  depth: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  head_dim: int = 0              # 0: width // num_heads
  rope_theta: float = 1e6
  rms_eps: float = 1e-6
  qkv_bias: bool = True
  tie_embeddings: bool = True
  dtype: str = 'float32'          # compute dtype: 'float32' | 'bfloat16'

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(f'num_heads {self.num_heads} must be a multiple of num_kv_heads '
                       f'{self.num_kv_heads}')
    if not self.head_dim:
      if self.width % self.num_heads:
        raise ValueError(f'width {self.width} is not divisible by num_heads {self.num_heads}')
      object.__setattr__(self, 'head_dim', self.width // self.num_heads)

  @property
  def compute_dtype(self):
    return jnp.dtype(self.dtype)


class RMSNorm(nn.Module):
  eps: float

  @nn.compact
  def __call__(self, x):
    weight = self.param('weight', nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * weight).astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding, HF rotate_half layout. x: `[b, s, heads, d]`, positions: `[b, s]`."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  angles = positions.astype(jnp.float32)[..., None] * inv_freq        # [b, s, d/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [b, s, 1, d]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., d // 2:], x32[..., :d // 2]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


class Attention(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv=None):
    """x: `[b, s, width]`; mask: bool `[b, s, t]`; kv: optional (k_cache, v_cache, index).

    Without kv, keys are the s inputs (t == s). With kv (`[b, max_len, kv_heads, d]` each),
    the new keys/values are written at slot `index` and the query attends over all max_len
    slots (t == max_len); returns (out, (k_cache, v_cache)).
    """
    c = self.config
    dense = lambda n, bias, name: nn.Dense(n, use_bias=bias, dtype=c.compute_dtype,
                                           kernel_init=_INIT, name=name)
    b, s, _ = x.shape
    q = dense(c.num_heads * c.head_dim, c.qkv_bias, 'q_proj')(x)
    k = dense(c.num_kv_heads * c.head_dim, c.qkv_bias, 'k_proj')(x)
    v = dense(c.num_kv_heads * c.head_dim, c.qkv_bias, 'v_proj')(x)
    q = rope(q.reshape(b, s, c.num_heads, c.head_dim), positions, c.rope_theta)
    k = rope(k.reshape(b, s, c.num_kv_heads, c.head_dim), positions, c.rope_theta)
    v = v.reshape(b, s, c.num_kv_heads, c.head_dim)
    new_kv = None
    if kv is not None:
      k_cache, v_cache, index = kv
      k = jax.lax.dynamic_update_slice(k_cache, k.astype(k_cache.dtype), (0, index, 0, 0))
      v = jax.lax.dynamic_update_slice(v_cache, v.astype(v_cache.dtype), (0, index, 0, 0))
      new_kv = (k, v)
    groups = c.num_heads // c.num_kv_heads
    q = q.reshape(b, s, c.num_kv_heads, groups, c.head_dim)
    scores = jnp.einsum('bskgd,btkd->bkgst', q, k.astype(q.dtype)).astype(jnp.float32)
    scores = scores / np.sqrt(c.head_dim)
    scores = jnp.where(mask[:, None, None], scores, NEG_INF)
    probs = jax.nn.softmax(scores, axis=-1).astype(q.dtype)
    out = jnp.einsum('bkgst,btkd->bskgd', probs, v.astype(q.dtype))
    out = dense(c.width, False, 'o_proj')(out.reshape(b, s, c.num_heads * c.head_dim))
    return out, new_kv


class Mlp(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x):
    c = self.config
    dense = lambda n, name: nn.Dense(n, use_bias=False, dtype=c.compute_dtype,
                                     kernel_init=_INIT, name=name)
    return dense(c.width, 'down_proj')(nn.silu(dense(c.mlp_dim, 'gate_proj')(x)) *
                                       dense(c.mlp_dim, 'up_proj')(x))


class Block(nn.Module):
  config: DecoderConfig

  @nn.compact
  def __call__(self, x, positions, mask, kv=None):
    c = self.config
    attn, new_kv = Attention(c, name='self_attn')(
        RMSNorm(c.rms_eps, name='input_layernorm')(x), positions, mask, kv)
    x = x + attn
    x = x + Mlp(c, name='mlp')(RMSNorm(c.rms_eps, name='post_attention_layernorm')(x))
    return x, new_kv


class Decoder(nn.Module):
  """Decoder-only LM. `__call__(tokens [b, s], positions [b, s], mask [b, s, t]) -> logits`."""

  config: DecoderConfig

  @nn.compact
  def __call__(self, tokens, positions, mask, cache: Cache | None = None):
    c = self.config
    chex.assert_rank([tokens, positions], 2)
    chex.assert_rank(mask, 3)
    embed = nn.Embed(c.vocab_size, c.width, embedding_init=_INIT, name='embed_tokens')
    x = embed(tokens).astype(c.compute_dtype)
    new_k, new_v = [], []
    for i in range(c.depth):
      kv = None if cache is None else (cache['k'][i], cache['v'][i], cache['index'])
      x, layer_kv = Block(c, name=f'layers_{i}')(x, positions, mask, kv)
      if cache is not None:
        new_k.append(layer_kv[0])
        new_v.append(layer_kv[1])
    x = RMSNorm(c.rms_eps, name='norm')(x)
    if c.tie_embeddings:
      logits = embed.attend(x.astype(jnp.float32))
    else:
      logits = nn.Dense(c.vocab_size, use_bias=False, dtype=jnp.float32, kernel_init=_INIT,
                        name='lm_head')(x)
    logits = logits.astype(jnp.float32)
    if cache is None:
      return logits
    s = tokens.shape[1]
    return logits, {'k': jnp.stack(new_k), 'v': jnp.stack(new_v), 'valid': cache['valid'],
                    'index': cache['index'] + s}


def init_cache(config: DecoderConfig, batch: int, max_len: int) -> Cache:
  shape = (config.depth, batch, max_len, config.num_kv_heads, config.head_dim)
  return {'k': jnp.zeros(shape, config.compute_dtype), 'v': jnp.zeros(shape, config.compute_dtype),
          'valid': jnp.zeros((batch, max_len), bool), 'index': jnp.zeros((), jnp.int32)}


def _cache_mask(cache: Cache, steps: int) -> jax.Array:
  """`[b, steps, max_len]`: query j (slot index + j) sees valid slots up to its own."""
  max_len = cache['valid'].shape[1]
  slots = jnp.arange(max_len)
  query_slots = cache['index'] + jnp.arange(steps)
  causal = slots[None, :] <= query_slots[:, None]
  return causal[None] & cache['valid'][:, None, :]


def prefill(config: DecoderConfig, params, tokens: jax.Array, positions: jax.Array,
            mask: jax.Array, max_len: int) -> tuple[jax.Array, Cache]:
  """Reads left-padded prompts; returns next-token logits `[b, vocab]` and the cache.

  Args:
    tokens, positions: `[b, T]`; mask: bool `[b, T]` (False on padding).
    max_len: cache length (T + number of tokens to generate).
  """
  b, t = tokens.shape
  cache = init_cache(config, b, max_len)
  cache['valid'] = cache['valid'].at[:, :t].set(mask)
  logits, cache = Decoder(config).apply({'params': params}, tokens, positions,
                                        _cache_mask(cache, t), cache)
  return logits[:, -1], cache


def decode_step(config: DecoderConfig, params, cache: Cache, tokens: jax.Array,
                positions: jax.Array) -> tuple[jax.Array, Cache]:
  """Feeds one token per row (`[b]`, positions `[b]`); returns logits `[b, vocab]`, cache."""
  cache = dict(cache)
  cache['valid'] = jax.lax.dynamic_update_slice(
      cache['valid'], jnp.ones((tokens.shape[0], 1), bool), (0, cache['index']))
  logits, cache = Decoder(config).apply({'params': params}, tokens[:, None], positions[:, None],
                                        _cache_mask(cache, 1), cache)
  return logits[:, 0], cache


def reorder_cache(cache: Cache, rows: jax.Array) -> Cache:
  """Gathers cache rows (`rows`: int `[new_batch]`), e.g. to follow surviving beams."""
  return {'k': cache['k'][:, rows], 'v': cache['v'][:, rows], 'valid': cache['valid'][rows],
          'index': cache['index']}


def count_params(config: DecoderConfig) -> dict[str, int]:
  """Parameter counts from jax.eval_shape (allocates nothing)."""
  shapes = jax.eval_shape(
      lambda: Decoder(config).init(jax.random.key(0), jnp.zeros((1, 1), jnp.int32),
                                   jnp.zeros((1, 1), jnp.int32), jnp.ones((1, 1, 1), bool)))
  total = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(shapes))
  embedding = config.vocab_size * config.width * (1 if config.tie_embeddings else 2)
  return {'params': total, 'embedding_params': embedding, 'non_embedding_params': total - embedding}


def flops_per_token(config: DecoderConfig, context: int) -> dict[str, int]:
  """Forward matmul FLOPs per token (2 per multiply-add) with `context` keys per query.

  forward = 2 * (attention + MLP weights + LM head) + 2 * 2 * layers * context * heads * d
  (scores and weighted sum); training ~= 3 x forward (backward costs twice the forward).
  """
  c = config
  attn = c.width * c.head_dim * (2 * c.num_heads + 2 * c.num_kv_heads)
  mlp = 3 * c.width * c.mlp_dim
  forward = 2 * (c.depth * (attn + mlp) + c.width * c.vocab_size)
  forward += 4 * c.depth * context * c.num_heads * c.head_dim
  return {'forward_flops_per_token': forward, 'train_flops_per_token': 3 * forward}


def params_from_hf(state_dict: dict[str, Any], config: DecoderConfig) -> dict:
  """HF Qwen2/Llama tensors (names like 'model.layers.0.self_attn.q_proj.weight') -> params."""
  get = lambda name: np.asarray(state_dict[name], np.float32)
  params = {'embed_tokens': {'embedding': get('model.embed_tokens.weight')},
            'norm': {'weight': get('model.norm.weight')}}
  for i in range(config.depth):
    pre = f'model.layers.{i}.'
    attn = {}
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      attn[proj] = {'kernel': get(f'{pre}self_attn.{proj}.weight').T}
      if config.qkv_bias and proj != 'o_proj':
        attn[proj]['bias'] = get(f'{pre}self_attn.{proj}.bias')
    params[f'layers_{i}'] = {
        'self_attn': attn,
        'mlp': {p: {'kernel': get(f'{pre}mlp.{p}.weight').T}
                for p in ('gate_proj', 'up_proj', 'down_proj')},
        'input_layernorm': {'weight': get(f'{pre}input_layernorm.weight')},
        'post_attention_layernorm': {'weight': get(f'{pre}post_attention_layernorm.weight')},
    }
  if not config.tie_embeddings:
    params['lm_head'] = {'kernel': get('lm_head.weight').T}
  return params


def params_to_hf(params: dict, config: DecoderConfig) -> dict[str, np.ndarray]:
  """Inverse of `params_from_hf`."""
  out = {'model.embed_tokens.weight': params['embed_tokens']['embedding'],
         'model.norm.weight': params['norm']['weight']}
  for i in range(config.depth):
    pre, layer = f'model.layers.{i}.', params[f'layers_{i}']
    for proj, p in layer['self_attn'].items():
      out[f'{pre}self_attn.{proj}.weight'] = p['kernel'].T
      if 'bias' in p:
        out[f'{pre}self_attn.{proj}.bias'] = p['bias']
    for proj, p in layer['mlp'].items():
      out[f'{pre}mlp.{proj}.weight'] = p['kernel'].T
    out[f'{pre}input_layernorm.weight'] = layer['input_layernorm']['weight']
    out[f'{pre}post_attention_layernorm.weight'] = layer['post_attention_layernorm']['weight']
  if not config.tie_embeddings:
    out['lm_head.weight'] = params['lm_head']['kernel'].T
  return {k: np.asarray(v) for k, v in out.items()}
