"""Trie-masked ancestral sampling of SIDs (RL rollouts), same interface as beam search."""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from minirec_jax.decoding.beam_search import NEG_INF, level_log_probs
from minirec_jax.semantic_ids.trie import SidTrie


@flax.struct.dataclass
class SampleResult:
  items: jax.Array            # int32 [batch, samples]
  codes: jax.Array            # int32 [batch, samples, L]
  token_log_probs: jax.Array  # float32 [batch, samples, L]: untempered model log-probs
  scores: jax.Array           # float32 [batch, samples]: their sum


def masked_sample(first_logits: jax.Array, cache: Any, logits_fn: Callable,
                  reorder_cache: Callable, trie: SidTrie, rng: jax.Array, *, num_samples: int,
                  sid_offset: int, temperature: float = 1.0) -> SampleResult:
  """Draws `num_samples` catalogue SIDs per row from softmax(masked logits / temperature)."""
  chex.assert_rank(first_logits, 2)
  batch = first_logits.shape[0]
  num_levels, k = trie.num_levels, trie.codebook_size
  expand = jnp.repeat(jnp.arange(batch), num_samples)
  cache = reorder_cache(cache, expand)
  rows = batch * num_samples

  def choose(level, nodes, logits, key):
    log_probs = level_log_probs(logits, level, k, sid_offset)
    allowed = trie.next_node[level, nodes] >= 0
    masked = jnp.where(allowed, log_probs, NEG_INF)
    code = jax.random.categorical(key, masked / temperature, axis=-1)
    chosen = jnp.take_along_axis(log_probs, code[:, None], axis=-1)[:, 0]
    return code, trie.next_node[level, nodes, code], chosen

  def body(carry, level):
    nodes, logits, cache = carry
    code, child, chosen = choose(level, nodes, logits, jax.random.fold_in(rng, level))
    token = sid_offset + level * k + code
    logits, cache = logits_fn(cache, token, level)
    return (child, logits, cache), (code, chosen)

  nodes = jnp.zeros((rows,), jnp.int32)
  (nodes, logits, _), (codes, chosen) = jax.lax.scan(
      body, (nodes, first_logits[expand], cache), jnp.arange(num_levels - 1))
  last = num_levels - 1
  code, items, last_chosen = choose(last, nodes, logits, jax.random.fold_in(rng, last))
  codes = jnp.concatenate([codes.T, code[:, None]], axis=1).reshape(batch, num_samples, -1)
  token_lp = jnp.concatenate([chosen.T, last_chosen[:, None]], axis=1)
  token_lp = token_lp.reshape(batch, num_samples, -1)
  return SampleResult(items=items.reshape(batch, num_samples), codes=codes,
                      token_log_probs=token_lp, scores=token_lp.sum(-1))
