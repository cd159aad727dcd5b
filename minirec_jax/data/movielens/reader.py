"""Readers for MovieLens-100K: GroupLens files (u.data, u.item) and RecBole atomic files.

Both give the same thing: interactions (user, item, timestamp) in file order, and an item table
whose ids are the original MovieLens ids remapped to 0..N-1 in increasing original id (so
MovieLens id 1, Toy Story, is item 0). Titles drop GroupLens' trailing "(year)", as RecBole's
copy does; the description carries year and genres ("Year: 1995. Genres: Animation,
Children's, Comedy."), which is the text the item-text encoder reads. MovieLens has no official
semantic IDs, so `sid` is '' everywhere.

The RecBole copy ships inside the `recbole==1.2.1` wheel (recbole/dataset_example/ml-100k/); we
read it straight out of the zip, fetching the wheel with `pip download` when it is not cached.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import subprocess
import sys
import zipfile

from minirec_jax.data import literals
from minirec_jax.data.errors import DataError, require_file
from minirec_jax.data.schema import ItemTable

# The 19 genre flags of u.item, in column order (as listed in GroupLens' u.genre).
GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy', 'Crime',
          'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'Musical', 'Mystery',
          'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western')
RECBOLE_VERSION = '1.2.1'
WHEEL_NAME = f'recbole-{RECBOLE_VERSION}-py3-none-any.whl'
WHEEL_MEMBER = 'recbole/dataset_example/ml-100k/ml-100k.{}'
GROUPLENS_FILES = ('u.data', 'u.item')
RECBOLE_FILES = ('ml-100k.inter', 'ml-100k.item')
_YEAR_SUFFIX = re.compile(r'\s*\((\d{4})\)\s*$')
_YEAR = re.compile(r'^\d{4}$')
_PIP_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class RawMovieLens:
  """Interactions in file order plus the item table.

  users, items, timestamps: parallel lists, one entry per interaction; items are 0-based ids.
  original_item_ids[i]: the MovieLens id of item i (increasing).
  """

  users: list[str]
  items: list[int]
  timestamps: list[int]
  table: ItemTable
  original_item_ids: list[int]
  source: str


def _description(year: str, genres: list[str]) -> str:
  parts = []
  if _YEAR.match(year):  # RecBole writes 'unkonwn' for the one movie without a date
    parts.append(f'Year: {year}.')
  if genres:
    parts.append(f"Genres: {', '.join(genres)}.")
  return ' '.join(parts)


def _split_line(line: str, sep: str, width: int, path: str, line_no: int) -> list[str]:
  fields = line.rstrip('\r\n').split(sep)
  if len(fields) != width:
    raise DataError(f'expected {width} {sep!r}-separated fields, got {len(fields)}', path=path,
                    line=line_no, field='line', value=line.rstrip('\r\n'))
  return fields


def _parse_number(text: str, *, path: str, line: int, field: str) -> float:
  try:
    value = float(text)
  except ValueError:
    value = math.nan
  if not math.isfinite(value):
    raise DataError('not a finite number', path=path, line=line, field=field, value=text)
  return value


def _parse_timestamp(text: str, *, path: str, line: int) -> int:
  value = _parse_number(text, path=path, line=line, field='timestamp')
  if value != int(value):
    raise DataError('timestamp is not a whole number of seconds', path=path, line=line,
                    field='timestamp', value=text)
  return int(value)


def _add_item(rows: dict, item: int, entry: tuple[str, str], path: str, line_no: int) -> None:
  if item in rows:
    raise DataError('duplicate item id', path=path, line=line_no, field='item_id', value=item)
  rows[item] = entry


def _item_table(rows: dict[int, tuple[str, str]]) -> tuple[ItemTable, dict[int, int], list[int]]:
  """{original id: (title, description)} -> (table, original -> new id, originals by new id)."""
  originals = sorted(rows)
  id_map = {orig: new for new, orig in enumerate(originals)}
  table = ItemTable(title=[rows[o][0] for o in originals],
                    description=[rows[o][1] for o in originals], sid=[''] * len(originals))
  return table, id_map, originals


def _read_text(path: str, what: str, encoding: str = 'utf-8') -> str:
  require_file(path, what)
  try:
    with open(path, encoding=encoding) as f:
      return f.read()
  except UnicodeDecodeError as exc:
    raise DataError(f'not valid {encoding} text at byte {exc.start}', path=path) from None


def _check_item(item_text: str, id_map: dict[int, int], path: str, line_no: int,
                item_path: str) -> int:
  item = literals.parse_int(item_text, path=path, line=line_no, field='item_id')
  if item not in id_map:
    raise DataError(f'item id {item} is not in {item_path}', path=path, line=line_no,
                    field='item_id', value=item_text)
  return id_map[item]


def read_grouplens(folder: str) -> RawMovieLens:
  """u.data (user TAB item TAB rating TAB timestamp, all integers) and u.item.

  u.item is latin-1 text, '|'-separated: id, title, release date, video release date, IMDb URL
  and 19 genre flags (0/1) in the order of `GENRES`.
  """
  item_path = os.path.join(folder, 'u.item')
  data_path = os.path.join(folder, 'u.data')
  item_text = _read_text(item_path, 'MovieLens u.item', encoding='latin-1')
  data_text = _read_text(data_path, 'MovieLens u.data')
  rows = {}
  for line_no, line in enumerate(item_text.splitlines(), start=1):
    if not line.strip():
      continue
    fields = _split_line(line, '|', 5 + len(GENRES), item_path, line_no)
    item = literals.parse_int(fields[0], path=item_path, line=line_no, field='movie id')
    genres = []
    for genre, flag in zip(GENRES, fields[5:]):
      if flag not in ('0', '1'):
        raise DataError('genre flag must be 0 or 1', path=item_path, line=line_no,
                        field=genre, value=flag)
      if flag == '1':
        genres.append(genre)
    match = _YEAR_SUFFIX.search(fields[1])
    title = _YEAR_SUFFIX.sub('', fields[1]).strip() or fields[1].strip()
    release = fields[2].strip()  # e.g. '01-Jan-1995'
    year = release[-4:] if release else (match.group(1) if match else '')
    _add_item(rows, item, (title, _description(year, genres)), item_path, line_no)
  table, id_map, originals = _item_table(rows)
  users, items, stamps = [], [], []
  for line_no, line in enumerate(data_text.splitlines(), start=1):
    if not line.strip():
      continue
    user, item, rating, stamp = _split_line(line, '\t', 4, data_path, line_no)
    literals.parse_int(user, path=data_path, line=line_no, field='user_id')
    literals.parse_int(rating, path=data_path, line=line_no, field='rating')
    items.append(_check_item(item, id_map, data_path, line_no, item_path))
    stamps.append(literals.parse_int(stamp, path=data_path, line=line_no, field='timestamp'))
    users.append(user.strip())
  if not users:
    raise DataError('no interactions', path=data_path)
  return RawMovieLens(users, items, stamps, table, originals, 'grouplens')


def _header(lines: list[str], required: tuple[str, ...], path: str) -> list[str]:
  """Column names of a RecBole header line ('name:type' per column)."""
  names = [h.split(':')[0] for h in lines[0].rstrip('\r\n').split('\t')] if lines else []
  for name in required:
    if name not in names:
      raise DataError(f'missing column in header {names}', path=path, line=1, field=name)
  return names


def read_recbole_atomic(inter_path: str, item_path: str, inter_text: str | None = None,
                        item_text: str | None = None) -> RawMovieLens:
  """RecBole atomic files ml-100k.inter and ml-100k.item (tab-separated, one header line).

  .inter needs user_id, item_id, timestamp (rating, if present, must be a number); .item needs
  item_id and movie_title, and uses release_year and class (space-separated genres) if present.
  The texts may be passed in directly (e.g. read out of a zip); the paths then only name them.
  """
  if item_text is None:
    item_text = _read_text(item_path, 'RecBole .item file')
  if inter_text is None:
    inter_text = _read_text(inter_path, 'RecBole .inter file')
  lines = item_text.splitlines()
  names = _header(lines, ('item_id', 'movie_title'), item_path)
  rows = {}
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = dict(zip(names, _split_line(line, '\t', len(names), item_path, line_no)))
    item = literals.parse_int(fields['item_id'], path=item_path, line=line_no, field='item_id')
    entry = (fields['movie_title'].strip(),
             _description(fields.get('release_year', '').strip(),
                          fields.get('class', '').split()))
    _add_item(rows, item, entry, item_path, line_no)
  table, id_map, originals = _item_table(rows)
  lines = inter_text.splitlines()
  names = _header(lines, ('user_id', 'item_id', 'timestamp'), inter_path)
  users, items, stamps = [], [], []
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = dict(zip(names, _split_line(line, '\t', len(names), inter_path, line_no)))
    user = fields['user_id'].strip()
    if not user:
      raise DataError('empty user id', path=inter_path, line=line_no, field='user_id',
                      value=fields['user_id'])
    if 'rating' in fields:
      _parse_number(fields['rating'], path=inter_path, line=line_no, field='rating')
    items.append(_check_item(fields['item_id'], id_map, inter_path, line_no, item_path))
    stamps.append(_parse_timestamp(fields['timestamp'], path=inter_path, line=line_no))
    users.append(user)
  if not users:
    raise DataError('no interactions', path=inter_path)
  return RawMovieLens(users, items, stamps, table, originals, 'recbole')


def default_cache_dir() -> str:
  """`$MINIREC_CACHE/downloads`, else `<repo>/.cache/downloads`."""
  root = os.environ.get('MINIREC_CACHE') or os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))))), '.cache')
  return os.path.join(root, 'downloads')


def recbole_wheel(cache_dir: str | None = None) -> str:
  """Path of the recbole wheel in `cache_dir`; fetched with `pip download` if absent.

  pip only talks to the package index; nothing of recbole is installed or imported.
  """
  cache_dir = cache_dir or default_cache_dir()
  path = os.path.join(cache_dir, WHEEL_NAME)
  if os.path.isfile(path):
    return path
  os.makedirs(cache_dir, exist_ok=True)
  cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet', '--retries', '2',
         '--timeout', '20', f'recbole=={RECBOLE_VERSION}', '-d', cache_dir]
  hint = (f'put {WHEEL_NAME} into {cache_dir} by hand, or use data.source=manual with '
          'data.manual_dir holding u.data + u.item or ml-100k.inter + ml-100k.item')
  try:
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S)
  except subprocess.TimeoutExpired:
    raise DataError(f'`{" ".join(cmd)}` took over {_PIP_TIMEOUT_S} s; {hint}',
                    path=path) from None
  if result.returncode != 0 or not os.path.isfile(path):
    detail = result.stderr.strip()[-300:] or f'exit code {result.returncode}'
    raise DataError(f'could not fetch the recbole wheel with `{" ".join(cmd)}` ({detail}); '
                    f'{hint}', path=path)
  return path


def read_recbole_wheel(wheel: str) -> RawMovieLens:
  """Reads ml-100k.inter/.item straight out of the recbole wheel (a zip)."""
  require_file(wheel, 'recbole wheel')
  names = [WHEEL_MEMBER.format(suffix) for suffix in ('inter', 'item')]
  try:
    with zipfile.ZipFile(wheel) as z:
      inter, item = (z.read(name).decode('utf-8') for name in names)
  except (zipfile.BadZipFile, KeyError, UnicodeDecodeError) as exc:
    raise DataError(f'not a recbole wheel with a readable ml-100k inside ({exc})',
                    path=wheel) from None
  return read_recbole_atomic(f'{wheel}!{names[0]}', f'{wheel}!{names[1]}', inter, item)


def read_manual(folder: str) -> RawMovieLens:
  """A folder (or its ml-100k/ subfolder) with u.data + u.item or ml-100k.inter + .item."""
  for root in (folder, os.path.join(folder, 'ml-100k')):
    if os.path.isfile(os.path.join(root, GROUPLENS_FILES[0])):
      return read_grouplens(root)
    if os.path.isfile(os.path.join(root, RECBOLE_FILES[0])):
      return read_recbole_atomic(*(os.path.join(root, name) for name in RECBOLE_FILES))
  raise DataError(f'expected {" + ".join(GROUPLENS_FILES)} (GroupLens) or '
                  f'{" + ".join(RECBOLE_FILES)} (RecBole atomic) in the manual folder or its '
                  'ml-100k/ subfolder', path=folder)
