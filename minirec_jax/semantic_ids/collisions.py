"""Making item -> SID a bijection (host-side numpy; the tables are small).

Two strategies, both returning int32 codes with one distinct row per item:
* `resolve_sinkhorn` (official): every group of items sharing a full code
  tuple has its last level re-chosen by Sinkhorn-balanced assignment of the group's last-level
  residuals to the last codebook (distances min/max-centred to [-1, 1], float64,
  Q = exp(-d / eps), eps 0.003, 50 iterations, argmax), for up to 20 rounds. The official
  stops there and leaves identical embeddings collided; here a fallback then moves every
  remaining duplicate to the nearest last-level code still unused under its prefix. Only if a
  prefix has no free code left is an extra level appended (strategy b), which is reported.
* `append_rank` (strategy b): an extra code per item, its rank 0, 1, 2, ... (by item id)
  inside its collision group, 0 for unique items. Every SID keeps the fixed length L+1, so
  the trie and beam search keep static shapes (the official constrained RQ-KMeans instead
  adds the 4th token only to collided items).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def collision_groups(codes: np.ndarray) -> list[np.ndarray]:
  """Item ids (ascending) of every group of size > 1 sharing a full code row, by first id."""
  codes = np.asarray(codes)
  _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
  inverse = inverse.reshape(-1)
  order = np.argsort(inverse, kind='stable')
  bounds = np.cumsum(counts)[:-1]
  groups = [g for g in np.split(order, bounds) if len(g) > 1]
  return sorted(groups, key=lambda g: g[0])


def centred_distances(residuals: np.ndarray, codebook: np.ndarray) -> np.ndarray:
  """Squared distances `[m, K]` in float64, mapped linearly onto [-1, 1] (official centring)."""
  r = np.asarray(residuals, np.float64)
  c = np.asarray(codebook, np.float64)
  d = (r * r).sum(1, keepdims=True) + (c * c).sum(1)[None] - 2.0 * r @ c.T
  middle = (d.max() + d.min()) / 2.0
  amplitude = d.max() - middle + 1e-5
  return (d - middle) / amplitude


def sinkhorn_codes(distances: np.ndarray, epsilon: float = 0.003,
                   iterations: int = 50) -> np.ndarray:
  """Balanced assignment of m points to K codes from distances `[m, K]`: int `[m]`.

  Q = exp(-d / eps) is alternately normalised so each row sums to 1/K and each column to
  1/m (the column step last, as the official), then each row takes its argmax. Computed in
  log space: the same Q, but no overflow or 0/0 for tiny eps.
  """
  m, k = distances.shape
  log_q = -np.asarray(distances, np.float64) / epsilon
  log_q -= _logsumexp(log_q, axis=None)
  for _ in range(iterations):
    log_q -= _logsumexp(log_q, axis=1) + np.log(k)
    log_q -= _logsumexp(log_q, axis=0) + np.log(m)
  return np.argmax(log_q, axis=1)


def _logsumexp(a: np.ndarray, axis: int | None) -> np.ndarray:
  peak = np.max(a, axis=axis, keepdims=True)
  return peak + np.log(np.sum(np.exp(a - peak), axis=axis, keepdims=True))


class Resolution(NamedTuple):
  codes: np.ndarray              # int32 [n, L], or [n, L+1] if `appended`
  sinkhorn_rounds: int           # rounds that found collisions to re-assign
  fallback_moves: int            # items moved to the nearest free code after Sinkhorn
  exhausted_prefixes: list       # prefixes (tuples) whose K last-level codes ran out
  appended: bool                 # an extra rank level was added (strategy b)


def resolve_sinkhorn(codes: np.ndarray, last_residuals: np.ndarray,
                     last_codebook: np.ndarray, *, epsilon: float = 0.003,
                     iterations: int = 50, max_rounds: int = 20) -> Resolution:
  """Collision-free codes via official Sinkhorn rounds plus the nearest-free-code fallback.

  Args:
    codes: int `[n, L]` plain nearest-codeword codes.
    last_residuals: `[n, e]` each item's residual entering the last level.
    last_codebook: `[K, e]` the last level's codewords.
  """
  codes = np.array(codes, np.int32)
  residuals = np.asarray(last_residuals, np.float64)
  if codes.ndim != 2 or residuals.shape[0] != codes.shape[0]:
    raise ValueError(f'codes [n, L] and last_residuals [n, e] disagree: {codes.shape}, '
                     f'{residuals.shape}')
  rounds = 0
  for _ in range(max_rounds):
    groups = collision_groups(codes)
    if not groups:
      break
    rounds += 1
    for group in groups:
      codes[group, -1] = sinkhorn_codes(centred_distances(residuals[group], last_codebook),
                                        epsilon, iterations)
  codes, moves, exhausted = _nearest_free_code(codes, residuals, last_codebook)
  appended = bool(exhausted)
  if appended:
    codes = append_rank(codes, np.asarray(last_codebook).shape[0])
  _check_unique(codes)
  return Resolution(codes, rounds, moves, exhausted, appended)


def _nearest_free_code(codes: np.ndarray, residuals: np.ndarray,
                       codebook: np.ndarray) -> tuple[np.ndarray, int, list]:
  """Keeps each group's first item; moves the others to the nearest unused code."""
  codes = codes.copy()
  groups = collision_groups(codes)
  if not groups:
    return codes, 0, []
  k = np.asarray(codebook).shape[0]
  used: dict[tuple, set] = {}
  for row in codes:
    used.setdefault(tuple(row[:-1].tolist()), set()).add(int(row[-1]))
  moves, exhausted = 0, []
  c = np.asarray(codebook, np.float64)
  for group in groups:
    prefix = tuple(codes[group[0], :-1].tolist())
    taken = used[prefix]
    for item in group[1:]:
      if len(taken) == k:
        if prefix not in exhausted:
          exhausted.append(prefix)
        continue
      dist = ((c - residuals[item]) ** 2).sum(1)
      choice = next(int(j) for j in np.argsort(dist, kind='stable') if int(j) not in taken)
      codes[item, -1] = choice
      taken.add(choice)
      moves += 1
  return codes, moves, exhausted


def append_rank(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """Codes `[n, L]` -> `[n, L+1]`: last column = rank of the item in its collision group.

  The ranks share the levels' code range [0, codebook_size), so a group may hold at most
  `codebook_size` items.
  """
  codes = np.asarray(codes, np.int32)
  rank = np.zeros(len(codes), np.int32)
  for group in collision_groups(codes):
    if len(group) > codebook_size:
      raise ValueError(f'{len(group)} items share the SID {codes[group[0]].tolist()} (items '
                       f'{group[:5].tolist()}...): more than the {codebook_size} ranks a '
                       'level can hold')
    rank[group] = np.arange(len(group))
  out = np.concatenate([codes, rank[:, None]], axis=1)
  _check_unique(out)
  return out


def _check_unique(codes: np.ndarray) -> None:
  groups = collision_groups(codes)
  if groups:
    raise AssertionError(f'{len(groups)} collision groups remain, e.g. items '
                         f'{groups[0].tolist()}')
