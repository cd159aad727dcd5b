"""MovieLens-100K: both file formats, the wheel source, both protocols, bad input."""

import os
import socket
import subprocess
import sys
import time
import zipfile

import ml_collections
import pytest

from minirec_jax.data import loading
from minirec_jax.data import movielens
from minirec_jax.data.errors import DataError
from minirec_jax.data.movielens import reader

# (user, MovieLens item id, rating, timestamp) in file order. Ids 5, 12, 30, 41 become items
# 0, 1, 2, 3. Per user in time order (ties keep file order):
#   7: 0@10 2@20 1@20 3@30   8: 0@5 1@15 2@25   5: 3@1 2@2 1@3 0@4   9: 3@40 2@50   6: 1@35
INTERACTIONS = [('7', 5, 5, 10), ('8', 12, 3, 15), ('7', 30, 4, 20), ('7', 12, 4, 20),
                ('8', 5, 2, 5), ('5', 41, 1, 1), ('7', 41, 1, 30), ('9', 41, 3, 40),
                ('5', 30, 2, 2), ('8', 30, 3, 25), ('6', 12, 4, 35), ('5', 12, 5, 3),
                ('9', 30, 2, 50), ('5', 5, 3, 4)]
# Written out of id order on purpose: ids are assigned by increasing MovieLens id.
MOVIES = {30: ('Four Rooms (1995)', '01-Jan-1995', ['Thriller']),
          5: ('Toy Story (1995)', '01-Jan-1995', ['Animation', "Children's", 'Comedy']),
          41: ('Get Shorty (1995)', '01-Jan-1995', ['Action', 'Comedy', 'Drama']),
          12: ('Usual Suspects, The (1995)', '14-Aug-1995', ['Crime', 'Thriller'])}
TITLES = ['Toy Story', 'Usual Suspects, The', 'Four Rooms', 'Get Shorty']
SPLITS = ('train', 'valid', 'test')
REAL_WHEEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), '.cache',
                          'downloads', reader.WHEEL_NAME)


def _grouplens_texts():
  data = ''.join(f'{u}\t{i}\t{r}\t{t}\n' for u, i, r, t in INTERACTIONS)
  item = ''
  for i, (title, date, genres) in MOVIES.items():
    flags = ['1' if g in genres else '0' for g in reader.GENRES]
    item += '|'.join([str(i), title, date, '', 'http://x'] + flags) + '\n'
  return data, item


def _recbole_texts():
  inter = 'user_id:token\titem_id:token\trating:float\ttimestamp:float\n' + ''.join(
      f'{u}\t{i}\t{r}\t{t}\n' for u, i, r, t in INTERACTIONS)
  item = 'item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n' + ''.join(
      f'{i}\t{title[:-7]}\t{date[-4:]}\t{" ".join(genres)}\n'
      for i, (title, date, genres) in MOVIES.items())
  return inter, item


def _write(folder, files):
  os.makedirs(folder, exist_ok=True)
  for name, text in files.items():
    with open(os.path.join(folder, name), 'w', encoding='latin-1') as f:
      f.write(text)
  return str(folder)


def _write_grouplens(folder):
  return _write(folder, dict(zip(('u.data', 'u.item'), _grouplens_texts())))


def _write_recbole(folder):
  return _write(folder, dict(zip(('ml-100k.inter', 'ml-100k.item'), _recbole_texts())))


def _write_fake_wheel(folder):
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, reader.WHEEL_NAME)
  with zipfile.ZipFile(path, 'w') as z:
    for suffix, text in zip(('inter', 'item'), _recbole_texts()):
      z.writestr(reader.WHEEL_MEMBER.format(suffix), text)
  return path


def _config(tmp_path, protocol, source, manual_dir='', max_history=0, tfds_dir='tfds'):
  return ml_collections.ConfigDict(dict(
      name='movielens', protocol=protocol, max_history=max_history, source=source,
      manual_dir=manual_dir, data_dir=str(tmp_path / tfds_dir), cache_dir=str(tmp_path / 'cache')))


def _rows(source):
  return [(e['user_id'].decode(), e['history'].tolist(), int(e['target']), int(e['timestamp']))
          for e in source]


def _all_rows(ds):
  return {name: _rows(ds.split(name)) for name in SPLITS}


def test_both_formats_read_the_same(tmp_path):
  a = reader.read_grouplens(_write_grouplens(tmp_path / 'gl'))
  b = reader.read_manual(_write_recbole(tmp_path / 'rb'))
  assert (a.users, a.items, a.timestamps) == (b.users, b.items, b.timestamps)
  assert a.items == [0, 1, 2, 1, 0, 3, 3, 3, 2, 2, 1, 1, 2, 0]
  assert a.original_item_ids == b.original_item_ids == [5, 12, 30, 41]
  assert a.table.title == b.table.title == TITLES
  assert a.table.description == b.table.description
  assert a.table.description[0] == "Year: 1995. Genres: Animation, Children's, Comedy."
  assert a.table.sid == [''] * 4
  assert (a.source, b.source) == ('grouplens', 'recbole')


def test_minionerec_protocol_exact(tmp_path):
  manual = _write_grouplens(tmp_path / 'gl')
  ds = loading.load(_config(tmp_path, 'minionerec', 'manual', manual, max_history=2))
  # 9 samples pooled and stably sorted by target time -> train 7, valid 1, test 1; histories
  # keep the last 2 items; user 6 (one interaction) gives none.
  assert _all_rows(ds) == {
      'train': [('5', [3], 2, 2), ('5', [3, 2], 1, 3), ('5', [2, 1], 0, 4), ('8', [0], 1, 15),
                ('7', [0], 2, 20), ('7', [0, 2], 1, 20), ('8', [0, 1], 2, 25)],
      'valid': [('7', [2, 1], 3, 30)],
      'test': [('9', [3], 2, 50)]}
  stats = ds.builder.info.metadata['stats']
  assert stats['users_skipped'] == 1 and stats['samples'] == 9
  assert (stats['users'], stats['items'], stats['interactions']) == (5, 4, 14)
  assert ds.builder.builder_config.name == 'manual_minionerec_h2'
  assert ds.items.title == TITLES


def test_leave_one_out_protocol_exact(tmp_path):
  manual = _write_recbole(tmp_path / 'rb')
  ds = loading.load(_config(tmp_path, 'loo', 'manual', manual, max_history=2))
  # Users 9 and 6 (< 3 interactions) are skipped; user 8 (3) gives valid and test only.
  assert _all_rows(ds) == {
      'train': [('7', [0], 2, 20), ('5', [3], 2, 2)],
      'valid': [('7', [0, 2], 1, 20), ('8', [0], 1, 15), ('5', [3, 2], 1, 3)],
      'test': [('7', [2, 1], 3, 30), ('8', [0, 1], 2, 25), ('5', [2, 1], 0, 4)]}
  stats = ds.builder.info.metadata['stats']
  assert stats['users_skipped'] == 2
  assert stats['rows'] == {'train': 2, 'valid': 3, 'test': 3}


def test_wheel_source_matches_manual_deterministic_and_tf_free(tmp_path):
  _write_fake_wheel(str(tmp_path / 'cache'))
  first = loading.load(_config(tmp_path, 'loo', 'recbole_wheel', tfds_dir='a'))
  again = loading.load(_config(tmp_path, 'loo', 'recbole_wheel', tfds_dir='b'))
  manual = loading.load(_config(tmp_path, 'loo', 'manual', _write_grouplens(tmp_path / 'gl'),
                                tfds_dir='c'))
  assert first.builder.builder_config.name == 'recbole_wheel_loo_h50'
  assert _all_rows(first) == _all_rows(again) == _all_rows(manual)
  assert first.builder.info.metadata == again.builder.info.metadata
  assert first.items == manual.items
  assert 'tensorflow' not in sys.modules


def test_settings_do_not_share_a_folder(tmp_path):
  names = {movielens.make_builder(_config(tmp_path, p, 'recbole_wheel', max_history=h),
                                  str(tmp_path)).builder_config.name
           for p in ('loo', 'minionerec') for h in (0, 10, 50)}
  assert names == {'recbole_wheel_loo_h50', 'recbole_wheel_loo_h10',
                   'recbole_wheel_minionerec_h10', 'recbole_wheel_minionerec_h50'}


@pytest.mark.parametrize('changes, field', [
    (dict(protocol='random'), 'data.protocol'),
    (dict(source='web'), 'data.source'),
    (dict(max_history=-1), 'data.max_history'),
    (dict(source='manual', manual_dir=''), 'data.manual_dir'),
])
def test_bad_config(tmp_path, changes, field):
  cfg = _config(tmp_path, 'loo', 'recbole_wheel')
  cfg.update(changes)
  with pytest.raises(DataError, match=f"field '{field}'"):
    movielens.make_builder(cfg, str(tmp_path))


def test_grouplens_offline_fails_fast_with_a_hint(tmp_path, monkeypatch):
  def unreachable(*args, **kwargs):
    raise OSError('network is unreachable')
  monkeypatch.setattr(socket, 'create_connection', unreachable)
  builder = movielens.make_builder(_config(tmp_path, 'loo', 'grouplens'), str(tmp_path))
  with pytest.raises(DataError, match='source=recbole_wheel.*source=manual'):
    builder.download_and_prepare()


def test_wheel_is_fetched_with_pip_when_absent(tmp_path, monkeypatch):
  calls = []

  def fake_pip(cmd, **kwargs):
    calls.append(cmd)
    _write_fake_wheel(cmd[cmd.index('-d') + 1])
    return subprocess.CompletedProcess(cmd, 0, '', '')
  monkeypatch.setattr(subprocess, 'run', fake_pip)
  path = reader.recbole_wheel(str(tmp_path / 'dl'))
  assert path == str(tmp_path / 'dl' / reader.WHEEL_NAME)
  assert calls[0][1:5] == ['-m', 'pip', 'download', '--no-deps']
  assert f'recbole=={reader.RECBOLE_VERSION}' in calls[0]
  assert reader.recbole_wheel(str(tmp_path / 'dl')) == path and len(calls) == 1  # cached now
  assert reader.read_recbole_wheel(path).table.title == TITLES


def test_wheel_fetch_failure_names_the_fix(tmp_path, monkeypatch):
  monkeypatch.setattr(subprocess, 'run', lambda cmd, **kwargs: subprocess.CompletedProcess(
      cmd, 1, '', 'ERROR: No matching distribution found'))
  with pytest.raises(DataError, match='No matching distribution.*source=manual'):
    reader.recbole_wheel(str(tmp_path / 'dl'))
  bad = tmp_path / 'bad.whl'
  bad.write_text('not a zip')
  with pytest.raises(DataError, match='not a recbole wheel'):
    reader.read_recbole_wheel(str(bad))


@pytest.mark.parametrize('line, field, problem', [
    ('7\tx\t5\t10', 'item_id', 'not an integer'),
    ('7\t99\t5\t10', 'item_id', 'item id 99 is not in'),
    ('7\t5\t5\tyesterday', 'timestamp', 'not an integer'),
    ('7\t5\tgood\t10', 'rating', 'not an integer'),
    ('u7\t5\t5\t10', 'user_id', 'not an integer'),
    ('7\t5', 'line', 'expected 4'),
])
def test_bad_u_data_lines(tmp_path, line, field, problem):
  folder = _write_grouplens(tmp_path / 'gl')
  with open(os.path.join(folder, 'u.data'), 'a') as f:
    f.write(line + '\n')
  with pytest.raises(DataError) as info:
    reader.read_grouplens(folder)
  message = str(info.value)
  assert f'u.data:{len(INTERACTIONS) + 1}' in message
  assert f"field '{field}'" in message and problem in message


@pytest.mark.parametrize('line, field, problem', [
    ('x|Heat (1995)|01-Jan-1995||x' + '|0' * 19, 'movie id', 'not an integer'),
    ('5|Heat (1995)|01-Jan-1995||x' + '|0' * 19, 'item_id', 'duplicate item id'),
    ('8|Heat (1995)|01-Jan-1995||x' + '|0' * 18 + '|yes', 'Western', 'must be 0 or 1'),
    ('8|Heat (1995)|01-Jan-1995', 'line', 'expected 24'),
])
def test_bad_u_item_lines(tmp_path, line, field, problem):
  folder = _write_grouplens(tmp_path / 'gl')
  with open(os.path.join(folder, 'u.item'), 'a', encoding='latin-1') as f:
    f.write(line + '\n')
  with pytest.raises(DataError) as info:
    reader.read_grouplens(folder)
  message = str(info.value)
  assert f'u.item:{len(MOVIES) + 1}' in message
  assert f"field '{field}'" in message and problem in message


@pytest.mark.parametrize('name, line, where, field, problem', [
    ('ml-100k.inter', '7\t5\t4\tinf', 16, 'timestamp', 'not a finite number'),
    ('ml-100k.inter', '7\t5\t4\t10\textra', 16, 'line', 'expected 4'),
    ('ml-100k.inter', '\t5\t4\t10', 16, 'user_id', 'empty user id'),
    ('ml-100k.item', '77\tHeat\t1995', 6, 'line', 'expected 4'),
])
def test_bad_recbole_lines(tmp_path, name, line, where, field, problem):
  folder = _write_recbole(tmp_path / 'rb')
  with open(os.path.join(folder, name), 'a') as f:
    f.write(line + '\n')
  with pytest.raises(DataError) as info:
    reader.read_manual(folder)
  message = str(info.value)
  assert f'{name}:{where}' in message
  assert f"field '{field}'" in message and problem in message


def test_missing_files_and_headers(tmp_path):
  with pytest.raises(DataError, match='expected u.data'):
    reader.read_manual(str(tmp_path))
  folder = _write_recbole(tmp_path / 'rb')
  os.remove(os.path.join(folder, 'ml-100k.item'))
  with pytest.raises(DataError, match='ml-100k.item: missing RecBole .item file'):
    reader.read_manual(folder)
  folder = _write_grouplens(tmp_path / 'gl')
  os.remove(os.path.join(folder, 'u.data'))
  os.rename(os.path.join(folder, 'u.item'), os.path.join(folder, 'u.data'))
  with pytest.raises(DataError, match='u.item: missing MovieLens u.item'):
    reader.read_manual(folder)
  inter, item = _recbole_texts()
  with pytest.raises(DataError, match="x.inter:1: field 'timestamp': missing column"):
    reader.read_recbole_atomic('x.inter', 'x.item', inter.replace('timestamp', 'time'), item)


def test_manual_folder_may_hold_the_extracted_zip(tmp_path):
  _write_grouplens(tmp_path / 'zip' / 'ml-100k')
  assert reader.read_manual(str(tmp_path / 'zip')).table.title == TITLES


def test_empty_manual_folder(tmp_path):
  (tmp_path / 'empty').mkdir()
  with pytest.raises(DataError, match="field 'data.manual_dir'.*empty"):
    loading.load(_config(tmp_path, 'loo', 'manual', str(tmp_path / 'empty')))


@pytest.mark.skipif(not os.path.isfile(REAL_WHEEL), reason=f'{REAL_WHEEL} is not cached')
def test_real_movielens_100k_from_the_recbole_wheel(tmp_path):
  raw = reader.read_recbole_wheel(REAL_WHEEL)
  assert (len(set(raw.users)), raw.table.num_items, len(raw.users)) == (943, 1682, 100_000)
  assert raw.table.title[0] == 'Toy Story'
  assert raw.table.description[0] == "Year: 1995. Genres: Animation, Children's, Comedy."
  # RecBole 1.2.1 reports 99,057 interactions for LOO: its samples after augmentation.
  expected = {'loo': ([97_171, 943, 943], 99_057, 50),
              'minionerec': ([79_245, 9_906, 9_906], 99_057, 10)}
  start = time.perf_counter()
  for protocol, (rows, samples, cap) in expected.items():
    cfg = _config(tmp_path, protocol, 'recbole_wheel')
    cfg.cache_dir = os.path.dirname(REAL_WHEEL)
    ds = loading.load(cfg)
    assert [len(ds.split(n)) for n in SPLITS] == rows
    stats = ds.builder.info.metadata['stats']
    assert (stats['users'], stats['items'], stats['users_skipped']) == (943, 1682, 0)
    assert (stats['interactions'], stats['samples']) == (100_000, samples)
    test = ds.split('test')
    assert max(len(test[i]['history']) for i in range(0, len(test), 50)) == cap
  print(f'built real ml-100k, both protocols, in {time.perf_counter() - start:.1f} s')

