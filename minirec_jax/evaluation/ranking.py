"""Ranking metrics with the official MiniOneRec definitions (`calc.py`), in numpy and jnp.

For each sample, r is the 0-based rank of the FIRST exact hit of the target in its ranked list
(a miss if the target is absent). With one relevant item (so IDCG = 1):

  HR@K   = 1             if r < K else 0
  NDCG@K = 1/log2(r + 2) if r < K else 0
  MRR@K  = 1/(r + 1)     if r < K else 0

each averaged over samples. Duplicates later in a list change nothing: only the first hit
counts. Negative ids in a ranked list are padding (e.g. unfilled beams) and never hit.

K values: `DEFAULT_KS` = (1, 3, 5, 10, 20, 50), like `calc.py`, which also drops every K longer
than the ranked lists (the beam count); `usable_ks` does the same here, so asking for K=50 of
20-item lists yields no @50 metrics rather than numbers equal to @20.

Same-SID items: the official code matches SID strings, so items sharing a SID (collisions) are
indistinguishable and a generated SID of the target's group is a hit. Matching item ids
reproduces that through `item_to_group`, an int array `[num_items]` mapping every item to a
group id shared by all items with the same SID (default: identity, exact item matching).

Two forms:
* numpy (the reference, float64): `first_hit_rank`, `metrics_from_ranks`, `compute_metrics`.
* jnp (pure, jittable with `ks` static; int32 ids): `first_hit_rank_jnp`,
  `metrics_from_ranks_jnp`, `batch_metrics_jnp`. The last returns per-sample ranks and
  metrics and `hits_at[r]`, the number of valid samples whose first hit is at rank r. Every
  metric sum is linear in `hits_at`, so summing `hits_at` and `count` over batches as
  integers (`RankCounts`) accumulates exactly; means are then computed once, in float64.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20, 50)
MISS = -1
METRIC_NAMES = ('hr', 'ndcg', 'mrr')
# The paper's Table 1 columns.
TABLE1_COLUMNS = ('hr@3', 'ndcg@3', 'hr@5', 'ndcg@5', 'hr@10', 'ndcg@10')


def usable_ks(ks: Sequence[int], list_length: int) -> tuple[int, ...]:
  """Sorted distinct K <= `list_length` (as `calc.py`); raises on K < 1."""
  bad = [k for k in ks if int(k) != k or k < 1]
  if bad:
    raise ValueError(f'cut-offs K must be positive integers, got {bad}')
  return tuple(sorted({int(k) for k in ks if k <= list_length}))


# ----------------------------------------------------------------------------------------------
# numpy reference


def first_hit_rank(ranked_items, targets, item_to_group=None) -> np.ndarray:
  """Rank of each target's first hit.

  Args:
    ranked_items: int `[batch, k]`, best first; negative ids are padding.
    targets: int `[batch]`, non-negative.
    item_to_group: optional int `[num_items]` (see module docstring); all ids must be in range.

  Returns:
    int32 `[batch]`: 0-based rank of the first hit, or MISS (-1).
  """
  ranked_items = np.asarray(ranked_items)
  targets = np.asarray(targets)
  if ranked_items.ndim != 2 or targets.shape != ranked_items.shape[:1]:
    raise ValueError(f'expected ranked_items [batch, k] and targets [batch], got '
                     f'{ranked_items.shape} and {targets.shape}')
  if targets.size and targets.min() < 0:
    raise ValueError(f'targets must be non-negative, got {targets.min()}')
  valid = ranked_items >= 0
  if item_to_group is not None:
    groups = np.asarray(item_to_group)
    top = max(ranked_items.max(initial=-1), targets.max(initial=-1))
    if top >= len(groups):
      raise ValueError(f'item id {top} is outside item_to_group (size {len(groups)})')
    ranked_items = groups[np.where(valid, ranked_items, 0)]
    targets = groups[targets]
  hits = valid & (ranked_items == targets[:, None])
  return np.where(hits.any(axis=1), hits.argmax(axis=1), MISS).astype(np.int32)


def metrics_from_ranks(ranks, ks: Sequence[int]) -> dict[str, np.ndarray]:
  """int `[batch]` first-hit ranks -> {'hr@K', 'ndcg@K', 'mrr@K': float64 `[batch]`}."""
  ranks = np.asarray(ranks)
  hit_rank = np.where(ranks >= 0, ranks, 0).astype(np.float64)
  out = {}
  for k in ks:
    within = ((ranks >= 0) & (ranks < k)).astype(np.float64)
    out[f'hr@{k}'] = within
    out[f'ndcg@{k}'] = within / np.log2(hit_rank + 2.0)
    out[f'mrr@{k}'] = within / (hit_rank + 1.0)
  return out


def compute_metrics(ranked_items, targets, ks: Sequence[int] = DEFAULT_KS, *,
                    item_to_group=None, valid=None) -> dict[str, float]:
  """Mean HR/NDCG/MRR@K over the samples with `valid` (default all); K <= list length only."""
  ranked_items = np.asarray(ranked_items)
  ks = usable_ks(ks, ranked_items.shape[1])
  ranks = first_hit_rank(ranked_items, targets, item_to_group)
  keep = np.ones(len(ranks), bool) if valid is None else np.asarray(valid, bool)
  if not keep.any():
    raise ValueError('no samples to average over')
  return {key: float(np.mean(v[keep])) for key, v in metrics_from_ranks(ranks, ks).items()}


# ----------------------------------------------------------------------------------------------
# jnp (jittable)


class BatchMetrics(NamedTuple):
  """Metrics of one batch (a pytree). Padded rows (valid=False) read as misses everywhere.

  ranks: int32 `[batch]` first-hit rank or MISS.
  per_sample: {'hr@K', 'ndcg@K', 'mrr@K': float32 `[batch]`}.
  hits_at: int32 `[k]`: valid samples whose first hit is at each rank.
  count: int32 scalar: valid samples.
  """

  ranks: jax.Array
  per_sample: dict[str, jax.Array]
  hits_at: jax.Array
  count: jax.Array


def first_hit_rank_jnp(ranked_items: jax.Array, targets: jax.Array,
                       item_to_group: jax.Array | None = None) -> jax.Array:
  """jnp `first_hit_rank`: `[batch, k]`, `[batch]` -> int32 `[batch]`.

  Ids outside `item_to_group` are not checked (jit cannot raise): the caller keeps them in
  range.
  """
  chex.assert_rank([ranked_items, targets], [2, 1])
  chex.assert_equal_shape_prefix([ranked_items, targets], 1)
  k = ranked_items.shape[1]
  valid = ranked_items >= 0
  if item_to_group is not None:
    chex.assert_rank(item_to_group, 1)
    ranked_items = item_to_group[jnp.where(valid, ranked_items, 0)]
    targets = item_to_group[targets]
  hits = valid & (ranked_items == targets[:, None])
  first = jnp.min(jnp.where(hits, jnp.arange(k, dtype=jnp.int32), k), axis=1)
  return jnp.where(first < k, first, MISS).astype(jnp.int32)


def metrics_from_ranks_jnp(ranks: jax.Array, ks: Sequence[int]) -> dict[str, jax.Array]:
  """jnp `metrics_from_ranks`: int `[batch]` -> float32 `[batch]` per metric."""
  chex.assert_rank(ranks, 1)
  hit = ranks >= 0
  discount = jnp.log2(jnp.where(hit, ranks, 0).astype(jnp.float32) + 2.0)
  reciprocal = 1.0 / (jnp.where(hit, ranks, 0).astype(jnp.float32) + 1.0)
  out = {}
  for k in ks:
    within = hit & (ranks < k)
    out[f'hr@{k}'] = within.astype(jnp.float32)
    out[f'ndcg@{k}'] = jnp.where(within, 1.0 / discount, 0.0)
    out[f'mrr@{k}'] = jnp.where(within, reciprocal, 0.0)
  return out


def batch_metrics_jnp(ranked_items: jax.Array, targets: jax.Array, ks: Sequence[int], *,
                      valid: jax.Array | None = None,
                      item_to_group: jax.Array | None = None) -> BatchMetrics:
  """Ranks, per-sample metrics and exact counts of one batch.

  Args:
    ranked_items: int32 `[batch, k]`, best first; negative ids are padding.
    targets: int32 `[batch]`.
    ks: static cut-offs (pass them through `usable_ks` first to follow `calc.py`).
    valid: optional bool `[batch]`; False marks padded batch rows, left out of every output.
    item_to_group: optional int32 `[num_items]`.

  Returns:
    BatchMetrics.
  """
  ranks = first_hit_rank_jnp(ranked_items, targets, item_to_group)
  if valid is not None:
    chex.assert_shape(valid, ranks.shape)
    ranks = jnp.where(valid, ranks, MISS)
  count = (jnp.sum(valid, dtype=jnp.int32) if valid is not None
           else jnp.asarray(ranks.shape[0], jnp.int32))
  # one_hot of MISS (-1) is all zeros, so misses and padded rows add nothing.
  hits_at = jnp.sum(jax.nn.one_hot(ranks, ranked_items.shape[1], dtype=jnp.int32), axis=0)
  return BatchMetrics(ranks, metrics_from_ranks_jnp(ranks, ks), hits_at, count)


# ----------------------------------------------------------------------------------------------
# Exact accumulation on the host


@dataclasses.dataclass(frozen=True)
class RankCounts:
  """How many samples first hit at each rank, and how many samples: sums over batches exactly.

  hits_at: int64 `[list_length]`; `list_length` is the longest ranked list seen, which bounds
  the usable K.
  """

  hits_at: np.ndarray
  count: int

  @classmethod
  def zeros(cls, list_length: int = 0) -> RankCounts:
    return cls(np.zeros(list_length, np.int64), 0)

  @classmethod
  def from_ranks(cls, ranks, list_length: int, valid=None) -> RankCounts:
    """From first-hit ranks `[batch]` (MISS for misses) of lists of `list_length` items."""
    ranks = np.asarray(ranks)
    keep = np.ones(len(ranks), bool) if valid is None else np.asarray(valid, bool)
    if ranks.max(initial=MISS) >= list_length:
      raise ValueError(f'rank {ranks.max()} is outside lists of {list_length} items')
    hits = ranks[keep & (ranks >= 0)]
    return cls(np.bincount(hits, minlength=list_length).astype(np.int64), int(keep.sum()))

  @classmethod
  def from_batch(cls, batch: BatchMetrics) -> RankCounts:
    """From (device or host) `batch_metrics_jnp` output."""
    return cls(np.asarray(batch.hits_at, np.int64), int(batch.count))

  @property
  def list_length(self) -> int:
    return len(self.hits_at)

  def __add__(self, other: RankCounts) -> RankCounts:
    n = max(self.list_length, other.list_length)
    hits_at = np.zeros(n, np.int64)
    hits_at[:self.list_length] += self.hits_at
    hits_at[:other.list_length] += other.hits_at
    return RankCounts(hits_at, self.count + other.count)

  def means(self, ks: Sequence[int] = DEFAULT_KS) -> dict[str, float]:
    """Mean HR/NDCG/MRR@K (float64) for the K <= list_length."""
    if self.count == 0:
      raise ValueError('no samples to average over')
    rank = np.arange(self.list_length, dtype=np.float64)
    out = {}
    for k in usable_ks(ks, self.list_length):
      head = self.hits_at[:k]
      out[f'hr@{k}'] = float(head.sum() / self.count)
      out[f'ndcg@{k}'] = float(np.sum(head / np.log2(rank[:k] + 2.0)) / self.count)
      out[f'mrr@{k}'] = float(np.sum(head / (rank[:k] + 1.0)) / self.count)
    return out


# ----------------------------------------------------------------------------------------------
# Tables


def table1(rows: Mapping[str, Mapping[str, float]],
           columns: Sequence[str] = TABLE1_COLUMNS) -> str:
  """Markdown table laid out like the paper's Table 1: one row per method, 4 decimals.

  Args:
    rows: method name -> metrics dict ('hr@3', ...); a missing metric shows as '-'.
    columns: metric keys, in order.
  """
  lines = ['| method | ' + ' | '.join(c.upper() for c in columns) + ' |',
           '|---|' + '---:|' * len(columns)]
  for name, metrics in rows.items():
    cells = [f'{metrics[c]:.4f}' if c in metrics else '-' for c in columns]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def full_table(metrics: Mapping[str, float]) -> str:
  """Markdown table of every K present: one row per metric (HR, NDCG, MRR), 4 decimals."""
  ks = sorted({int(key.split('@')[1]) for key in metrics if key.startswith('hr@')})
  lines = ['| metric | ' + ' | '.join(f'@{k}' for k in ks) + ' |',
           '|---|' + '---:|' * len(ks)]
  for name in METRIC_NAMES:
    cells = [f'{metrics[f"{name}@{k}"]:.4f}' if f'{name}@{k}' in metrics else '-' for k in ks]
    lines.append(f'| {name.upper()} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)
