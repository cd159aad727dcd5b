"""Paired comparison of two runs' predictions on the same evaluation rows.

Two models scored on the same users differ by much less noise than two independent samples:
the per-row difference of a metric has its own, usually much smaller, standard error. This is
what says whether e.g. GRPO really moved HR@10 over its SFT start.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Sequence

import numpy as np

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import metric_logging


@dataclasses.dataclass(frozen=True)
class PairedDifference:
  """`metric` of run b minus run a over `n` shared rows, with the paired standard error."""

  metric: str
  a: float
  b: float
  diff: float
  stderr: float
  n: int

  @property
  def z(self) -> float:
    return self.diff / self.stderr if self.stderr > 0 else 0.0


def is_predictions_file(run: str) -> bool:
  """Whether `run` names a predictions file (.jsonl / .jsonl.gz, e.g. one committed under
  docs/runs/) rather than a workdir."""
  return run.endswith(('.jsonl', '.jsonl.gz'))


def predictions_file(run: str, split: str) -> str:
  """A run's predictions: `run` itself when it is a predictions file, else
  `<run>/predictions_<split>.jsonl`."""
  if is_predictions_file(run):
    return run
  return os.path.join(run, f'predictions_{split}.jsonl')


def file_metrics(path: str | os.PathLike, ks: Sequence[int]) -> dict[str, float]:
  """Item-level metrics of a predictions file: the mean of `per_row_metrics` over its rows."""
  _, values = per_row_metrics(path, ks)
  return {m: float(v.mean()) for m, v in values.items()}


def per_row_metrics(path: str | os.PathLike, ks: Sequence[int], item_to_group=None,
                    level: str = 'item') -> tuple[list[tuple[str, int]], dict[str, np.ndarray]]:
  """((user_id, target) per row, {'hr@K'|'ndcg@K'|'mrr@K': float64 `[rows]`}) of a file, at
  the item level or (with `item_to_group`) the SID level of `item_lists`."""
  if level not in ('item', 'sid'):
    raise ValueError(f"level must be 'item' or 'sid', got {level!r}")
  rows = list(predictions.read(path))
  if not rows:
    raise DataError('no prediction rows', path=os.fspath(path))
  items, targets = predictions.ranked_arrays(rows)
  ranks = item_lists.level_ranks(items, targets, item_to_group)[level]
  keys = [(r['user_id'], r['target']) for r in rows]
  return keys, ranking.metrics_from_ranks(ranks, ks)


def row_standard_errors(paths: Sequence[str | os.PathLike],
                        ks: Sequence[int]) -> dict[str, float]:
  """Standard error of each metric's mean over the rows of one predictions file (sample std /
  sqrt(rows)), averaged over `paths` (e.g. seeds)."""
  per_file = []
  for path in paths:
    _, values = per_row_metrics(path, ks)
    per_file.append({m: float(v.std(ddof=1) / np.sqrt(len(v))) for m, v in values.items()})
  return {m: float(np.mean([f[m] for f in per_file])) for m in per_file[0]}


def _aligned_rows(path_a: str | os.PathLike, path_b: str | os.PathLike, ks: Sequence[int],
                  item_to_group, level: str):
  """(row keys, per-row metrics of a, of b) of two files that must hold the same rows (users
  and targets) in the same order."""
  keys_a, a = per_row_metrics(path_a, ks, item_to_group, level)
  keys_b, b = per_row_metrics(path_b, ks, item_to_group, level)
  if len(keys_a) != len(keys_b):
    raise DataError(f'has {len(keys_b)} rows but {os.fspath(path_a)} has {len(keys_a)}; '
                    'compare predictions of the same split', path=os.fspath(path_b))
  for line, (ka, kb) in enumerate(zip(keys_a, keys_b), start=1):
    if ka != kb:
      raise DataError(f'row differs from {os.fspath(path_a)} ({ka[0]}, target {ka[1]})',
                      path=os.fspath(path_b), line=line, field='user_id/target',
                      value=f'{kb[0]}/{kb[1]}')
  return keys_a, a, b


def _differences(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[PairedDifference]:
  out = []
  for metric in a:
    d = b[metric] - a[metric]
    n = len(d)
    stderr = float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else 0.0
    out.append(PairedDifference(metric, float(a[metric].mean()), float(b[metric].mean()),
                                float(d.mean()), stderr, n))
  return out


def paired_differences(path_a: str | os.PathLike, path_b: str | os.PathLike,
                       ks: Sequence[int] = (10,), item_to_group=None,
                       level: str = 'item') -> list[PairedDifference]:
  """Per-metric b - a over the same rows (same users and targets, in the same order), at the
  item level or the SID level (`per_row_metrics`)."""
  _, a, b = _aligned_rows(path_a, path_b, ks, item_to_group, level)
  return _differences(a, b)


def averaged_paired_differences(pairs: Sequence[tuple[str | os.PathLike, str | os.PathLike]],
                                ks: Sequence[int] = (10,), item_to_group=None,
                                level: str = 'item') -> list[PairedDifference]:
  """b - a averaged over (a, b) pairs that share their rows, e.g. a variant against the default
  at each of 3 seeds: each row's metric is averaged over the pairs first, so the standard error
  counts that every pair is scored on the same users (their differences are correlated)."""
  if not pairs:
    raise ValueError('no pairs to average')
  first_keys, a_runs, b_runs = None, [], []
  for path_a, path_b in pairs:
    keys, a, b = _aligned_rows(path_a, path_b, ks, item_to_group, level)
    if first_keys is not None and keys != first_keys:
      raise DataError(f'holds other rows than {os.fspath(pairs[0][0])}; every pair must be '
                      'scored on the same rows', path=os.fspath(path_a))
    first_keys = keys
    a_runs.append(a)
    b_runs.append(b)

  def row_means(runs):
    return {m: np.mean([run[m] for run in runs], axis=0) for m in runs[0]}

  return _differences(row_means(a_runs), row_means(b_runs))


def mean_and_spread(runs: Sequence[dict[str, float]]) -> dict[str, tuple[float, float]]:
  """{metric: (mean, sample std)} over runs (e.g. seeds) of the metrics they all report."""
  if not runs:
    raise ValueError('no runs to summarise')
  shared = set(runs[0]).intersection(*runs[1:])
  out = {}
  for metric in sorted(shared):
    values = np.asarray([run[metric] for run in runs], np.float64)
    out[metric] = (float(values.mean()), float(values.std(ddof=1)) if len(values) > 1 else 0.0)
  return out


def train_summary(workdir: str | os.PathLike,
                  names: Sequence[str]) -> dict[str, dict[str, float]]:
  """Per training metric `train/<name>` in a run's metrics.jsonl: the mean over the logged steps
  and the last logged value (NaN for a metric never logged)."""
  rows = metric_logging.read_metrics(os.fspath(workdir))
  out = {}
  for name in names:
    values = [row[f'train/{name}'] for row in rows if f'train/{name}' in row]
    out[name] = {'mean': float(np.mean(values)) if values else float('nan'),
                 'last': float(values[-1]) if values else float('nan')}
  return out
