"""Attention kernels of the decoder: pure functions on projected, rotated queries/keys/values.

Layout: queries `[batch, s, heads, head_dim]`, keys and values `[batch, t, kv_heads, head_dim]`
(grouped-query attention: query head h reads KV head h // (heads // kv_heads), as HF repeat_kv
does), masks bool `[batch, s, t]`, True where query i may attend to key j. Scores and softmax
are float32 whatever the compute dtype, and a fully masked score row (left padding) stays
finite.

* `attend_by_kv_head`: training, scoring and plain cached decoding; one KV head at a time in
  the projections' own layout, with a hand-written backward pass (`_grouped_attention`) and,
  for causal masks, query blocks that skip the keys above the diagonal.
* `attend_with_prefix`: decoding several rows per prompt, where each prompt's keys/values are
  stored once and read by all of its rows.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_MASKED = -1e30  # finite: a fully masked score row must not turn into NaN
CAUSAL_QUERY_BLOCK = 64  # query positions per block when a causal mask lets attention skip keys


def attend_by_kv_head(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                      causal: bool = False) -> jax.Array:
  """Grouped-query attention, one KV head at a time, in the projections' own layout.

  The query heads of KV head j are rows `(position, head)` of one `[s * rep, head_dim]` matrix
  per sequence, so every product reads its operands where the projections wrote them (no
  head-major transposes, which XLA:CPU runs slowly). With `causal` (the mask is known to be
  causal), queries go in blocks of `CAUSAL_QUERY_BLOCK` positions and each block reads only
  the keys up to its last position: 3/4 of the work at 2 blocks, about half at many.

  Args:
    q: `[b, s, heads, head_dim]`.
    k, v: `[b, t, kv_heads, head_dim]`.
    mask: bool `[b, s, t]`.
    causal: a promise that `mask` never lets query i see a key j > i (with t == s); a
      non-causal mask would be silently cut to its causal part.
  Returns:
    `[b, s, heads, head_dim]`.
  """
  b, s, heads, head_dim = q.shape
  kv_heads = k.shape[2]
  rep = heads // kv_heads
  starts = range(0, s, CAUSAL_QUERY_BLOCK) if causal else [0]
  blocks = []
  for start in starts:
    end = min(s, start + CAUSAL_QUERY_BLOCK) if causal else s
    keys = end if causal else k.shape[1]
    outs = [_grouped_attention(
        q[:, start:end, j * rep:(j + 1) * rep].reshape(b, (end - start) * rep, head_dim),
        k[:, :keys, j], v[:, :keys, j], mask[:, start:end, :keys]) for j in range(kv_heads)]
    blocks.append(jnp.concatenate([o.reshape(b, end - start, rep, head_dim) for o in outs],
                                  axis=2))
  return jnp.concatenate(blocks, axis=1)


def _exp_scores(q, k, mask):
  """Unnormalised attention weights: (exp(scores - row max) `[b, m, t]`, row sums `[b, m, 1]`).

  q: `[b, m, d]` with m = s * rep rows ordered (position, head); k: `[b, t, d]`;
  mask: bool `[b, s, t]`. Scores and weights are float32.
  """
  b, m, d = q.shape
  s = mask.shape[1]
  scores = jnp.einsum('bmd,btd->bmt', q, k, preferred_element_type=jnp.float32) * d ** -0.5
  scores = jnp.where(mask[:, :, None, :], scores.reshape(b, s, m // s, -1), _MASKED)
  e = jnp.exp(scores - jnp.max(scores, axis=-1, keepdims=True)).reshape(b, m, -1)
  return e, jnp.sum(e, axis=-1, keepdims=True)


@jax.custom_vjp
def _grouped_attention(q, k, v, mask):
  """softmax(q k^T / sqrt(d), masked) v for one KV head: q `[b, m, d]`, k, v `[b, t, d]`."""
  return _grouped_attention_fwd(q, k, v, mask)[0]


def _grouped_attention_fwd(q, k, v, mask):
  e, total = _exp_scores(q, k, mask)
  out = (jnp.einsum('bmt,btd->bmd', e.astype(q.dtype), v,
                    preferred_element_type=jnp.float32) / total).astype(q.dtype)
  return out, (q, k, v, e, total, out)


def _grouped_attention_bwd(residuals, d_out):
  # Hand-written so the normalisation is applied once to the [b, m, d] output, not to the
  # [b, m, t] weights, and the softmax backward is one pass (autodiff takes three on CPU).
  q, k, v, e, total, out = residuals
  weights = e / total
  d_out32 = d_out.astype(jnp.float32)
  row_dot = jnp.sum(d_out32 * out.astype(jnp.float32), axis=-1, keepdims=True)
  d_weights = jnp.einsum('bmd,btd->bmt', d_out, v, preferred_element_type=jnp.float32)
  d_scores = (weights * (d_weights - row_dot) * q.shape[-1] ** -0.5).astype(q.dtype)
  d_q = jnp.einsum('bmt,btd->bmd', d_scores, k)
  d_k = jnp.einsum('bmt,bmd->btd', d_scores, q)
  d_v = jnp.einsum('bmt,bmd->btd', weights.astype(q.dtype), d_out)
  return d_q, d_k, d_v, None


_grouped_attention.defvjp(_grouped_attention_fwd, _grouped_attention_bwd)


def attend_with_prefix(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
                       prefix_k: jax.Array, prefix_v: jax.Array,
                       prefix_valid: jax.Array) -> jax.Array:
  """Attention over a shared per-prompt prefix plus each row's own slots.

  Args:
    q: `[rows, s, heads, head_dim]`, rows prompt-major (G = rows // prompts per prompt).
    k, v: `[rows, t, kv_heads, head_dim]`, the rows' own slots.
    mask: bool `[rows, s, t]` over the rows' own slots.
    prefix_k, prefix_v: `[prompts, T, kv_heads, head_dim]`.
    prefix_valid: bool `[prompts, T]`; every query sees every valid prefix slot.
  Returns:
    `[rows, s, heads, head_dim]`, as attention over the concatenated keys would give.
  """
  rows, s, heads, head_dim = q.shape
  prompts, _, kv_heads, _ = prefix_k.shape
  g, rep = rows // prompts, heads // kv_heads
  qg = q.reshape(prompts, g, s, kv_heads, rep, head_dim)
  kg = k.reshape(prompts, g, -1, kv_heads, head_dim)
  vg = v.reshape(prompts, g, -1, kv_heads, head_dim)
  scale = head_dim ** -0.5
  on_prefix = jnp.einsum('pgskrd,ptkd->pgkrst', qg, prefix_k.astype(q.dtype),
                         preferred_element_type=jnp.float32) * scale
  on_own = jnp.einsum('pgskrd,pglkd->pgkrsl', qg, kg,
                      preferred_element_type=jnp.float32) * scale
  on_prefix = jnp.where(prefix_valid[:, None, None, None, None, :], on_prefix, _MASKED)
  on_own = jnp.where(mask.reshape(prompts, g, 1, 1, s, -1), on_own, _MASKED)
  weights = jax.nn.softmax(jnp.concatenate([on_prefix, on_own], axis=-1), axis=-1)
  t = prefix_k.shape[1]
  out = (jnp.einsum('pgkrst,ptkd->pgskrd', weights[..., :t].astype(q.dtype),
                    prefix_v.astype(q.dtype))
         + jnp.einsum('pgkrsl,pglkd->pgskrd', weights[..., t:].astype(q.dtype), vg))
  return out.reshape(rows, s, heads, head_dim)
