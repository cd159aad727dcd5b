"""Trie-constrained beam search over SIDs, in lax.scan over the L SID levels.

Model-agnostic interface (the model is reached only through two callables):

  first_logits                     float `[batch, vocab]`: next-token logits after each prompt
  logits_fn(cache, tokens, step)   -> (logits `[rows, vocab]`, cache): feeds one token per row
                                   (`tokens` int32 `[rows]`, generated token number `step`, an
                                   int32 scalar in [0, L + T - 1): the SID token of level
                                   `step` for step < L, then terminator token `step - L`)
  reorder_cache(cache, rows)       -> cache: gathers cache rows (`rows` int32 `[new_rows]`)

with rows = batch * beam, laid out user-major (row = b * beam + w). `reorder_cache` is called
once to expand `[batch]` -> `[batch * beam]` and then once per level to follow the surviving
beams; a KV-cache decoder plugs in directly (its `decode_step` as `logits_fn`, its row gather as
`reorder_cache`), a stateless model can use a trivial cache.

Token ids come from a `SidTokenMap` (data/sid_sequences.py), never from arithmetic: the SID
token of (level l, code c) is `token_map.table[l, c]`, in any vocabulary (ours, or a language
model's extended with SID tokens). Every SID has exactly L tokens, so the search runs exactly L
levels. When the map has a terminator of T tokens (a language model's '\\n' then eos), T forced
steps follow: after level L-1 the `beam` best paths are fixed (each has exactly one allowed
continuation, so nothing is pruned), each path's score gains the model's log-prob of terminator
token j after the SID and terminator tokens 0..j-1, and the paths are re-sorted by the total.
This is what the official beam search does with a trie that allows only '\\n' then eos after a
complete SID (length_penalty 0). `logits_fn` is called L + T - 1 times: the last token's choice
needs no further logits.

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
import numpy as np

from minirec_jax.data.sid_sequences import SidTokenMap
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
    scores: float32 `[batch, beam]`: sum of the L SID and T terminator token log-probs; NEG_INF
      for unfilled beams.
  """

  items: jax.Array
  codes: jax.Array
  scores: jax.Array


@flax.struct.dataclass
class _Beams:
  scores: jax.Array  # float32 [batch, beam]
  nodes: jax.Array   # int32 [batch, beam]: trie node at the next level (0 for dead beams)
  codes: jax.Array   # int32 [batch, beam, L]: codes chosen so far


def check_token_map(first_logits: jax.Array, trie: SidTrie, token_map: SidTokenMap) -> None:
  """Raises unless `token_map` is `[L, K]` like `trie` and its ids fit `first_logits`' vocab.

  A table passed into jit is traced and its ids cannot be read here (`Recommender` checks them
  on the host); the static terminator ids always are.
  """
  chex.assert_rank(first_logits, 2)
  shape = (trie.num_levels, trie.codebook_size)
  if token_map.table.shape != shape:
    raise ValueError(f'token map table {token_map.table.shape} does not match the trie {shape}')
  ids = list(token_map.terminator)
  if not isinstance(token_map.table, jax.core.Tracer):
    ids.append(int(np.max(token_map.table)))
  # Checked here because a gather with an out-of-range id fails silently (clamps or fills).
  vocab = first_logits.shape[1]
  if max(ids, default=-1) >= vocab:
    raise ValueError(f'vocab of {vocab} tokens has no room for {shape[0]} x {shape[1]} SID tokens'
                     f' and {len(token_map.terminator)} terminator tokens (largest id {max(ids)})')


def token_ids(token_map: SidTokenMap) -> jax.Array:
  """int32 `[L, K]` table usable as an index: codes without a token read token 0.

  Such codes are never allowed by a trie over the map's catalogue; only dead beams feed them.
  """
  return jnp.maximum(jnp.asarray(token_map.table, jnp.int32), 0)


def sid_log_probs(logits: jax.Array, level: int | jax.Array, table: jax.Array) -> jax.Array:
  """`[rows, vocab]` logits -> float32 `[rows, K]` full-vocabulary log-probs of level's codes
  (`table` from `token_ids`)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.take(log_probs, table[level], axis=-1)


def terminator_log_probs(cache: Any, logits_fn: LogitsFn, last_tokens: jax.Array,
                         token_map: SidTokenMap, num_levels: int) -> jax.Array:
  """Forced terminator steps after complete SIDs: float32 `[T, rows]` log-probs.

  Args:
    cache: the model state after SID tokens 0..L-2 of every row, `[rows]` rows.
    logits_fn: see the module docstring.
    last_tokens: int32 `[rows]`, each row's level-(L-1) SID token (not fed yet).
    token_map: its terminator (T >= 1 tokens) is what is scored.
    num_levels: L (static).

  Returns:
    log p(terminator token j | prompt, SID, terminator tokens < j) for every row, full
    vocabulary, float32.
  """
  term = jnp.asarray(token_map.terminator, jnp.int32)
  rows = last_tokens.shape[0]
  feed = jnp.concatenate([last_tokens[None].astype(jnp.int32),
                          jnp.broadcast_to(term[:-1, None], (len(term) - 1, rows))])
  steps = num_levels - 1 + jnp.arange(len(term), dtype=jnp.int32)

  def body(cache, inputs):
    tokens, step, target = inputs
    logits, cache = logits_fn(cache, tokens, step)
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return cache, jax.lax.dynamic_index_in_dim(log_probs, target, axis=-1, keepdims=False)

  return jax.lax.scan(body, cache, (feed, steps, term))[1]


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
                            beam_size: int = EVAL_BEAM_SIZE,
                            token_map: SidTokenMap) -> BeamResult:
  """The `beam_size` most probable catalogue SIDs per user (jittable; beam_size is static).

  Args:
    first_logits: `[batch, vocab]` next-token logits after each user's prompt.
    cache: the model state after the prompts, `[batch]` rows (any pytree `reorder_cache` takes).
    logits_fn: `(cache, tokens [rows], step) -> (logits [rows, vocab], cache)`, see module doc.
    reorder_cache: `(cache, rows [new_rows]) -> cache`.
    trie: the catalogue's SID trie.
    beam_size: beams per user (static); may exceed the number of items (padding, see result).
    token_map: the SID token ids `[L, K]` and the terminator (forced steps, see module doc).

  Returns:
    BeamResult with `[batch, beam]` items and scores and `[batch, beam, L]` codes, best first.
  """
  check_token_map(first_logits, trie, token_map)
  batch = first_logits.shape[0]
  num_levels = trie.num_levels
  table = token_ids(token_map)
  cache = reorder_cache(cache, jnp.repeat(jnp.arange(batch), beam_size))
  log_probs = jnp.repeat(sid_log_probs(first_logits, 0, table), beam_size, axis=0)
  # Only beam 0 is live at first, so level 0 does not pick the same code `beam` times.
  beams = _Beams(scores=jnp.full((batch, beam_size), NEG_INF, jnp.float32).at[:, 0].set(0.0),
                 nodes=jnp.zeros((batch, beam_size), jnp.int32),
                 codes=jnp.zeros((batch, beam_size, num_levels), jnp.int32))

  def body(carry, level):
    beams, log_probs, cache = carry
    beams, _, code, rows = _extend(trie, level, beams, log_probs)
    cache = reorder_cache(cache, rows)
    logits, cache = logits_fn(cache, table[level, code.reshape(-1)], level)
    return (beams, sid_log_probs(logits, level + 1, table), cache), None

  (beams, log_probs, cache), _ = jax.lax.scan(body, (beams, log_probs, cache),
                                              jnp.arange(num_levels - 1, dtype=jnp.int32))
  beams, items, code, rows = _extend(trie, num_levels - 1, beams, log_probs)
  if token_map.terminator:
    forced = terminator_log_probs(reorder_cache(cache, rows), logits_fn,
                                  table[num_levels - 1, code.reshape(-1)], token_map, num_levels)
    scores, order = jax.lax.top_k(beams.scores + forced.sum(0).reshape(batch, beam_size),
                                  beam_size)
    items = jnp.take_along_axis(items, order, axis=1)
    beams = beams.replace(scores=scores,
                          codes=jnp.take_along_axis(beams.codes, order[..., None], axis=1))
  found = beams.scores > NEG_INF / 2
  return BeamResult(items=jnp.where(found, items, -1),
                    codes=jnp.where(found[..., None], beams.codes, -1),
                    scores=jnp.where(found, beams.scores, NEG_INF))
