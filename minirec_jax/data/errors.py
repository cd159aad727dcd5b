"""One error type for bad input data: it always names file, line, field and value."""

from __future__ import annotations

import os


class DataError(ValueError):
  """Bad or missing input data.

  The message reads `<file>:<line>: field '<field>' = <value!r>: <problem>`, with the parts that
  do not apply (e.g. no line for a missing file) left out, so a user can jump straight to it.
  """

  def __init__(self, problem: str, *, path: str | os.PathLike | None = None,
               line: int | None = None, field: str | None = None, value=None,
               has_value: bool | None = None):
    self.problem = problem
    self.path = None if path is None else os.fspath(path)
    self.line = line
    self.field = field
    self.value = value
    where = ''
    if self.path is not None:
      where = self.path if line is None else f'{self.path}:{line}'
    what = ''
    if field is not None:
      show_value = (value is not None) if has_value is None else has_value
      what = f"field '{field}'" + (f' = {_short(value)}' if show_value else '')
    parts = [p for p in (where, what) if p]
    super().__init__(': '.join(parts + [problem]))


def _short(value, limit: int = 200) -> str:
  text = repr(value)
  return text if len(text) <= limit else text[:limit] + '...'


def require_file(path: str | os.PathLike, what: str) -> str:
  """Returns `path` if it is a file; otherwise raises a DataError saying what was expected."""
  path = os.fspath(path)
  if not os.path.isfile(path):
    folder = os.path.dirname(path) or '.'
    hint = '' if os.path.isdir(folder) else f' (folder {folder} does not exist either)'
    raise DataError(f'missing {what}{hint}', path=path)
  return path


def require_dir(path: str | os.PathLike, what: str) -> str:
  path = os.fspath(path)
  if not os.path.isdir(path):
    raise DataError(f'missing {what} folder', path=path)
  return path
