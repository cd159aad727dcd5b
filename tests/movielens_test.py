"""MovieLens-100K: both file formats, the wheel source, both protocols, bad input."""

import os
import zipfile

import ml_collections
import pytest

from minirec_jax.data import loading
from minirec_jax.data.errors import DataError
from minirec_jax.data import protocols
from minirec_jax.data.movielens import reader

# user, item, rating, timestamp; user 7 has a timestamp tie (items 2 and 3 at t=20).
INTERACTIONS = [('7', 1, 5, 10), ('8', 2, 3, 15), ('7', 3, 4, 20), ('7', 2, 4, 20),
                ('8', 1, 2, 5), ('7', 4, 1, 30), ('8', 3, 3, 25), ('9', 4, 3, 40)]
MOVIES = {1: ('Toy Story (1995)', '01-Jan-1995', 'Animation'),
          2: ('GoldenEye (1995)', '01-Jan-1995', 'Action'),
          3: ('Four Rooms (1995)', '01-Jan-1995', 'Comedy'),
          4: ('Get Shorty (1995)', '01-Jan-1995', 'Crime')}


def _write_grouplens(folder):
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, 'u.data'), 'w') as f:
    for u, i, r, t in INTERACTIONS:
      f.write(f'{u}\t{i}\t{r}\t{t}\n')
  with open(os.path.join(folder, 'u.item'), 'w', encoding='latin-1') as f:
    for i, (title, date, genre) in MOVIES.items():
      flags = ['1' if g == genre else '0' for g in reader.GENRES]
      f.write('|'.join([str(i), title, date, '', 'http://x'] + flags) + '\n')
  return folder


def _recbole_texts():
  inter = 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n' + ''.join(
      f'{u}\t{i}\t{r}\t{t}\n' for u, i, r, t in INTERACTIONS)
  item = 'item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n' + ''.join(
      f'{i}\t{title[:-7]}\t1995\t{genre}\n' for i, (title, _, genre) in MOVIES.items())
  return inter, item


def _write_recbole(folder):
  os.makedirs(folder, exist_ok=True)
  inter, item = _recbole_texts()
  with open(os.path.join(folder, 'ml-100k.inter'), 'w') as f:
    f.write(inter)
  with open(os.path.join(folder, 'ml-100k.item'), 'w') as f:
    f.write(item)
  return folder


def _config(tmp_path, protocol, source, manual_dir=''):
  return ml_collections.ConfigDict(dict(
      name='movielens', protocol=protocol, max_history=0, source=source, manual_dir=manual_dir,
      data_dir=str(tmp_path / 'tfds'), cache_dir=str(tmp_path / 'cache')))


def _rows(source):
  return [(e['user_id'].decode(), e['history'].tolist(), int(e['target']), int(e['timestamp']))
          for e in source]


def test_both_formats_read_the_same(tmp_path):
  a = reader.read_grouplens(_write_grouplens(str(tmp_path / 'gl')))
  b = reader.read_manual(_write_recbole(str(tmp_path / 'rb')))
  assert (a.users, a.items, a.timestamps) == (b.users, b.items, b.timestamps)
  assert a.table.title == b.table.title == ['Toy Story', 'GoldenEye', 'Four Rooms', 'Get Shorty']
  assert a.table.description[0] == b.table.description[0] == 'Year: 1995. Genres: Animation.'
  assert a.items == [0, 1, 2, 1, 0, 3, 2, 3]  # ids remapped to 0..N-1


def test_minionerec_protocol_exact():
  seqs = protocols.user_sequences(['7', '8', '7', '7', '8', '7', '8', '9'],
                                  [0, 1, 2, 1, 0, 3, 2, 3], [10, 15, 20, 20, 5, 30, 25, 40])
  assert seqs['7'] == [(10, 0), (20, 2), (20, 1), (30, 3)]  # tie keeps file order
  splits = protocols.minionerec_splits(seqs, max_history=2)
  all_rows = [tuple(s) for name in ('train', 'valid', 'test') for s in splits[name]]
  # Samples sorted by target time: (8: 0->1 @15), (7: 0->2 @20), (7: 0,2->1 @20),
  # (8: 0,1->2 @25), (7: 2,1->3 @30); N=5: train 4, valid 0, test 1.
  assert all_rows == [('8', [0], 1, 15), ('7', [0], 2, 20), ('7', [0, 2], 1, 20),
                      ('8', [0, 1], 2, 25), ('7', [2, 1], 3, 30)]
  assert [len(splits[n]) for n in ('train', 'valid', 'test')] == [4, 0, 1]


def test_leave_one_out_protocol_exact():
  seqs = protocols.user_sequences(['7', '8', '7', '7', '8', '7', '8', '9'],
                                  [0, 1, 2, 1, 0, 3, 2, 3], [10, 15, 20, 20, 5, 30, 25, 40])
  splits, skipped = protocols.leave_one_out_splits(seqs, max_history=50)
  assert skipped == 1  # user 9 has one interaction
  assert [tuple(s)[:3] for s in splits['train']] == [('7', [0], 2)]
  assert [tuple(s)[:3] for s in splits['valid']] == [('7', [0, 2], 1), ('8', [0], 1)]
  assert [tuple(s)[:3] for s in splits['test']] == [('7', [0, 2, 1], 3), ('8', [0, 1], 2)]


def test_builder_manual_and_fake_wheel(tmp_path):
  manual = _write_grouplens(str(tmp_path / 'gl'))
  ds = loading.load(_config(tmp_path, 'loo', 'manual', manual))
  assert [len(ds.split(n)) for n in ('train', 'valid', 'test')] == [1, 2, 2]
  assert ds.builder.info.metadata['stats']['users_skipped'] == 1
  cache = tmp_path / 'cache'
  cache.mkdir()
  inter, item = _recbole_texts()
  with zipfile.ZipFile(cache / f'recbole-{reader.RECBOLE_VERSION}-py3-none-any.whl', 'w') as z:
    z.writestr(reader.WHEEL_MEMBER.format('inter'), inter)
    z.writestr(reader.WHEEL_MEMBER.format('item'), item)
  ds2 = loading.load(_config(tmp_path, 'loo', 'recbole_wheel'))
  assert _rows(ds2.split('test')) == _rows(ds.split('test'))
  assert ds2.items.title == ds.items.title


@pytest.mark.parametrize('line, field, problem', [
    ('7\tx\t5\t10', 'item_id', 'not an integer'),
    ('7\t99\t5\t10', 'item_id', 'item id 99 is not in'),
    ('7\t1\t5\tyesterday', 'timestamp', 'not a number'),
    ('7\t1', 'line', 'expected at least 4'),
])
def test_bad_interaction_lines(tmp_path, line, field, problem):
  folder = _write_grouplens(str(tmp_path / 'gl'))
  with open(os.path.join(folder, 'u.data'), 'a') as f:
    f.write(line + '\n')
  with pytest.raises(DataError) as info:
    reader.read_grouplens(folder)
  message = str(info.value)
  assert f"u.data:{len(INTERACTIONS) + 1}" in message
  assert f"field '{field}'" in message and problem in message


def test_missing_files(tmp_path):
  with pytest.raises(DataError, match='expected u.data'):
    reader.read_manual(str(tmp_path))
  folder = _write_recbole(str(tmp_path / 'rb'))
  os.remove(os.path.join(folder, 'ml-100k.item'))
  with pytest.raises(DataError, match='missing RecBole .item file'):
    reader.read_manual(folder)


def test_real_movielens_100k_from_the_recbole_wheel(tmp_path):
  try:
    wheel = reader.recbole_wheel()
  except DataError as exc:
    pytest.skip(f'recbole wheel not available: {exc}')
  raw = reader.read_recbole_wheel(wheel)
  assert (len(set(raw.users)), raw.table.num_items, len(raw.users)) == (943, 1682, 100_000)
  cfg = _config(tmp_path, 'loo', 'recbole_wheel')
  cfg.cache_dir = os.path.dirname(wheel)
  ds = loading.load(cfg)
  # RecBole 1.2.1 reports 97,171 training sequences for this protocol.
  assert [len(ds.split(n)) for n in ('train', 'valid', 'test')] == [97_171, 943, 943]
