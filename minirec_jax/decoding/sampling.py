"""Trie-masked ancestral sampling of SIDs (RL rollouts); same model interface as beam search.

Each level draws a code from softmax(log p(code | prefix) / temperature) restricted to the codes
the trie allows after the prefix, so with temperature 1 an item is drawn with probability
prod_l p(c_l | prefix) / sum_{allowed c} p(c | prefix) (the model renormalised per level over
the catalogue's continuations). Returned log-probs are those of the untempered model over the
full vocabulary, as beam search scores them (see beam_search's module docstring); a token map's
terminator tokens are forced after the SID and their log-probs returned too, as beam search
adds them.
"""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from minirec_jax.data.sid_sequences import SidTokenMap
from minirec_jax.decoding.beam_search import (NEG_INF, LogitsFn, ReorderFn, check_token_map,
                                              sid_log_probs, terminator_log_probs, token_ids)
from minirec_jax.semantic_ids.trie import SidTrie


@flax.struct.dataclass
class SampleResult:
  """Sampled catalogue SIDs, `num_samples` per user, in draw order (not sorted).

  Attributes:
    items: int32 `[batch, samples]`, always catalogue items (repeats are possible).
    codes: int32 `[batch, samples, L]`.
    token_log_probs: float32 `[batch, samples, L + T]`: untempered model log-prob of every
      token, the L SID tokens then the T terminator tokens of the token map.
    scores: float32 `[batch, samples]`: their sum, log p(SID, terminator | prompt).
  """

  items: jax.Array
  codes: jax.Array
  token_log_probs: jax.Array
  scores: jax.Array


def masked_sample(first_logits: jax.Array, cache: Any, logits_fn: LogitsFn,
                  reorder_cache: ReorderFn, trie: SidTrie, rng: jax.Array, *, num_samples: int,
                  token_map: SidTokenMap,
                  temperature: float | jax.Array = 1.0) -> SampleResult:
  """Draws `num_samples` catalogue SIDs per user (jittable; num_samples is static).

  Args:
    first_logits: `[batch, vocab]` next-token logits after each user's prompt.
    cache: the model state after the prompts, `[batch]` rows.
    logits_fn: `(cache, tokens [rows], step) -> (logits [rows, vocab], cache)`,
      rows = batch * num_samples, user-major.
    reorder_cache: `(cache, rows [new_rows]) -> cache`; used once, to expand users to samples.
    trie: the catalogue's SID trie.
    rng: a PRNG key.
    num_samples: samples per user (static).
    token_map: the SID token ids `[L, K]` and the terminator (forced after the SID).
    temperature: > 0; divides the log-probs before sampling (not the returned log-probs).

  Returns:
    SampleResult with `[batch, num_samples]` items and scores.
  """
  check_token_map(first_logits, trie, token_map)
  if isinstance(temperature, (int, float)) and temperature <= 0:
    raise ValueError(f'temperature must be > 0, got {temperature} (use beam size 1 for greedy)')
  batch = first_logits.shape[0]
  rows = batch * num_samples
  num_levels = trie.num_levels
  table = token_ids(token_map)
  cache = reorder_cache(cache, jnp.repeat(jnp.arange(batch), num_samples))
  log_probs = jnp.repeat(sid_log_probs(first_logits, 0, table), num_samples, axis=0)
  keys = jax.random.split(rng, num_levels)

  def draw(level, nodes, log_probs, key):
    """One level for all rows: (code, child node or item, chosen log-prob), each `[rows]`."""
    allowed = trie.next_node[level, nodes] >= 0                              # [rows, K]
    # Clamped so that an allowed code always beats a forbidden one, even at log-prob -inf.
    masked = jnp.where(allowed, jnp.maximum(log_probs, NEG_INF / 2), NEG_INF)
    code = jax.random.categorical(key, masked / temperature, axis=-1)
    chosen = jnp.take_along_axis(log_probs, code[:, None], axis=-1)[:, 0]
    return code, trie.next_node[level, nodes, code], chosen

  def body(carry, inputs):
    nodes, log_probs, cache = carry
    level, key = inputs
    code, nodes, chosen = draw(level, nodes, log_probs, key)
    logits, cache = logits_fn(cache, table[level, code], level)
    return (nodes, sid_log_probs(logits, level + 1, table), cache), (code, chosen)

  nodes = jnp.zeros((rows,), jnp.int32)
  (nodes, log_probs, cache), (codes, chosen) = jax.lax.scan(
      body, (nodes, log_probs, cache),
      (jnp.arange(num_levels - 1, dtype=jnp.int32), keys[:-1]))
  last_code, items, last_chosen = draw(num_levels - 1, nodes, log_probs, keys[-1])
  codes = jnp.concatenate([codes.T, last_code[:, None]], axis=1).astype(jnp.int32)
  token_log_probs = jnp.concatenate([chosen.T, last_chosen[:, None]], axis=1)
  if token_map.terminator:
    forced = terminator_log_probs(cache, logits_fn, table[num_levels - 1, last_code], token_map,
                                  num_levels)
    token_log_probs = jnp.concatenate([token_log_probs, forced.T], axis=1)
  token_log_probs = token_log_probs.reshape(batch, num_samples, -1)
  return SampleResult(items=items.reshape(batch, num_samples),
                      codes=codes.reshape(batch, num_samples, num_levels),
                      token_log_probs=token_log_probs, scores=token_log_probs.sum(-1))
