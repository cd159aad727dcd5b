"""Ranking metrics with the official MiniOneRec definitions (calc.py), in numpy and jnp.

For each sample, r is the 0-based rank of the FIRST exact hit of the target in its ranked list
(a miss if absent). Then HR@K = [r < K], NDCG@K = [r < K] / log2(r + 2) (one relevant item, so
IDCG = 1) and MRR@K = [r < K] / (r + 1), averaged over samples. K is limited to the list
length. Items that must count as the same item (e.g. items sharing an official SID, which the
official code cannot tell apart) are compared through `item_to_group`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

DEFAULT_KS = (1, 3, 5, 10, 20, 50)
MISS = -1
METRIC_NAMES = ('hr', 'ndcg', 'mrr')


def first_hit_rank(ranked_items, targets, item_to_group=None) -> np.ndarray:
  """numpy: `[batch, k]` ranked ids, `[batch]` targets -> `[batch]` rank of first hit or -1.

  Negative ids in `ranked_items` are padding and never hit.
  """
  ranked_items = np.asarray(ranked_items)
  targets = np.asarray(targets)
  if item_to_group is not None:
    groups = np.asarray(item_to_group)
    ranked_items = np.where(ranked_items >= 0, groups[np.maximum(ranked_items, 0)], -1)
    targets = groups[targets]
  hits = ranked_items == targets[:, None]
  return np.where(hits.any(axis=1), hits.argmax(axis=1), MISS)


def first_hit_rank_jnp(ranked_items: jax.Array, targets: jax.Array,
                       item_to_group: jax.Array | None = None) -> jax.Array:
  """jnp version of `first_hit_rank` (jittable): int32 `[batch]`."""
  chex.assert_rank(ranked_items, 2)
  chex.assert_rank(targets, 1)
  if item_to_group is not None:
    ranked_items = jnp.where(ranked_items >= 0, item_to_group[jnp.maximum(ranked_items, 0)], -1)
    targets = item_to_group[targets]
  hits = ranked_items == targets[:, None]
  return jnp.where(hits.any(axis=1), jnp.argmax(hits, axis=1), MISS).astype(jnp.int32)


def per_sample_metrics(ranks, ks: Sequence[int], xp=np) -> dict[str, np.ndarray]:
  """`[batch]` first-hit ranks -> {'hr@K', 'ndcg@K', 'mrr@K': `[batch]` float32}. xp: np|jnp."""
  ranks = xp.asarray(ranks)
  hit = ranks >= 0
  safe = xp.where(hit, ranks, 0).astype(xp.float32)
  out = {}
  for k in ks:
    within = (hit & (ranks < k)).astype(xp.float32)
    out[f'hr@{k}'] = within
    out[f'ndcg@{k}'] = within / xp.log2(safe + 2.0)
    out[f'mrr@{k}'] = within / (safe + 1.0)
  return out


def usable_ks(ks: Sequence[int], list_length: int) -> list[int]:
  return [k for k in ks if k <= list_length]


@dataclasses.dataclass(frozen=True)
class MetricSums:
  """Sums of per-sample metrics and the sample count: exact accumulation over batches."""

  sums: dict[str, float]
  count: int

  @classmethod
  def zeros(cls, ks: Sequence[int]) -> 'MetricSums':
    return cls({f'{m}@{k}': 0.0 for k in ks for m in METRIC_NAMES}, 0)

  def add(self, other: 'MetricSums') -> 'MetricSums':
    return MetricSums({k: v + other.sums[k] for k, v in self.sums.items()},
                      self.count + other.count)

  def means(self) -> dict[str, float]:
    return {k: v / max(self.count, 1) for k, v in self.sums.items()}


def metric_sums(ranked_items, targets, ks: Sequence[int], *, valid=None,
                item_to_group=None) -> MetricSums:
  """MetricSums of one batch; rows with valid=False (batch padding) are left out."""
  ranks = first_hit_rank(ranked_items, targets, item_to_group)
  valid = np.ones(len(ranks), bool) if valid is None else np.asarray(valid, bool)
  per_sample = per_sample_metrics(ranks, ks)
  return MetricSums({k: float(np.sum(v[valid])) for k, v in per_sample.items()},
                    int(valid.sum()))


def compute_metrics(ranked_items, targets, ks: Sequence[int] = DEFAULT_KS,
                    item_to_group=None) -> dict[str, float]:
  """Mean metrics over samples; K values longer than the lists are dropped."""
  ranked_items = np.asarray(ranked_items)
  ks = usable_ks(ks, ranked_items.shape[1])
  return metric_sums(ranked_items, targets, ks, item_to_group=item_to_group).means()


TABLE1_COLUMNS = ('hr@3', 'ndcg@3', 'hr@5', 'ndcg@5', 'hr@10', 'ndcg@10')


def table1(rows: dict[str, dict[str, float]], columns: Sequence[str] = TABLE1_COLUMNS) -> str:
  """Markdown table in the layout of the paper's Table 1: one row per method."""
  header = '| method | ' + ' | '.join(c.upper() for c in columns) + ' |'
  lines = [header, '|---|' + '---|' * len(columns)]
  for name, metrics in rows.items():
    cells = [f'{metrics[c]:.4f}' if c in metrics else '-' for c in columns]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines)


def full_table(metrics: dict[str, float]) -> str:
  """Markdown table: one row per metric (HR, NDCG, MRR), one column per K present."""
  ks = sorted(int(key[3:]) for key in metrics if key.startswith('hr@'))
  lines = ['| metric | ' + ' | '.join(f'@{k}' for k in ks) + ' |', '|---|' + '---|' * len(ks)]
  for name in METRIC_NAMES:
    lines.append(f'| {name.upper()} | ' +
                 ' | '.join(f'{metrics[f"{name}@{k}"]:.4f}' for k in ks) + ' |')
  return '\n'.join(lines)
