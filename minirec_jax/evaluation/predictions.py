"""Predictions files (JSONL, one object per evaluated sample) and their ranking metrics.

Each line is one object with these keys (no others):

  user_id       str          the sample's user
  target        int >= 0     the target item id
  items         list[int]    recommended item ids (>= 0), best first; may be shorter than the
                             beam when fewer valid items came out, or empty
  scores        list[float]  their scores (e.g. beam log-probs): same length as `items`, finite,
                             descending (ties allowed)
  sample_index  int >= 0     optional: row of the sample in its split
  split         str          optional: split name ('valid', 'test', ...)

Example:
  {"user_id": "A1B2", "target": 17, "items": [17, 4, 9], "scores": [-0.3, -1.2, -2.5],
   "sample_index": 0, "split": "test"}

`write` validates and streams rows into a temporary file that replaces the target only when
complete (io_utils); a path ending in '.gz' is read and written gzip-compressed. `read`
validates every line and raises a DataError naming the file, line, field and value of the
first problem. `file_metrics` recomputes the ranking metrics of a file
(see ranking.py) in bounded memory; like `calc.py`, it only reports K up to the longest list.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from minirec_jax.data.errors import DataError, json_lines, require_file
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import ranking
from minirec_jax.infra import io_utils

REQUIRED_FIELDS = ('user_id', 'target', 'items', 'scores')
OPTIONAL_FIELDS = ('sample_index', 'split')
# Stands for the whole line in errors that are not about one key.
WHOLE_LINE = '(line)'


def make_row(user_id: str, target: int, items: Sequence[int], scores: Sequence[float], *,
             sample_index: int | None = None, split: str | None = None) -> dict[str, Any]:
  """A row with plain Python types (numpy scalars and arrays are converted)."""
  row = {'user_id': str(user_id), 'target': int(target),
         'items': [int(i) for i in np.asarray(items).reshape(-1)],
         'scores': [float(s) for s in np.asarray(scores).reshape(-1)]}
  if sample_index is not None:
    row['sample_index'] = int(sample_index)
  if split is not None:
    row['split'] = str(split)
  return row


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
  return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_id(value, path: str, line: int, field: str) -> None:
  if not _is_int(value):
    raise DataError('expected an integer item id', path=path, line=line, field=field,
                    value=value, has_value=True)
  if value < 0:
    raise DataError('item ids must be >= 0', path=path, line=line, field=field, value=value)


def validate_row(row, path: str, line: int) -> dict[str, Any]:
  """Returns `row` if it follows the format above; otherwise raises a DataError."""
  if not isinstance(row, dict):
    raise DataError('expected a JSON object', path=path, line=line, field=WHOLE_LINE,
                    value=row, has_value=True)
  for field in row:
    if field not in REQUIRED_FIELDS + OPTIONAL_FIELDS:
      raise DataError(f'unknown field (expected {REQUIRED_FIELDS + OPTIONAL_FIELDS})',
                      path=path, line=line, field=field, value=row[field], has_value=True)
  for field in REQUIRED_FIELDS:
    if field not in row:
      raise DataError('missing field', path=path, line=line, field=field)

  def fail(problem: str, field: str, value) -> DataError:
    return DataError(problem, path=path, line=line, field=field, value=value, has_value=True)

  for field in ('user_id', 'split'):
    if field in row and not isinstance(row[field], str):
      raise fail('expected a string', field, row[field])
  if 'sample_index' in row and not (_is_int(row['sample_index']) and row['sample_index'] >= 0):
    raise fail('expected an integer >= 0', 'sample_index', row['sample_index'])
  _check_id(row['target'], path, line, 'target')
  items, scores = row['items'], row['scores']
  if not isinstance(items, list):
    raise fail('expected a list of item ids', 'items', items)
  if not isinstance(scores, list):
    raise fail('expected a list of numbers', 'scores', scores)
  for i, item in enumerate(items):
    _check_id(item, path, line, f'items[{i}]')
  for i, score in enumerate(scores):
    if not _is_number(score) or not math.isfinite(score):
      raise fail('expected a finite number', f'scores[{i}]', score)
    if i and score > scores[i - 1]:
      raise fail(f'scores must be descending (previous score {scores[i - 1]!r})',
                 f'scores[{i}]', score)
  if len(items) != len(scores):
    raise fail(f'{len(scores)} scores for {len(items)} items', 'scores', scores)
  return row


def rounded(rows: Iterable[dict], decimals: int) -> Iterator[dict]:
  """The rows with scores rounded to `decimals` (order kept: rounding never reorders), e.g. to
  commit a smaller file of a run's predictions."""
  for row in rows:
    yield {**row, 'scores': [round(s, decimals) for s in row['scores']]}


def write(path: str | os.PathLike, rows: Iterable[dict]) -> int:
  """Validates and writes rows atomically, one per line, streaming; returns the row count."""
  path = os.fspath(path)
  return io_utils.write_jsonl(
      path, (validate_row(row, path, line) for line, row in enumerate(rows, start=1)))


def _read_numbered(path: str) -> Iterator[tuple[int, dict]]:
  require_file(path, 'predictions file')
  for line_no, row in json_lines(path):
    yield line_no, validate_row(row, path, line_no)


def read(path: str | os.PathLike) -> Iterator[dict]:
  """Yields the validated rows of a predictions file (blank lines are skipped)."""
  for _, row in _read_numbered(os.fspath(path)):
    yield row


def ranked_arrays(rows: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(items int64 `[n, longest]` padded with -1, targets int64 `[n]`) for ranking.py."""
  width = max((len(r['items']) for r in rows), default=0)
  items = np.full((len(rows), width), -1, np.int64)
  for i, r in enumerate(rows):
    items[i, :len(r['items'])] = r['items']
  return items, np.asarray([r['target'] for r in rows], np.int64)


ITEM_GROUPS_FILE = 'item_groups.npy'  # written next to a run's predictions files


def save_item_groups(path: str | os.PathLike, item_to_group: np.ndarray) -> None:
  """Writes `item_to_group` int32 `[num_items]` atomically (read by `load_item_groups`)."""
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, np.asarray(item_to_group, np.int32), allow_pickle=False)


def load_item_groups(path: str | os.PathLike) -> np.ndarray:
  """Reads an `item_to_group` array (.npy, 1-D, integers >= 0) for same-SID matching."""
  path = require_file(os.fspath(path), 'item groups .npy file')
  try:
    groups = np.load(path, allow_pickle=False)
  except (OSError, ValueError) as exc:
    raise DataError(f'not a readable .npy array ({exc})', path=path) from None
  if not isinstance(groups, np.ndarray) or groups.ndim != 1:
    raise DataError('expected a 1-D .npy array item -> group', path=path)
  if not np.issubdtype(groups.dtype, np.integer):
    raise DataError(f'expected integer group ids, got dtype {groups.dtype}', path=path)
  if groups.size and groups.min() < 0:
    row = int(np.argmin(groups))
    raise DataError('group ids must be >= 0', path=path, field=f'[{row}]',
                    value=int(groups[row]))
  return groups


@dataclasses.dataclass(frozen=True)
class FileMetrics:
  """Metrics of a predictions file.

  samples: rows read. list_length: the longest ranked list. metrics: 'hr@K', 'ndcg@K',
  'mrr@K' for the usable K (item level), with item groups also 'sid_hr@K', ... (SID level).
  dropped_ks: requested K longer than every list.
  """

  path: str
  samples: int
  list_length: int
  metrics: dict[str, float]
  dropped_ks: tuple[int, ...]

  def to_json(self) -> dict[str, Any]:
    return {'predictions': self.path, 'samples': self.samples,
            'list_length': self.list_length, **self.metrics}


def _check_in_groups(row: dict, num_items: int, path: str, line: int) -> None:
  for field, item in [('target', row['target'])] + [
      (f'items[{i}]', item) for i, item in enumerate(row['items'])]:
    if item >= num_items:
      raise DataError(f'item id outside the item groups ({num_items} items)', path=path,
                      line=line, field=field, value=item)


def _rank_counts(rows: list[dict], item_to_group) -> dict[str, ranking.RankCounts]:
  items, targets = ranked_arrays(rows)
  return item_lists.level_counts(items, targets, item_to_group)


def file_metrics(path: str | os.PathLike, ks: Sequence[int] = ranking.DEFAULT_KS, *,
                 item_to_group: np.ndarray | None = None,
                 chunk_rows: int = 4096) -> FileMetrics:
  """Reads and validates a predictions file and computes its mean ranking metrics.

  Args:
    path: the JSONL file.
    ks: cut-offs; those longer than the longest list are dropped (as `calc.py`).
    item_to_group: optional int `[num_items]`, the items' SID groups: adds the SID-level
      metrics ('sid_hr@K', ...; see item_lists) to the item-level ones; every id in the file
      must be below its length.
    chunk_rows: rows converted to arrays at a time (bounds memory).

  Returns:
    FileMetrics.
  """
  path = os.fspath(path)
  ranking.usable_ks(ks, 0)  # Rejects bad K before reading the file.
  totals, chunk = {}, []
  for line, row in _read_numbered(path):
    if item_to_group is not None:
      _check_in_groups(row, len(item_to_group), path, line)
    chunk.append(row)
    if len(chunk) == chunk_rows:
      totals, chunk = item_lists.add_counts(totals, _rank_counts(chunk, item_to_group)), []
  if chunk:
    totals = item_lists.add_counts(totals, _rank_counts(chunk, item_to_group))
  if not totals or totals['item'].count == 0:
    raise DataError('no predictions in file', path=path)
  item = totals['item']
  metrics = item.means(ks) if item_to_group is None else item_lists.level_means(totals, ks)
  return FileMetrics(path=path, samples=item.count, list_length=item.list_length,
                     metrics=metrics,
                     dropped_ks=tuple(sorted({k for k in ks if k > item.list_length})))
