"""Trie-constrained beam search over SIDs, in lax.scan over the L SID levels.

Model-agnostic interface (the model is reached only through two callables):

  first_logits                     float `[batch, vocab]`: next-token logits after each prompt
  logits_fn(cache, tokens, step)   -> (logits `[rows, vocab]`, cache): feeds one token per row
                                   (`tokens` int32 `[rows]`, the SID token of level `step`,
                                   `step` an int32 scalar in [0, L-1))
  reorder_cache(cache, rows)       -> cache: gathers cache rows (`rows` int32 `[new_rows]`)

with rows = batch * beam, laid out user-major (row = b * beam + w). `reorder_cache` is called
once to expand `[batch]` -> `[batch * beam]` and then once per level to follow the surviving
beams; a KV-cache decoder plugs in directly (its `decode_step` as `logits_fn`, its row gather as
`reorder_cache`), a stateless model can use a trivial cache.

Token layout: the SID token of (level l, code c) is `sid_offset + l * K + c`. Every SID has
exactly L tokens, so the search runs exactly L levels (no EOS step) and calls `logits_fn` L-1
times: the last level's choice needs no further logits.

Scores are true model log-probs of the path, as in the official implementation: log-softmax
over the FULL vocabulary in float32, keep the level's K SID tokens, and give codes the trie
forbids NEG_INF (no renormalisation over the allowed tokens). NEG_INF is finite so that sums of
several never produce inf - inf = NaN; any path with score below NEG_INF / 2 used a forbidden
step (or continued a dead beam) and is reported as missing.
"""

from __future__ import annotations

from typing import Any, Callable

import chex
import flax.struct
import jax
import jax.numpy as jnp

from minirec_jax.semantic_ids.trie import SidTrie

NEG_INF = -1e9
EVAL_BEAM_SIZE = 50  # the official evaluation's num_beams
RL_BEAM_SIZE = 16    # the official RL rollouts' num_beams (= num_generations)

LogitsFn = Callable[[Any, jax.Array, jax.Array], tuple[jax.Array, Any]]
ReorderFn = Callable[[Any, jax.Array], Any]


@flax.struct.dataclass
class BeamResult:
  """The best catalogue SIDs per user, best first.

  Attributes:
    items: int32 `[batch, beam]`; -1 for unfilled beams (fewer than `beam` items reachable).
    codes: int32 `[batch, beam, L]`; rows of -1 for unfilled beams.
    scores: float32 `[batch, beam]`: sum of the L token log-probs; NEG_INF for unfilled beams.
  """

  items: jax.Array
  codes: jax.Array
  scores: jax.Array


@flax.struct.dataclass
class _Beams:
  scores: jax.Array  # float32 [batch, beam]
  nodes: jax.Array   # int32 [batch, beam]: trie node at the next level (0 for dead beams)
  codes: jax.Array   # int32 [batch, beam, L]: codes chosen so far


def check_vocab(first_logits: jax.Array, trie: SidTrie, sid_offset: int) -> None:
  """Raises unless `first_logits` `[batch, vocab]` has room for all L * K SID tokens."""
  chex.assert_rank(first_logits, 2)
  needed = sid_offset + trie.num_levels * trie.codebook_size
  # Checked here because dynamic_slice would silently clamp an out-of-range slice.
  if first_logits.shape[1] < needed:
    raise ValueError(f'vocab of {first_logits.shape[1]} tokens has no room for {trie.num_levels}'
                     f' x {trie.codebook_size} SID tokens from sid_offset {sid_offset}')


def sid_log_probs(logits: jax.Array, level: int | jax.Array, codebook_size: int,
                  sid_offset: int) -> jax.Array:
  """`[rows, vocab]` logits -> float32 `[rows, K]` full-vocabulary log-probs of level's codes."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  start = sid_offset + level * codebook_size
  return jax.lax.dynamic_slice_in_dim(log_probs, start, codebook_size, axis=-1)


def sid_token(code: jax.Array, level: int | jax.Array, codebook_size: int,
              sid_offset: int) -> jax.Array:
  """Vocabulary id of the SID token for `code` (int, any shape) at `level`."""
  return (sid_offset + level * codebook_size + code).astype(jnp.int32)


def _extend(trie: SidTrie, level, beams: _Beams, log_probs: jax.Array):
  """Extends every beam by every code and keeps the `beam` best paths per user.

  Args:
    trie: the SID trie.
    level: the level being chosen (int or int32 scalar).
    beams: the beams before this level.
    log_probs: float32 `[batch * beam, K]` model log-probs of this level's codes per beam.

  Returns:
    (beams after this level, child `[batch, beam]` from the trie (item ids at the last level,
    -1 where the step was forbidden), chosen code `[batch, beam]`, parent row `[batch * beam]`
    of every new beam in the flat layout, for `reorder_cache`).
  """
  batch, beam = beams.scores.shape
  k = trie.codebook_size
  allowed = trie.next_node[level, beams.nodes] >= 0                           # [b, w, K]
  step_scores = jnp.where(allowed, log_probs.reshape(batch, beam, k), NEG_INF)
  candidates = (beams.scores[..., None] + step_scores).reshape(batch, beam * k)
  scores, flat = jax.lax.top_k(candidates, beam)                             # best first
  parent, code = flat // k, flat % k
  child = trie.next_node[level, jnp.take_along_axis(beams.nodes, parent, axis=1), code]
  codes = jnp.take_along_axis(beams.codes, parent[..., None], axis=1)
  codes = codes.at[..., level].set(code)
  rows = (jnp.arange(batch)[:, None] * beam + parent).reshape(-1)
  # Forbidden steps only ever win when no valid path is left; their score is <= NEG_INF, so
  # they can never overtake a valid path. Node 0 keeps later gathers in range.
  return _Beams(scores, jnp.maximum(child, 0), codes), child, code, rows


def constrained_beam_search(first_logits: jax.Array, cache: Any, logits_fn: LogitsFn,
                            reorder_cache: ReorderFn, trie: SidTrie, *,
                            beam_size: int = EVAL_BEAM_SIZE, sid_offset: int) -> BeamResult:
  """The `beam_size` most probable catalogue SIDs per user (jittable; beam_size is static).

  Args:
    first_logits: `[batch, vocab]` next-token logits after each user's prompt.
    cache: the model state after the prompts, `[batch]` rows (any pytree `reorder_cache` takes).
    logits_fn: `(cache, tokens [rows], step) -> (logits [rows, vocab], cache)`, see module doc.
    reorder_cache: `(cache, rows [new_rows]) -> cache`.
    trie: the catalogue's SID trie.
    beam_size: beams per user (static); may exceed the number of items (padding, see result).
    sid_offset: vocabulary id of the SID token (level 0, code 0).

  Returns:
    BeamResult with `[batch, beam]` items and scores and `[batch, beam, L]` codes, best first.
  """
  check_vocab(first_logits, trie, sid_offset)
  batch = first_logits.shape[0]
  k, num_levels = trie.codebook_size, trie.num_levels
  cache = reorder_cache(cache, jnp.repeat(jnp.arange(batch), beam_size))
  log_probs = jnp.repeat(sid_log_probs(first_logits, 0, k, sid_offset), beam_size, axis=0)
  # Only beam 0 is live at first, so level 0 does not pick the same code `beam` times.
  beams = _Beams(scores=jnp.full((batch, beam_size), NEG_INF, jnp.float32).at[:, 0].set(0.0),
                 nodes=jnp.zeros((batch, beam_size), jnp.int32),
                 codes=jnp.zeros((batch, beam_size, num_levels), jnp.int32))

  def body(carry, level):
    beams, log_probs, cache = carry
    beams, _, code, rows = _extend(trie, level, beams, log_probs)
    cache = reorder_cache(cache, rows)
    logits, cache = logits_fn(cache, sid_token(code.reshape(-1), level, k, sid_offset), level)
    return (beams, sid_log_probs(logits, level + 1, k, sid_offset), cache), None

  (beams, log_probs, _), _ = jax.lax.scan(body, (beams, log_probs, cache),
                                          jnp.arange(num_levels - 1, dtype=jnp.int32))
  beams, items, _, _ = _extend(trie, num_levels - 1, beams, log_probs)
  found = beams.scores > NEG_INF / 2
  return BeamResult(items=jnp.where(found, items, -1),
                    codes=jnp.where(found[..., None], beams.codes, -1),
                    scores=jnp.where(found, beams.scores, NEG_INF))
