"""Readers for MovieLens-100K: GroupLens files (u.data, u.item) and RecBole atomic files.

Both give the same thing: interactions (user, item, timestamp) in file order and an item table
whose ids are the original MovieLens ids remapped to 0..N-1 in increasing original id. Titles
drop the trailing "(year)"; the description carries year and genres ("Year: 1995. Genres:
Animation, Children's, Comedy."), which is what the text encoder reads.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import zipfile

from minirec_jax.data import literals
from minirec_jax.data.errors import DataError, require_file
from minirec_jax.data.schema import ItemTable

GENRES = ('unknown', 'Action', 'Adventure', 'Animation', "Children's", 'Comedy', 'Crime',
          'Documentary', 'Drama', 'Fantasy', 'Film-Noir', 'Horror', 'Musical', 'Mystery',
          'Romance', 'Sci-Fi', 'Thriller', 'War', 'Western')
RECBOLE_VERSION = '1.2.1'
WHEEL_MEMBER = 'recbole/dataset_example/ml-100k/ml-100k.{}'
_YEAR_SUFFIX = re.compile(r'\s*\((\d{4})\)\s*$')


@dataclasses.dataclass(frozen=True)
class RawMovieLens:
  """users/items/timestamps: parallel lists in file order; items are 0-based ids."""

  users: list[str]
  items: list[int]
  timestamps: list[int]
  table: ItemTable
  source: str


def _description(year: str, genres: list[str]) -> str:
  parts = []
  if year:
    parts.append(f'Year: {year}.')
  if genres:
    parts.append(f"Genres: {', '.join(genres)}.")
  return ' '.join(parts)


def _interactions(lines, path: str, first_line: int, columns: tuple[int, int, int],
                  id_map: dict[int, int], item_file: str):
  """Parses tab-separated interaction lines; `columns` = indices of user, item, timestamp."""
  users, items, stamps = [], [], []
  width = max(columns) + 1
  for line_no, line in enumerate(lines, start=first_line):
    if not line.strip():
      continue
    fields = line.rstrip('\n').split('\t')
    if len(fields) < width:
      raise DataError(f'expected at least {width} tab-separated fields, got {len(fields)}',
                      path=path, line=line_no, field='line', value=line.rstrip('\n'))
    user, item_text, stamp = (fields[c].strip() for c in columns)
    item = literals.parse_int(item_text, path=path, line=line_no, field='item_id')
    if item not in id_map:
      raise DataError(f'item id {item} is not in {item_file}', path=path, line=line_no,
                      field='item_id', value=item_text)
    try:
      timestamp = int(float(stamp))
    except ValueError:
      raise DataError('timestamp is not a number', path=path, line=line_no,
                      field='timestamp', value=stamp) from None
    if not user:
      raise DataError('empty user id', path=path, line=line_no, field='user_id', value=user)
    users.append(user)
    items.append(id_map[item])
    stamps.append(timestamp)
  if not users:
    raise DataError('no interactions', path=path)
  return users, items, stamps


def _raw(rows: dict[int, tuple[str, str]], lines, path: str, first_line: int,
         columns: tuple[int, int, int], item_path: str, source: str) -> RawMovieLens:
  """Item rows {original id: (title, description)} + interaction lines -> RawMovieLens."""
  originals = sorted(rows)
  id_map = {orig: new for new, orig in enumerate(originals)}
  table = ItemTable(title=[rows[o][0] for o in originals],
                    description=[rows[o][1] for o in originals], sid=[''] * len(originals))
  users, items, stamps = _interactions(lines, path, first_line, columns, id_map, item_path)
  return RawMovieLens(users, items, stamps, table, source)


def read_grouplens(folder: str) -> RawMovieLens:
  """u.data (user TAB item TAB rating TAB timestamp) and u.item (latin-1, '|'-separated)."""
  item_path = require_file(os.path.join(folder, 'u.item'), 'MovieLens u.item')
  data_path = require_file(os.path.join(folder, 'u.data'), 'MovieLens u.data')
  rows = {}
  with open(item_path, encoding='latin-1') as f:
    for line_no, line in enumerate(f, start=1):
      if not line.strip():
        continue
      fields = line.rstrip('\n').split('|')
      if len(fields) != 5 + len(GENRES):
        raise DataError(f'expected {5 + len(GENRES)} "|"-separated fields, got {len(fields)}',
                        path=item_path, line=line_no, field='line', value=line.rstrip('\n'))
      item = literals.parse_int(fields[0], path=item_path, line=line_no, field='movie id')
      match = _YEAR_SUFFIX.search(fields[1])
      title = _YEAR_SUFFIX.sub('', fields[1]).strip()
      year = fields[2][-4:] if fields[2].strip() else (match.group(1) if match else '')
      genres = [g for g, flag in zip(GENRES, fields[5:]) if flag.strip() == '1']
      rows[item] = (title or fields[1], _description(year, genres))
  with open(data_path, encoding='utf-8') as f:
    return _raw(rows, f.readlines(), data_path, 1, (0, 1, 3), item_path, 'grouplens')


def _check_header(header: str, expected: list[str], path: str) -> list[str]:
  names = [h.split(':')[0] for h in header.rstrip('\n').split('\t')]
  for name in expected:
    if name not in names:
      raise DataError(f'missing column in header {names}', path=path, line=1, field=name)
  return names


def read_recbole_atomic(inter_path: str, item_path: str, inter_text: str | None = None,
                        item_text: str | None = None) -> RawMovieLens:
  """RecBole atomic files ml-100k.inter / ml-100k.item (texts may be passed in directly)."""
  if item_text is None:
    item_text = open(require_file(item_path, 'RecBole .item file'), encoding='utf-8').read()
  if inter_text is None:
    inter_text = open(require_file(inter_path, 'RecBole .inter file'), encoding='utf-8').read()
  lines = item_text.splitlines()
  names = _check_header(lines[0] if lines else '', ['item_id', 'movie_title'], item_path)
  rows = {}
  for line_no, line in enumerate(lines[1:], start=2):
    if not line.strip():
      continue
    fields = dict(zip(names, line.split('\t')))
    if len(fields) != len(names):
      raise DataError(f'expected {len(names)} tab-separated fields', path=item_path,
                      line=line_no, field='line', value=line)
    item = literals.parse_int(fields['item_id'], path=item_path, line=line_no, field='item_id')
    genres = fields.get('class', '').split()
    rows[item] = (fields['movie_title'].strip(),
                  _description(fields.get('release_year', '').strip(), genres))
  inter_lines = inter_text.splitlines()
  inter_names = _check_header(inter_lines[0] if inter_lines else '',
                              ['user_id', 'item_id', 'timestamp'], inter_path)
  columns = tuple(inter_names.index(n) for n in ('user_id', 'item_id', 'timestamp'))
  return _raw(rows, inter_lines[1:], inter_path, 2, columns, item_path, 'recbole')


def default_cache_dir() -> str:
  root = os.environ.get('MINIREC_CACHE') or os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(
          os.path.abspath(__file__))))), '.cache')
  return os.path.join(root, 'downloads')


def recbole_wheel(cache_dir: str | None = None) -> str:
  """Path of the recbole wheel in the cache, fetched with `pip download` if absent."""
  cache_dir = cache_dir or default_cache_dir()
  name = f'recbole-{RECBOLE_VERSION}-py3-none-any.whl'
  path = os.path.join(cache_dir, name)
  if not os.path.isfile(path):
    os.makedirs(cache_dir, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet',
           f'recbole=={RECBOLE_VERSION}', '-d', cache_dir]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not os.path.isfile(path):
      raise DataError(f'could not fetch the recbole wheel with `{" ".join(cmd)}` '
                      f'({result.stderr.strip()[-300:]}); download it by hand into the folder, '
                      'or use data.source=manual', path=path)
  return path


def read_recbole_wheel(wheel: str) -> RawMovieLens:
  """Reads ml-100k.inter/.item straight out of the recbole wheel (a zip)."""
  require_file(wheel, 'recbole wheel')
  try:
    with zipfile.ZipFile(wheel) as z:
      inter = z.read(WHEEL_MEMBER.format('inter')).decode('utf-8')
      item = z.read(WHEEL_MEMBER.format('item')).decode('utf-8')
  except (zipfile.BadZipFile, KeyError) as exc:
    raise DataError(f'not a recbole wheel with ml-100k inside ({exc})', path=wheel) from None
  return read_recbole_atomic(f'{wheel}!{WHEEL_MEMBER.format("inter")}',
                             f'{wheel}!{WHEEL_MEMBER.format("item")}', inter, item)


def read_manual(folder: str) -> RawMovieLens:
  """A folder with either u.data + u.item or ml-100k.inter + ml-100k.item."""
  if os.path.isfile(os.path.join(folder, 'u.data')):
    return read_grouplens(folder)
  inter = os.path.join(folder, 'ml-100k.inter')
  if os.path.isfile(inter):
    return read_recbole_atomic(inter, os.path.join(folder, 'ml-100k.item'))
  raise DataError('expected u.data + u.item (GroupLens) or ml-100k.inter + ml-100k.item '
                  '(RecBole atomic) in the manual folder', path=folder)
