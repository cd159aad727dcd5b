"""Safe parsing of the Python list literals that the official CSVs store in list columns.

The official code eval()s these fields; we never do: `ast.literal_eval` accepts only literals,
and every failure becomes a DataError naming the file, line, field and value.
"""

from __future__ import annotations

import ast

from minirec_jax.data.errors import DataError


def parse_list(text: str, *, path: str, line: int, field: str) -> list:
  """Parses a Python list literal such as "[1, 2]" or "['a', 'b']"."""
  try:
    value = ast.literal_eval(text)
  except (ValueError, SyntaxError, MemoryError, RecursionError) as exc:
    raise DataError(f'not a valid list literal ({type(exc).__name__})', path=path, line=line,
                    field=field, value=text) from None
  if not isinstance(value, (list, tuple)):
    raise DataError(f'expected a list literal, got {type(value).__name__}', path=path,
                    line=line, field=field, value=text)
  return list(value)


def parse_int_list(text: str, *, path: str, line: int, field: str) -> list[int]:
  values = parse_list(text, path=path, line=line, field=field)
  out = []
  for v in values:
    if isinstance(v, bool) or not isinstance(v, int):
      raise DataError(f'list element {v!r} is not an integer', path=path, line=line,
                      field=field, value=text)
    out.append(v)
  return out


def parse_int(text: str, *, path: str, line: int, field: str) -> int:
  try:
    return int(text.strip())
  except (ValueError, AttributeError):
    raise DataError('not an integer', path=path, line=line, field=field, value=text) from None
