"""Two metric levels: ranked ITEM lists (primary) and ranked SID lists (the official metric).

A generative model ranks semantic IDs. When several items share one SID (a collision, e.g. 31
items in 15 groups of the official Industrial SIDs), the official evaluation counts a generated
SID as a hit for every item of its group, which lets a model that cannot tell those items apart
score as if it could. This module defines both levels for every method:

* Item level (primary). A ranked list is a list of items. A generated SID stands for all the
  items that share it, in a fixed order: most frequent training target first, ties by lower
  item id (`members_by_popularity`); `expand` turns a ranked list of SIDs into that item list,
  so a collided group fills several consecutive places. A model that ranks items (SASRec) is
  read as it is. Metrics are the ones of `ranking` on that item list, without groups.
* SID level (official, for comparison with the paper's Table 1). The item list is read as a
  list of distinct SIDs: each item stands for its SID group, and only the first item of each
  group keeps its place (`distinct_groups`); a hit is the target's group. For a generative
  model this gives back exactly its ranked SIDs; for an item ranker, items of one group
  after the first drop out instead of taking places.

Without collisions the two levels are equal. Metric keys: 'hr@K' etc. for the item level and
'sid_hr@K' etc. (`SID_PREFIX`) for the SID level.
"""

from __future__ import annotations

from typing import Sequence

from absl import logging
import numpy as np

from minirec_jax.evaluation import ranking

SID_PREFIX = 'sid_'


def members_by_popularity(item_to_group: np.ndarray, popularity: np.ndarray) -> np.ndarray:
  """The items of each SID group, in the item-level order.

  Args:
    item_to_group: int `[num_items]`: the group id of each item (a group id is an item id,
      e.g. the group's first item).
    popularity: `[num_items]` counts (e.g. how often each item is a training target).

  Returns:
    int32 `[num_items, width]` (width = the largest group): row g lists the items of group g,
    most popular first, ties by item id, padded with -1; rows of ids that are no group's id
    are all -1.
  """
  item_to_group = np.asarray(item_to_group)
  popularity = np.asarray(popularity)
  n = len(item_to_group)
  if popularity.shape != (n,):
    raise ValueError(f'popularity must have shape ({n},), got {popularity.shape}')
  if n and (item_to_group.min() < 0 or item_to_group.max() >= n):
    raise ValueError(f'group ids must be item ids in [0, {n})')
  # Sort by group, then popularity descending, then item id: members of a group become a run.
  order = np.lexsort((np.arange(n), -popularity, item_to_group))
  groups = item_to_group[order]
  starts = np.searchsorted(groups, groups, side='left')
  slot = np.arange(n) - starts
  width = int(slot.max()) + 1 if n else 1
  members = np.full((n, width), -1, np.int32)
  members[groups, slot] = order
  return members


def _compact(keep: np.ndarray, *arrays: np.ndarray, fill=-1) -> list[np.ndarray]:
  """Each array `[b, n]` with the entries where `keep` is True moved to the front of their row
  (order kept) and `fill` after them."""
  order = np.argsort(~keep, axis=1, kind='stable')
  kept = np.take_along_axis(keep, order, axis=1)
  return [np.where(kept, np.take_along_axis(a, order, axis=1), fill) for a in arrays]


def expand(ranked_groups: np.ndarray, scores: np.ndarray,
           members: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Ranked SID groups `[b, n]` (group ids, -1 = padding) and their scores -> ranked items
  and scores `[b, n * width]`.

  Every group is replaced by its members (`members_by_popularity`), in place, each with its
  SID's score; rows end with -1 padding (score 0). Without collisions (width 1) this changes
  nothing.
  """
  ranked_groups = np.asarray(ranked_groups)
  b, n = ranked_groups.shape
  width = members.shape[1]
  items = np.where(ranked_groups[..., None] >= 0, members[np.maximum(ranked_groups, 0)], -1)
  items = items.reshape(b, n * width)
  item_scores = np.repeat(np.asarray(scores, np.float32), width, axis=1)
  keep = items >= 0
  (items,) = _compact(keep, items)
  (item_scores,) = _compact(keep, item_scores, fill=0.0)
  return items, item_scores


def distinct_groups(ranked_items: np.ndarray, item_to_group: np.ndarray) -> np.ndarray:
  """Ranked items `[b, k]` -> the same list with only the first item of each SID group kept
  (moved up to close the gaps, -1 padded): the list read as ranked distinct SIDs."""
  ranked_items = np.asarray(ranked_items)
  valid = ranked_items >= 0
  groups = np.where(valid, np.asarray(item_to_group)[np.maximum(ranked_items, 0)], -1)
  k = ranked_items.shape[1]
  earlier = np.tril(np.ones((k, k), bool), -1)  # earlier[j, i]: i < j
  repeated = np.any((groups[:, :, None] == groups[:, None, :]) & earlier[None]
                    & valid[:, None, :], axis=2)
  return _compact(valid & ~repeated, ranked_items)[0]


def level_ranks(ranked_items: np.ndarray, targets: np.ndarray,
                item_to_group: np.ndarray | None) -> dict[str, np.ndarray]:
  """First-hit ranks int32 `[b]` at both levels: {'item': ..., 'sid': ...} (MISS = -1).

  With `item_to_group` None (no SIDs, e.g. a dataset without them), both levels are the item
  level.
  """
  item = ranking.first_hit_rank(ranked_items, targets)
  if item_to_group is None:
    return {'item': item, 'sid': item}
  sid = ranking.first_hit_rank(distinct_groups(ranked_items, item_to_group), targets,
                               item_to_group)
  return {'item': item, 'sid': sid}


def level_counts(ranked_items: np.ndarray, targets: np.ndarray, item_to_group: np.ndarray | None,
                 valid: np.ndarray | None = None) -> dict[str, ranking.RankCounts]:
  """Exact rank counts at both levels (sum them over batches, then `level_means`)."""
  length = np.asarray(ranked_items).shape[1]
  return {level: ranking.RankCounts.from_ranks(ranks, length, valid=valid)
          for level, ranks in level_ranks(ranked_items, targets, item_to_group).items()}


def add_counts(a: dict[str, ranking.RankCounts],
               b: dict[str, ranking.RankCounts]) -> dict[str, ranking.RankCounts]:
  return {level: a[level] + b[level] for level in b} if a else dict(b)


def level_means(counts: dict[str, ranking.RankCounts], ks: Sequence[int],
                list_length: int | None = None) -> dict[str, float]:
  """Means at both levels in one dict: item level 'hr@K'..., SID level 'sid_hr@K'....

  `list_length` caps the usable K (e.g. the beam size, when expanded lists run longer).
  """
  ks = [k for k in ks if list_length is None or k <= list_length]
  out = dict(counts['item'].means(ks))
  out.update({SID_PREFIX + key: value for key, value in counts['sid'].means(ks).items()})
  return out


def sid_level(metrics: dict[str, float]) -> dict[str, float]:
  """The SID-level entries of a two-level metrics dict, under the plain names ('hr@K')."""
  return {key[len(SID_PREFIX):]: value for key, value in metrics.items()
          if key.startswith(SID_PREFIX)}


def train_popularity(dataset) -> np.ndarray:
  """int64 `[num_items]`: how often each item is the target of a training row, the order of
  a SID group's items at item level. A dataset without a train split (e.g. the shared
  Office_Products data) gets zeros, i.e. item-id order, with a warning."""
  if 'train' not in dataset.splits:
    logging.warning('%s has no train split: items sharing a SID are listed in item-id order',
                    dataset.name)
    return np.zeros(dataset.num_items, np.int64)
  source = dataset.split('train')
  targets = np.asarray([e['target'] for e in source.__getitems__(list(range(len(source))))],
                       np.int64).reshape(-1)
  return np.bincount(targets, minlength=dataset.num_items)
