"""The predictions file: one JSON object per evaluated sample (JSONL).

Fields of each line:
  user_id      str        the sample's user
  target       int        the target item id
  items        list[int]  recommended item ids, best first
  scores       list[float] their scores (same length; log-probs or logits), descending
  sample_index int        (optional) row of the sample in its split
  split        str        (optional) split name

`write` streams rows to a temporary file and renames it; `read` validates every line and
raises a DataError naming the file, line, field and value.
"""

from __future__ import annotations

import json
import math
from typing import Iterable, Iterator

import numpy as np

from minirec_jax import io_utils
from minirec_jax.data.errors import DataError

REQUIRED = {'user_id': str, 'target': int, 'items': list, 'scores': list}
OPTIONAL = {'sample_index': int, 'split': str}


def write(path: str, rows: Iterable[dict]) -> int:
  """Writes prediction rows atomically; returns the number written."""
  return io_utils.write_jsonl(path, rows)


def _check(row, path: str, line: int) -> dict:
  if not isinstance(row, dict):
    raise DataError('expected a JSON object', path=path, line=line, field='row', value=row)
  for field, kind in {**REQUIRED, **OPTIONAL}.items():
    if field not in row:
      if field in REQUIRED:
        raise DataError('missing field', path=path, line=line, field=field)
      continue
    value = row[field]
    if not isinstance(value, kind) or isinstance(value, bool):
      raise DataError(f'expected {kind.__name__}', path=path, line=line, field=field,
                      value=value, has_value=True)
  for i in row['items']:
    if isinstance(i, bool) or not isinstance(i, int):
      raise DataError('item ids must be integers', path=path, line=line, field='items',
                      value=row['items'])
  for s in row['scores']:
    if isinstance(s, bool) or not isinstance(s, (int, float)) or math.isnan(s):
      raise DataError('scores must be numbers', path=path, line=line, field='scores',
                      value=row['scores'])
  if len(row['items']) != len(row['scores']):
    raise DataError(f"{len(row['items'])} items but {len(row['scores'])} scores", path=path,
                    line=line, field='scores', value=row['scores'])
  return row


def read(path: str) -> Iterator[dict]:
  """Yields validated rows."""
  try:
    f = open(path, encoding='utf-8')
  except FileNotFoundError:
    raise DataError('missing predictions file', path=path) from None
  with f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as exc:
        raise DataError(f'invalid JSON ({exc.msg})', path=path, line=line_no, field='line',
                        value=line.strip()) from None
      yield _check(row, path, line_no)


def ranked_arrays(rows: list[dict]) -> tuple[np.ndarray, np.ndarray]:
  """(items int64 `[n, max_len]` padded with -1, targets `[n]`) for the metric functions."""
  width = max((len(r['items']) for r in rows), default=0)
  items = np.full((len(rows), width), -1, np.int64)
  for i, r in enumerate(rows):
    items[i, :len(r['items'])] = r['items']
  return items, np.asarray([r['target'] for r in rows], np.int64)
