"""SASRec (self-attentive sequential recommendation) in two configurations, as a linen module.

Architectures (`SASRecConfig.architecture`):

* 'official' — MiniOneRec's `sasrec.py` / `SASRecModules_ori.py`: item + learned
  position embeddings, `seq = dropout(emb + pos) * mask`; per block `q = LN1(seq)`, attention
  with Q from `q` and K, V from `seq` (scale 1/sqrt(hidden), key + causal masks, query mask,
  dropout on the weights), residual `+ q`, then `FFN(LN2(.))` with its own residual +
  LayerNorm, `* mask`; a final LN3; a separate Linear(hidden -> num_items) scores items.
  Initialisation as in torch: item embeddings N(0, 0.01^2), position embeddings N(0, 1),
  Linear/Conv1d weights and biases U(+-1/sqrt(fan_in)), LayerNorm eps 1e-5.
* 'recbole' — RecBole 1.2.1 SASRec: input `dropout(LN(emb + pos))` (LayerNorm first, then
  dropout, as RecBole's forward does), post-LN transformer layers (multi-head attention with
  key + causal masks -> dense -> dropout -> LN(. + x); FFN dense -> GELU (erf) -> dense ->
  dropout -> LN(. + x)), items scored by the dot product with the item embedding table (tied).
  Every Linear/Embedding weight N(0, 0.02^2), biases 0, LayerNorm eps 1e-12.

Histories come as the input pipeline makes them: `[batch, H]` item ids, oldest first,
left-aligned, anything at positions >= `history_len` is padding (the pipeline writes -1). The
module maps padding to its own pad row (index `num_items`) and masks it; the pad item never
gets a score. The representation of a history is the last block's output at position
`history_len - 1`. Because every layer after attention is position-wise, `encode` runs the
last block for that one query position only, and moves the key and value projections onto
that query (`Attention._one_query`): the same numbers as `encode_all(...)[len - 1]` for well
under half the compute.

Training batches come packed (`minirec_jax.data.sasrec_packing.Packed`: several short histories
per row, each computed exactly as alone).

Dropout masks: `dropout_rng='hash'` (default) uses `layers.Dropout`'s counter-based hash; 'jax'
uses flax's `nn.Dropout`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp

from minirec_jax.data import sasrec_packing
from minirec_jax.models import layers

ARCHITECTURES = ('official', 'recbole')

# Hyperparameters of the two configurations (everything except the catalogue and history size).
PRESETS = {
    'official': dict(architecture='official', hidden=32, num_blocks=1, num_heads=1, inner=32,
                     dropout=0.3, attn_dropout=0.3, layer_norm_eps=1e-5, activation='relu'),
    'recbole': dict(architecture='recbole', hidden=64, num_blocks=2, num_heads=2, inner=256,
                    dropout=0.5, attn_dropout=0.5, layer_norm_eps=1e-12, activation='gelu'),
}
_NEG = -1e9  # masked attention scores (the official code fills -2**32+1, RecBole adds -1e4)


@dataclasses.dataclass(frozen=True)
class SASRecConfig:
  """Static model description (hashable: usable as a jit static argument)."""

  num_items: int
  max_len: int                # position-embedding rows = the longest history the model reads
  architecture: str = 'recbole'
  hidden: int = 64
  num_blocks: int = 2
  num_heads: int = 2
  inner: int = 256            # FFN width
  dropout: float = 0.5        # embeddings and hidden states
  attn_dropout: float = 0.5   # attention weights
  layer_norm_eps: float = 1e-12
  activation: str = 'gelu'    # 'gelu' (exact, erf) | 'relu'
  dropout_rng: str = 'hash'   # 'hash' (fast counter hash) | 'jax' (flax nn.Dropout)

  def __post_init__(self):
    if self.architecture not in ARCHITECTURES:
      raise ValueError(f'unknown SASRec architecture {self.architecture!r}; '
                       f'choose one of {ARCHITECTURES}')
    if self.hidden % self.num_heads:
      raise ValueError(f'hidden {self.hidden} is not divisible by num_heads {self.num_heads}')
    if self.dropout_rng not in ('hash', 'jax'):
      raise ValueError(f"dropout_rng must be 'hash' or 'jax', not {self.dropout_rng!r}")
    if self.activation not in ('gelu', 'relu'):
      raise ValueError(f"activation must be 'gelu' or 'relu', not {self.activation!r}")
    if self.num_items < 1 or self.max_len < 1 or self.num_blocks < 1:
      raise ValueError(f'bad sizes: num_items={self.num_items}, max_len={self.max_len}, '
                       f'num_blocks={self.num_blocks}')

  @property
  def pad_id(self) -> int:
    return self.num_items


def make_config(variant: str, num_items: int, max_len: int, **overrides) -> SASRecConfig:
  """The 'official' or 'recbole' preset for a catalogue, with optional field overrides."""
  if variant not in PRESETS:
    raise ValueError(f'unknown SASRec variant {variant!r}; choose one of {sorted(PRESETS)}')
  return SASRecConfig(num_items=num_items, max_len=max_len, **{**PRESETS[variant], **overrides})


def count_params(config: SASRecConfig) -> int:
  shapes = jax.eval_shape(lambda rng: init_params(config, rng), jax.random.key(0))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def _torch_uniform(fan_in: int) -> Callable:
  """torch's default Linear/Conv1d init for weights and biases: U(-1/sqrt(fan_in), +...)."""
  bound = 1.0 / math.sqrt(fan_in)
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def _dense(config: SASRecConfig, features: int, fan_in: int, name: str) -> nn.Dense:
  if config.architecture == 'official':
    init = _torch_uniform(fan_in)
    return nn.Dense(features, kernel_init=init, bias_init=init, name=name)
  return nn.Dense(features, kernel_init=nn.initializers.normal(0.02),
                  bias_init=nn.initializers.zeros, name=name)


def _gelu(x: jax.Array) -> jax.Array:
  """RecBole's exact GELU, x * (1 + erf(x / sqrt 2)) / 2 (cheaper on CPU than erfc)."""
  return x * 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


def _layer_norm(config: SASRecConfig, name: str) -> nn.LayerNorm:
  return nn.LayerNorm(epsilon=config.layer_norm_eps, use_fast_variance=False, name=name)



class Attention(nn.Module):
  """Multi-head attention of queries `[b, q, d]` over keys/values `[b, k, d]`.

  `scale_by_width`: the official code divides scores by sqrt(hidden) rather than sqrt(head).
  """

  config: SASRecConfig
  scale_by_width: bool

  def setup(self):
    d = self.config.hidden
    self.query = _dense(self.config, d, d, 'query')
    self.key = _dense(self.config, d, d, 'key')
    self.value = _dense(self.config, d, d, 'value')
    self.drop = layers.Dropout(self.config.attn_dropout, self.config.dropout_rng)

  def _weights(self, scores: jax.Array, mask: jax.Array, query_mask: jax.Array | None,
               deterministic: bool) -> jax.Array:
    """Masked softmax of `[b, h, q, k]` scores, times `query_mask` `[b, q]`, with dropout."""
    scale = math.sqrt(self.config.hidden // (1 if self.scale_by_width else self.config.num_heads))
    weights = jax.nn.softmax(jnp.where(mask[:, None], scores / scale, _NEG), axis=-1)
    if query_mask is not None:
      weights = weights * query_mask[:, None, :, None]
    return self.drop(weights, deterministic=deterministic)

  def __call__(self, queries: jax.Array, keys: jax.Array, mask: jax.Array,
               query_mask: jax.Array | None, deterministic: bool,
               key_rows: jax.Array | None = None) -> jax.Array:
    """Attention output `[b, q, d]`.

    Args:
      queries: `[b, q, d]`.
      keys: `[b, k, d]`, or `[r, k, d]` packed rows when `key_rows` `[b]` says which row
        each query (then q == 1) reads.
      mask: bool `[b, q, k]`.
      query_mask: float `[b, q]` multiplying the attention weights, or None.
      deterministic: no dropout.
      key_rows: see `keys`.
    """
    b, q, d = queries.shape
    h = self.config.num_heads
    split = lambda x: x.reshape(x.shape[0], x.shape[1], h, d // h)
    qh = split(layers.on_rows(self.query, queries))
    if key_rows is not None:
      return self._one_query(qh, keys, key_rows, mask, query_mask, deterministic)
    kh, vh = split(layers.on_rows(self.key, keys)), split(layers.on_rows(self.value, keys))
    weights = self._weights(jnp.einsum('bqhc,bkhc->bhqk', qh, kh), mask, query_mask,
                            deterministic)
    return jnp.einsum('bhqk,bkhc->bqhc', weights, vh).reshape(b, q, d)

  def _one_query(self, qh: jax.Array, rows: jax.Array, key_rows: jax.Array, mask: jax.Array,
                 query_mask: jax.Array | None, deterministic: bool) -> jax.Array:
    """One query per sample `qh [b, 1, h, c]` over packed rows `[r, k, d]` -> `[b, 1, d]`.

    K and V are linear in the rows, so the query goes through the key projection instead
    (q . (x Wk + bk) = (q Wk^T) . x + q . bk, where q . bk is the same for every key and
    cancels in the softmax) and the weights average the raw rows before the
    value projection (sum_k w_k (x_k Wv + bv) = (sum_k w_k x_k) Wv + (sum_k w_k) bv): the
    same numbers without projecting every position of every row (8% of a MovieLens step).
    The per-head projections are single matmuls with block-diagonal `[h*c, h*d]` matrices,
    which XLA:CPU runs faster than the batched-over-heads form.
    """
    b, _, h, c = qh.shape
    if self.is_initializing():  # the shortcut reads the kernels: create them first
      self.key(rows[:1, 0])
      self.value(rows[:1, 0])
    key_kernel = self.key.variables['params']['kernel']
    value = self.value.variables['params']
    eye = jnp.eye(h, dtype=qh.dtype)
    key_blocks = jnp.einsum('dhc,hg->hcgd', key_kernel.reshape(-1, h, c), eye)
    value_blocks = jnp.einsum('dhc,hg->hdgc', value['kernel'].reshape(-1, h, c), eye)
    q = qh.reshape(b, h * c)
    x = jnp.take(rows, key_rows, axis=0)                                      # [b, k, d]
    q_key = (q @ key_blocks.reshape(h * c, -1)).reshape(b, h, -1)             # [b, h, d]
    scores = jnp.einsum('bhd,bkd->bhk', q_key, x)
    weights = self._weights(scores[:, :, None], mask, query_mask, deterministic)[:, :, 0]
    mixed = jnp.einsum('bhk,bkd->bhd', weights, x)                           # [b, h, d]
    out = (mixed.reshape(b, -1) @ value_blocks.reshape(-1, h * c)
           + (weights.sum(-1)[..., None] * value['bias'].reshape(h, c)).reshape(b, -1))
    return out[:, None]


class FeedForward(nn.Module):
  """dense -> activation -> dense -> dropout -> LayerNorm(. + x) (both architectures)."""

  config: SASRecConfig

  def setup(self):
    c = self.config
    self.dense_1 = _dense(c, c.inner, c.hidden, 'dense_1')
    self.dense_2 = _dense(c, c.hidden, c.inner, 'dense_2')
    self.norm = _layer_norm(c, 'norm')
    self.drop = layers.Dropout(c.dropout, c.dropout_rng)

  def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
    act = jax.nn.relu if self.config.activation == 'relu' else _gelu
    y = layers.on_rows(self.dense_2, act(layers.on_rows(self.dense_1, x)))
    return layers.on_rows(self.norm, self.drop(y, deterministic=deterministic) + x)


class OfficialBlock(nn.Module):
  """One block of the official code; `seq` is the masked input of every position."""

  config: SASRecConfig

  def setup(self):
    self.ln_1 = _layer_norm(self.config, 'ln_1')
    self.ln_2 = _layer_norm(self.config, 'ln_2')
    self.attention = Attention(self.config, scale_by_width=True, name='attention')
    self.ffn = FeedForward(self.config, name='ffn')

  def __call__(self, seq: jax.Array, last: tuple[jax.Array, jax.Array] | None, mask: jax.Array,
               query_mask: jax.Array, deterministic: bool) -> jax.Array:
    """seq `[r, W, d]` -> `[r, W, d]`, or `[b, 1, d]` at the `last` = (rows, cols) `[b]`."""
    q = self.ln_1(seq)
    rows = None
    if last is not None:
      rows, cols = last
      q = q[rows, cols][:, None]
    x = self.attention(q, seq, mask, query_mask, deterministic, key_rows=rows) + q
    return self.ffn(self.ln_2(x), deterministic) * query_mask[..., None]


class RecBoleLayer(nn.Module):
  """One post-LN transformer layer of RecBole's TransformerEncoder."""

  config: SASRecConfig

  def setup(self):
    c = self.config
    self.attention = Attention(c, scale_by_width=False, name='attention')
    self.dense = _dense(c, c.hidden, c.hidden, 'dense')
    self.norm = _layer_norm(c, 'norm')
    self.drop = layers.Dropout(c.dropout, c.dropout_rng)
    self.ffn = FeedForward(c, name='ffn')

  def __call__(self, x: jax.Array, last: tuple[jax.Array, jax.Array] | None, mask: jax.Array,
               deterministic: bool) -> jax.Array:
    """x `[r, W, d]` -> `[r, W, d]`, or `[b, 1, d]` at the `last` = (rows, cols) `[b]`."""
    q, rows = x, None
    if last is not None:
      rows, cols = last
      q = x[rows, cols][:, None]
    y = layers.on_rows(self.dense, self.attention(q, x, mask, None, deterministic, key_rows=rows))
    y = layers.on_rows(self.norm, self.drop(y, deterministic=deterministic) + q)
    return self.ffn(y, deterministic)


class SASRec(nn.Module):
  """SASRec encoder + item scorer. Initialise with `init_params` (method `all_logits`)."""

  config: SASRecConfig

  def setup(self):
    c = self.config
    official = c.architecture == 'official'
    self.item_embedding = nn.Embed(
        c.num_items + 1, c.hidden, name='item_embedding',
        embedding_init=nn.initializers.normal(0.01 if official else 0.02))
    self.position_embedding = nn.Embed(
        c.max_len, c.hidden, name='position_embedding',
        embedding_init=nn.initializers.normal(1.0 if official else 0.02))
    # official: LN3 after the blocks; recbole: LayerNorm of the input embeddings.
    self.norm = _layer_norm(c, 'ln_3' if official else 'input_norm')
    self.drop = layers.Dropout(c.dropout, c.dropout_rng)
    block = OfficialBlock if official else RecBoleLayer
    self.blocks = [block(c, name=f'block_{i}') for i in range(c.num_blocks)]
    if official:
      init = _torch_uniform(c.hidden)
      self.out_kernel = self.param('out_kernel', init, (c.hidden, c.num_items))
      self.out_bias = self.param('out_bias', init, (c.num_items,))

  def _embed(self, packed: sasrec_packing.Packed, deterministic: bool) -> jax.Array:
    length = packed.tokens.shape[1]
    if length > self.config.max_len:
      raise ValueError(f'history length {length} > max_len {self.config.max_len}')
    valid = packed.segments > 0
    items = jnp.where(valid, packed.tokens, self.config.pad_id)
    x = self.item_embedding(items) + self.position_embedding(packed.positions)
    if self.config.architecture == 'official':
      return self.drop(x, deterministic=deterministic) * valid[..., None]
    return self.drop(layers.on_rows(self.norm, x), deterministic=deterministic)

  def _encode(self, packed: sasrec_packing.Packed, deterministic: bool,
              last_only: bool) -> jax.Array:
    """`[b, 1, d]` at each sample's last item (last_only) or `[r, W, d]` everywhere."""
    chex.assert_equal_shape([packed.tokens, packed.positions, packed.segments])
    chex.assert_equal_shape([packed.rows, packed.ends])
    x = self._embed(packed, deterministic)
    seg = packed.segments
    width = seg.shape[1]
    valid = seg > 0
    causal = jnp.tril(jnp.ones((width, width), bool))[None]
    # Full layers: causal attention inside each sample (segment) of a row.
    full_mask = causal & (seg[:, :, None] == seg[:, None, :]) & valid[:, None, :]
    # The one query at a sample's last item sees that sample's items (all at or before it).
    own = (seg[packed.rows] == seg[packed.rows, packed.ends][:, None]) & (
        jnp.arange(width)[None, :] <= packed.ends[:, None])
    for i, block in enumerate(self.blocks):
      one_query = last_only and i == len(self.blocks) - 1
      mask = own[:, None, :] if one_query else full_mask
      last = (packed.rows, packed.ends) if one_query else None
      if self.config.architecture == 'official':
        query_mask = jnp.ones((own.shape[0], 1), x.dtype) if one_query else valid.astype(x.dtype)
        x = block(x, last, mask, query_mask, deterministic)
      else:
        x = block(x, last, mask, deterministic)
    if self.config.architecture == 'official':
      x = self.norm(x)
    return x

  def encode_packed(self, packed: sasrec_packing.Packed, *,
                    deterministic: bool = True) -> jax.Array:
    """`[b, hidden]` representations of the samples packed in `packed` (see `pack`)."""
    return self._encode(packed, deterministic, last_only=True)[:, 0]

  def encode(self, history: jax.Array, history_len: jax.Array, *,
             deterministic: bool = True) -> jax.Array:
    """`[b, H]` histories, `[b]` lengths -> `[b, hidden]` representation at position len-1."""
    return self.encode_packed(sasrec_packing.one_per_row(history, history_len),
                              deterministic=deterministic)

  def encode_all(self, history: jax.Array, history_len: jax.Array, *,
                 deterministic: bool = True) -> jax.Array:
    """`[b, H, hidden]`: the output at every position (positions >= len are padding)."""
    return self._encode(sasrec_packing.one_per_row(history, history_len), deterministic,
                        last_only=False)

  def item_logits(self, hidden: jax.Array) -> jax.Array:
    """`[b, hidden]` -> `[b, num_items]` scores of every item (the pad row has none)."""
    if self.config.architecture == 'official':
      return hidden @ self.out_kernel + self.out_bias
    return hidden @ self.item_embedding.embedding[:self.config.num_items].T

  def candidate_logits(self, hidden: jax.Array, candidates: jax.Array) -> jax.Array:
    """`[b, hidden]`, item ids `[b, c]` -> `[b, c]` scores (only those columns are computed)."""
    chex.assert_rank(candidates, 2)
    if self.config.architecture == 'official':
      weights = jnp.take(self.out_kernel.T, candidates, axis=0)
      return jnp.einsum('bd,bcd->bc', hidden, weights) + jnp.take(self.out_bias, candidates)
    return jnp.einsum('bd,bcd->bc', hidden, self.item_embedding(candidates))

  def all_logits(self, history: jax.Array, history_len: jax.Array, *,
                 deterministic: bool = True) -> jax.Array:
    """`[b, num_items]` scores of every item for each history (also touches every parameter,
    so it is the `init` method)."""
    return self.item_logits(self.encode(history, history_len, deterministic=deterministic))

  def __call__(self, packed: sasrec_packing.Packed, candidates: jax.Array | None = None, *,
               deterministic: bool = True) -> jax.Array:
    """Scores of packed samples: `[b, c]` for candidate ids `[b, c]`, else `[b, num_items]`."""
    hidden = self.encode_packed(packed, deterministic=deterministic)
    if candidates is None:
      return self.item_logits(hidden)
    return self.candidate_logits(hidden, candidates)


def init_params(config: SASRecConfig, rng: jax.Array) -> dict:
  history = jnp.zeros((1, config.max_len), jnp.int32)
  length = jnp.ones((1,), jnp.int32)
  return SASRec(config).init(rng, history, length, method=SASRec.all_logits)['params']


class ScoreFns(NamedTuple):
  """Pure, jittable scoring functions of a trained SASRec (e.g. as a frozen reward model).

  score(params, histories [B, H], history_len [B], candidate_items [B, C]) -> [B, C] float32
  score_all(params, histories [B, H], history_len [B]) -> [B, num_items] float32
  Histories are padded as the input pipeline pads them (-1 after `history_len`).
  """

  score: Callable[..., jax.Array]
  score_all: Callable[..., jax.Array]


def score_fns(config: SASRecConfig) -> ScoreFns:
  model = SASRec(config)

  def score(params, histories, history_len, candidate_items):
    chex.assert_rank(candidate_items, 2)
    return model.apply({'params': params}, sasrec_packing.one_per_row(histories, history_len),
                       candidate_items)

  def score_all(params, histories, history_len):
    return model.apply({'params': params}, histories, history_len, method=SASRec.all_logits)

  return ScoreFns(score, score_all)
