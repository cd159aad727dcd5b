"""Atomic file output: write to a temporary name in the same folder, then rename.

A crash (or SIGKILL) in the middle of a write leaves either the old file or no file,
never a truncated one, because `os.replace` is atomic on POSIX within one filesystem.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import os
import tempfile
from typing import Any, Iterator


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
  """Yields a temporary path next to `path`; renames it onto `path` on success."""
  path = os.fspath(path)
  folder = os.path.dirname(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f'.{os.path.basename(path)}.', suffix='.tmp')
  os.close(fd)
  try:
    yield tmp
    # mkstemp creates 0600; the result gets the mode a plain open() would give it.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    with open(tmp, 'w', encoding='utf-8') as f:
      f.write(text)
      f.flush()
      os.fsync(f.fileno())


def write_json(path: str | os.PathLike, obj: Any, indent: int | None = 2) -> None:
  write_text(path, json.dumps(obj, indent=indent, sort_keys=False) + '\n')


def open_text(path: str | os.PathLike, mode: str = 'r', gz: bool | None = None):
  """A UTF-8 text file ('r' or 'w'), gzip-compressed when `gz` (default: the name ends with
  '.gz')."""
  if os.fspath(path).endswith('.gz') if gz is None else gz:
    return gzip.open(path, mode + 't', encoding='utf-8')
  return open(path, mode, encoding='utf-8')


def _fsync(path: str) -> None:
  fd = os.open(path, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_jsonl(path: str | os.PathLike, rows) -> int:
  """Writes an iterable of JSON-serialisable rows, one per line (gzipped for a '.gz' path);
  returns the row count."""
  count = 0
  with atomic_path(path) as tmp:
    with open_text(tmp, 'w', gz=os.fspath(path).endswith('.gz')) as f:
      for row in rows:
        f.write(json.dumps(row) + '\n')
        count += 1
    _fsync(tmp)
  return count
