"""Trie-constrained beam search over SIDs, in lax.scan over the SID levels.

Model-agnostic: the caller gives the next-token logits after the prompt, a cache, and
  logits_fn(cache, tokens [rows], level) -> (logits [rows, vocab], cache)   feed one token/row
  reorder_cache(cache, rows [new_rows]) -> cache                          gather cache rows
Scores are true model log-probs of the path: log-softmax over the FULL vocabulary in float32,
then the level's K SID tokens are kept and codes the trie forbids get NEG_INF (official
semantics: no renormalisation over the allowed tokens). Every SID has exactly L tokens, so the
search runs exactly L levels and needs no EOS handling.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from minirec_jax.semantic_ids.trie import SidTrie

NEG_INF = -1e9  # finite, so sums of several stay finite and comparisons stay exact


@flax.struct.dataclass
class BeamResult:
  items: jax.Array   # int32 [batch, beam], best first; -1 where fewer items exist
  codes: jax.Array   # int32 [batch, beam, L]
  scores: jax.Array  # float32 [batch, beam]: sum of the L token log-probs (NEG_INF if none)


def level_log_probs(logits: jax.Array, level, codebook_size: int,
                    sid_offset: int) -> jax.Array:
  """`[rows, vocab]` logits -> `[rows, K]` full-vocabulary log-probs of level's SID tokens."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  start = sid_offset + level * codebook_size
  return jax.lax.dynamic_slice_in_dim(log_probs, start, codebook_size, axis=-1)


def _select(trie: SidTrie, level, scores, nodes, codes, logits, sid_offset):
  """One level: extend every beam by every allowed code and keep the best `beam` paths."""
  batch, beam = scores.shape
  k = trie.codebook_size
  log_probs = level_log_probs(logits, level, k, sid_offset).reshape(batch, beam, k)
  allowed = trie.next_node[level, nodes] >= 0                            # [b, w, K]
  candidates = scores[..., None] + jnp.where(allowed, log_probs, NEG_INF)
  top_scores, flat = jax.lax.top_k(candidates.reshape(batch, beam * k), beam)
  parent, code = flat // k, flat % k
  parent_nodes = jnp.take_along_axis(nodes, parent, axis=1)
  child = trie.next_node[level, parent_nodes, code]
  codes = jnp.take_along_axis(codes, parent[..., None], axis=1).at[..., level].set(code)
  rows = (jnp.arange(batch)[:, None] * beam + parent).reshape(-1)
  return top_scores, jnp.maximum(child, 0), child, codes, code, rows


def constrained_beam_search(first_logits: jax.Array, cache: Any, logits_fn: Callable,
                            reorder_cache: Callable, trie: SidTrie, *, beam_size: int,
                            sid_offset: int) -> BeamResult:
  """The `beam_size` most probable catalogue SIDs per row of `first_logits` (`[batch, V]`)."""
  chex.assert_rank(first_logits, 2)
  batch = first_logits.shape[0]
  num_levels = trie.num_levels
  expand = jnp.repeat(jnp.arange(batch), beam_size)
  cache = reorder_cache(cache, expand)
  logits = first_logits[expand]
  # Only beam 0 is live at the start, so the first level does not pick one code W times.
  scores = jnp.full((batch, beam_size), NEG_INF).at[:, 0].set(0.0)
  nodes = jnp.zeros((batch, beam_size), jnp.int32)
  codes = jnp.zeros((batch, beam_size, num_levels), jnp.int32)

  def body(carry, level):
    scores, nodes, codes, logits, cache = carry
    scores, nodes, _, codes, code, rows = _select(trie, level, scores, nodes, codes, logits,
                                                  sid_offset)
    cache = reorder_cache(cache, rows)
    token = sid_offset + level * trie.codebook_size + code.reshape(-1)
    logits, cache = logits_fn(cache, token, level)
    return (scores, nodes, codes, logits, cache), None

  (scores, nodes, codes, logits, _), _ = jax.lax.scan(
      body, (scores, nodes, codes, logits, cache), jnp.arange(num_levels - 1))
  scores, _, items, codes, _, _ = _select(trie, num_levels - 1, scores, nodes, codes, logits,
                                          sid_offset)
  found = scores > NEG_INF / 2
  return BeamResult(items=jnp.where(found, items, -1), codes=codes,
                    scores=jnp.where(found, scores, NEG_INF))
