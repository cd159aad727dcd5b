"""Reader for the official MiniOneRec data layout (any category), independent of TFDS.

Layout under a root folder (the official `data/Amazon/`, or a user's own copy):

  {train,valid,test}/{category}*.csv   rows: user_id, history_item_id, item_id (required);
                                       history_item_title, item_title, history_item_sid,
                                       item_sid (optional)
  index/{category}.item.json           {"id": {"title", "description"?, "brand"?, "categories"?}}
  index/{category}.index.json          {"id": ["<a_x>", "<b_y>", ...]}            (optional)
  info/{category}*.txt                 "SID<TAB>title<TAB>item_id" per item       (optional)

Only the required columns and a title per item must exist; semantic IDs come from index.json
(or the info txt) where present. Every problem raises a DataError naming file, line, field and
value; nothing is skipped silently.
"""

from __future__ import annotations

import csv
import dataclasses
import glob
import json
import os
from typing import Iterator

from minirec_jax.data import literals
from minirec_jax.data.errors import DataError, invalid_utf8, require_dir, require_file
from minirec_jax.data.schema import ItemTable

SPLITS = ('train', 'valid', 'test')
REQUIRED_COLUMNS = ('user_id', 'history_item_id', 'item_id')


@dataclasses.dataclass(frozen=True)
class Row:
  user_id: str
  history: list[int]
  target: int


def find_split_csv(root: str, split: str, category: str) -> str | None:
  """Returns the split's CSV for `category`, None if the split folder has none.

  The official name is `{category}_5_2016-10-2018-11.csv`; any `{category}*.csv` is accepted
  as long as exactly one matches, so users may name the time window differently.
  """
  exact = os.path.join(root, split, f'{category}.csv')
  if os.path.isfile(exact):
    return exact
  matches = sorted(glob.glob(os.path.join(glob.escape(os.path.join(root, split)),
                                          f'{glob.escape(category)}_*.csv')))
  if len(matches) > 1:
    raise DataError(f'{len(matches)} CSV files match category {category!r}: {matches}; keep one',
                    path=os.path.join(root, split))
  return matches[0] if matches else None


def _find_info_txt(root: str, category: str) -> str | None:
  matches = sorted(glob.glob(os.path.join(glob.escape(os.path.join(root, 'info')),
                                          f'{glob.escape(category)}*.txt')))
  if len(matches) > 1:
    raise DataError(f'{len(matches)} info files match category {category!r}: {matches}',
                    path=os.path.join(root, 'info'))
  return matches[0] if matches else None


def load_json_object(path: str) -> dict:
  """A JSON object file (e.g. item.json, index.json); errors name the file and line."""
  with open(path, encoding='utf-8') as f:
    try:
      data = json.load(f)
    except json.JSONDecodeError as exc:
      raise DataError(f'invalid JSON: {exc.msg} (column {exc.colno})', path=path,
                      line=exc.lineno) from None
    except UnicodeDecodeError:
      raise invalid_utf8(path) from None
  if not isinstance(data, dict):
    raise DataError(f'expected a JSON object keyed by item id, got {type(data).__name__}',
                    path=path)
  return data


def _item_ids_in_order(data: dict, path: str) -> list[str]:
  """Checks that keys are exactly '0'..'N-1' and returns them in id order."""
  ids = []
  for key in data:
    try:
      ids.append(int(key))
    except ValueError:
      raise DataError('item id is not an integer', path=path, field='id', value=key) from None
  expected = set(range(len(ids)))
  if set(ids) != expected:
    gap = min(expected - set(ids)) if expected - set(ids) else max(set(ids) - expected)
    raise DataError(f'item ids must be 0..{len(ids) - 1} without gaps; id {gap} breaks that',
                    path=path, field='id', value=gap)
  return [str(i) for i in range(len(ids))]


def _text_field(entry: dict, name: str) -> str:
  value = entry.get(name, '')
  if value is None:
    return ''
  return value if isinstance(value, str) else json.dumps(value)


def read_item_table(root: str, category: str) -> ItemTable:
  """Item titles/descriptions from item.json (or titles from the info txt) plus official SIDs."""
  item_json = os.path.join(root, 'index', f'{category}.item.json')
  info_txt = _find_info_txt(root, category)
  info = _read_info_txt(info_txt) if info_txt else None
  if os.path.isfile(item_json):
    data = load_json_object(item_json)
    ids = _item_ids_in_order(data, item_json)
    titles, descriptions, brands, categories = [], [], [], []
    for key in ids:
      entry = data[key]
      if not isinstance(entry, dict):
        raise DataError('item entry is not an object', path=item_json, field=key, value=entry)
      title = entry.get('title')
      if not isinstance(title, str) or not title.strip():
        raise DataError(f'item {key} has no title', path=item_json, field='title', value=title,
                        has_value=True)
      titles.append(title)
      descriptions.append(_text_field(entry, 'description'))
      brands.append(_text_field(entry, 'brand'))
      categories.append(_text_field(entry, 'categories'))
  elif info is not None:
    titles = [title for _, title in info]
    descriptions = brands = categories = [''] * len(titles)
  else:
    raise DataError(f'missing item catalogue: neither index/{category}.item.json nor '
                    f'info/{category}*.txt exists', path=item_json)
  num_items = len(titles)
  sids = [''] * num_items
  index_json = os.path.join(root, 'index', f'{category}.index.json')
  if os.path.isfile(index_json):
    sids = _read_index_json(index_json, num_items)
  if info is not None:
    if len(info) != num_items:
      raise DataError(f'info file lists {len(info)} items but the catalogue has {num_items}',
                      path=info_txt)
    for item_id, (sid, _) in enumerate(info):
      if sids[item_id] and sid != sids[item_id]:
        raise DataError(f'SID of item {item_id} disagrees with index.json ({sids[item_id]})',
                        path=info_txt, line=item_id + 1, field='sid', value=sid)
      sids[item_id] = sids[item_id] or sid
  return ItemTable(title=titles, description=descriptions, sid=sids, brand=brands,
                   categories=categories)


def _read_index_json(path: str, num_items: int) -> list[str]:
  data = load_json_object(path)
  ids = _item_ids_in_order(data, path)
  if len(ids) != num_items:
    raise DataError(f'index.json has {len(ids)} items but the catalogue has {num_items}',
                    path=path)
  sids = []
  for key in ids:
    tokens = data[key]
    if (not isinstance(tokens, list) or not tokens
        or not all(isinstance(t, str) and t.startswith('<') and t.endswith('>') for t in tokens)):
      raise DataError('SID must be a non-empty list of "<x_n>" tokens', path=path, field=key,
                      value=tokens)
    sids.append(''.join(tokens))
  return sids


def _read_info_txt(path: str) -> list[tuple[str, str]]:
  """Returns [(sid, title)] in item-id order; checks the third column is the line's item id."""
  try:
    return _info_rows(path)
  except UnicodeDecodeError:
    raise invalid_utf8(path) from None


def _info_rows(path: str) -> list[tuple[str, str]]:
  rows = []
  with open(path, encoding='utf-8') as f:
    for line_no, line in enumerate(f, start=1):
      parts = line.rstrip('\n').split('\t')
      if len(parts) != 3:
        raise DataError(f'expected 3 tab-separated columns (SID, title, item_id), got '
                        f'{len(parts)}', path=path, line=line_no, field='line',
                        value=line.rstrip('\n'))
      sid, title, item_id = parts
      if literals.parse_int(item_id, path=path, line=line_no, field='item_id') != line_no - 1:
        raise DataError(f'item ids must be listed in order; expected {line_no - 1}', path=path,
                        line=line_no, field='item_id', value=item_id)
      rows.append((sid, title))
  return rows


def iter_rows(path: str, items: ItemTable) -> Iterator[tuple[int, Row]]:
  """Yields (csv line number, Row) for each data row of one split CSV, validating each."""
  require_file(path, 'split CSV')
  try:
    yield from _csv_rows(path, items)
  except UnicodeDecodeError:
    raise invalid_utf8(path, csv_header=True) from None


def _csv_rows(path: str, items: ItemTable) -> Iterator[tuple[int, Row]]:
  num_items = items.num_items
  with open(path, encoding='utf-8', newline='') as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    for column in REQUIRED_COLUMNS:
      if column not in header:
        raise DataError(f'missing required column (header has {header})', path=path, line=1,
                        field=column)
    check_sid = 'item_sid' in header and items.has_sids
    for row in reader:
      line = reader.line_num
      if None in row:
        raise DataError(f'row has {len(header) + len(row[None])} fields, header has '
                        f'{len(header)}', path=path, line=line, field='row', value=row[None])
      missing = [k for k in header if row[k] is None]
      if missing:
        raise DataError(f'row has fewer fields than the header ({len(header)})', path=path,
                        line=line, field=missing[0])
      user_id = row['user_id'].strip()
      if not user_id:
        raise DataError('empty user id', path=path, line=line, field='user_id',
                        value=row['user_id'])
      history = literals.parse_int_list(row['history_item_id'], path=path, line=line,
                                        field='history_item_id')
      if not history:
        raise DataError('empty history', path=path, line=line, field='history_item_id',
                        value=row['history_item_id'])
      for item in history:
        if not 0 <= item < num_items:
          raise DataError(f'item id {item} is not in the catalogue (0..{num_items - 1})',
                          path=path, line=line, field='history_item_id',
                          value=row['history_item_id'])
      target = literals.parse_int(row['item_id'], path=path, line=line, field='item_id')
      if not 0 <= target < num_items:
        raise DataError(f'item id {target} is not in the catalogue (0..{num_items - 1})',
                        path=path, line=line, field='item_id', value=row['item_id'])
      if check_sid and items.sid[target] and row['item_sid'].strip() != items.sid[target]:
        raise DataError(f'item_sid disagrees with the catalogue SID of item {target} '
                        f'({items.sid[target]})', path=path, line=line, field='item_sid',
                        value=row['item_sid'])
      yield line, Row(user_id=user_id, history=history, target=target)


def locate_splits(root: str, category: str) -> tuple[dict[str, str], dict[str, str]]:
  """Returns ({split: csv path} for present splits, {split: reason} for absent ones)."""
  require_dir(root, 'official data root')
  present, absent = {}, {}
  for split in SPLITS:
    path = find_split_csv(root, split, category)
    if path is None:
      absent[split] = (f'no {split} split for {category}: no file matching '
                       f'{os.path.join(root, split, category)}_*.csv')
    else:
      present[split] = path
  if not present:
    raise DataError(f'no split CSV for category {category!r} in any of {SPLITS}', path=root)
  return present, absent
