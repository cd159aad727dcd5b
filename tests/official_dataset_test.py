"""The official-layout TFDS builder: fixtures, bad input, and the real Industrial splits."""

import ast
import csv
import json
import os
import subprocess
import sys

import ml_collections
import pytest

from minirec_jax.data import loading
from minirec_jax.data.errors import DataError
from minirec_jax.testing import write_official_layout


def _config(root, data_dir, category='Toy'):
  return ml_collections.ConfigDict(dict(name='official', category=category, manual_dir=root,
                                        data_dir=str(data_dir)))


def _load(tmp_path, category='Toy', **layout_kwargs):
  root = write_official_layout(str(tmp_path / 'raw'), category, **layout_kwargs)
  return loading.load(_config(root, tmp_path / 'tfds', category))


def _rows(source):
  return [(e['user_id'].decode(), e['history'].tolist(), int(e['target'])) for e in source]


def test_splits_are_the_csv_rows_in_order(tmp_path):
  ds = _load(tmp_path)
  assert _rows(ds.split('train')) == [('A1', [0], 1), ('A2', [2, 3], 4), ('A1', [0, 1], 2)]
  assert _rows(ds.split('valid')) == [('A3', [1, 2, 3], 5)]
  assert _rows(ds.split('test')) == [('A2', [2, 3, 4], 0), ('A4', [5], 3)]
  assert ds.num_items == 6
  assert ds.items.title[4] == 'Item 4'
  assert ds.items.description[4] == "['About item 4']"
  assert ds.items.sid[4] == '<a_1><b_4><c_0>'


def test_user_data_without_sids_or_info(tmp_path):
  ds = _load(tmp_path, with_sids=False, with_info=False)
  assert not ds.items.has_sids
  assert len(ds.split('train')) == 3


def test_missing_train_split_is_reported_and_valid_test_still_served(tmp_path, caplog):
  ds = _load(tmp_path, splits=('valid', 'test'))
  assert sorted(ds.splits) == ['test', 'valid']
  assert any('no train split for Toy' in r.getMessage() for r in caplog.records)
  with pytest.raises(DataError, match="has no 'train' split: no train split for Toy"):
    ds.split('train')


def _rewrite_line(path, line_no, new_text):
  with open(path) as f:
    lines = f.read().splitlines()
  lines[line_no - 1] = new_text
  with open(path, 'w') as f:
    f.write('\n'.join(lines) + '\n')


def _train_csv(root):
  return os.path.join(root, 'train', 'Toy_5_2016-10-2018-11.csv')


@pytest.mark.parametrize('line_text, field, problem', [
    ('A9,"[\'Item 0\']",Item 1,"[0, 1",1,"[]",<a_1><b_1><c_0>', 'history_item_id',
     'not a valid list literal'),
    ('A9,"[\'Item 0\']",Item 1,"__import__(\'os\')",1,"[]",<a_1><b_1><c_0>',
     'history_item_id', 'not a valid list literal'),
    ('A9,"[]",Item 1,"[]",1,"[]",<a_1><b_1><c_0>', 'history_item_id', 'empty history'),
    ('A9,"[\'Item 0\']",Item 1,"[0, 17]",1,"[]",<a_1><b_1><c_0>', 'history_item_id',
     'item id 17 is not in the catalogue'),
    ('A9,"[\'Item 0\']",Item 1,"[0]",99,"[]",<a_1><b_1><c_0>', 'item_id',
     'item id 99 is not in the catalogue'),
    ('A9,"[\'Item 0\']",Item 1,"[0]",one,"[]",<a_1><b_1><c_0>', 'item_id', 'not an integer'),
    ('A9,"[\'Item 0\']",Item 1,"[0]",1,"[]",<a_1><b_1><c_0>,extra', 'row',
     'row has 8 fields, header has 7'),
    ('A9,"[\'Item 0\']",Item 1,"[0]"', 'item_id', 'fewer fields'),
    ('A9,"[\'Item 0\']",Item 1,"[0]",1,"[]",<a_2><b_2><c_0>', 'item_sid', 'disagrees'),
])
def test_bad_csv_rows_name_file_line_field(tmp_path, line_text, field, problem):
  root = write_official_layout(str(tmp_path / 'raw'))
  _rewrite_line(_train_csv(root), 3, line_text)
  with pytest.raises(DataError) as info:
    loading.load(_config(root, tmp_path / 'tfds'))
  message = str(info.value)
  assert f'{_train_csv(root)}:3' in message
  assert f"field '{field}'" in message
  assert problem in message


def test_invalid_utf8_names_file_line_and_field(tmp_path):
  root = write_official_layout(str(tmp_path / 'raw'))
  path = _train_csv(root)
  with open(path, 'rb') as f:
    lines = f.read().split(b'\n')
  # Line 3's history titles column gets a byte that no UTF-8 text contains.
  lines[2] = lines[2].replace(b'Item 2', b'Item \xff2', 1)
  with open(path, 'wb') as f:
    f.write(b'\n'.join(lines))
  with pytest.raises(DataError) as info:
    loading.load(_config(root, tmp_path / 'tfds'))
  message = str(info.value)
  assert f"{path}:3: field 'history_item_title'" in message
  assert 'not valid UTF-8' in message


def test_missing_column(tmp_path):
  root = write_official_layout(str(tmp_path / 'raw'))
  path = _train_csv(root)
  with open(path) as f:
    text = f.read()
  with open(path, 'w') as f:
    f.write(text.replace('history_item_id', 'history_ids', 1))
  with pytest.raises(DataError, match=r":1: field 'history_item_id': missing required column"):
    loading.load(_config(root, tmp_path / 'tfds'))


def test_missing_folder_and_catalogue(tmp_path):
  with pytest.raises(DataError, match='manual data folder does not exist'):
    loading.load(_config(str(tmp_path / 'nowhere'), tmp_path / 'tfds'))
  root = write_official_layout(str(tmp_path / 'raw'), with_info=False)
  os.remove(os.path.join(root, 'index', 'Toy.item.json'))
  with pytest.raises(DataError, match='missing item catalogue'):
    loading.load(_config(root, tmp_path / 'tfds'))


def test_item_without_title(tmp_path):
  root = write_official_layout(str(tmp_path / 'raw'))
  path = os.path.join(root, 'index', 'Toy.item.json')
  with open(path) as f:
    items = json.load(f)
  del items['3']['title']
  with open(path, 'w') as f:
    json.dump(items, f)
  with pytest.raises(DataError, match=r"Toy.item.json: field 'title' = None: item 3 has no title"):
    loading.load(_config(root, tmp_path / 'tfds'))


def test_building_and_reading_never_imports_tensorflow(tmp_path):
  root = write_official_layout(str(tmp_path / 'raw'))
  code = f"""
import sys, ml_collections
from minirec_jax.data import loading, pipeline
cfg = ml_collections.ConfigDict(dict(name='official', category='Toy', manual_dir={root!r},
                                     data_dir={str(tmp_path / 'tfds')!r}))
ds = loading.load(cfg)
batches = list(pipeline.batched(ds.split('train'), pipeline.BatchSpec(2, drop_remainder=False)))
assert len(batches) == 2
assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
print('OK')
"""
  result = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'OK' in result.stdout


def _csv_rows(path):
  with open(path, newline='') as f:
    return [(r['user_id'], [int(x) for x in ast.literal_eval(r['history_item_id'])],
             int(r['item_id'])) for r in csv.DictReader(f)]


def test_real_industrial_splits_match_the_csvs(amazon18_dir, tmp_path):
  ds = loading.load(_config(amazon18_dir, tmp_path / 'tfds', 'Industrial_and_Scientific'))
  assert ds.num_items == 3686
  expected_sizes = {'train': 36259, 'valid': 4532, 'test': 4533}
  for split, size in expected_sizes.items():
    source = ds.split(split)
    assert len(source) == size
    truth = _csv_rows(os.path.join(amazon18_dir, split,
                                   'Industrial_and_Scientific_5_2016-10-2018-11.csv'))
    assert len(truth) == size
    got = _rows([source[0], source[size - 1]])
    assert got == [truth[0], truth[-1]]
  assert ds.items.sid[1] == '<a_42><b_80><c_160>'


def test_real_office_has_no_train_split(amazon18_dir, tmp_path):
  ds = loading.load(_config(amazon18_dir, tmp_path / 'tfds', 'Office_Products'))
  assert {k: len(v) for k, v in ds.splits.items()} == {'valid': 4866, 'test': 4866}
  with pytest.raises(DataError, match='no train split for Office_Products'):
    ds.split('train')


def test_build_dataset_command_reports_bad_input_without_traceback(tmp_path):
  root = write_official_layout(str(tmp_path / 'raw'))
  _rewrite_line(_train_csv(root), 2, 'A9,"[]",Item 1,"[0, oops]",1,"[]",x')
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  result = subprocess.run(
      [sys.executable, os.path.join(repo, 'experiments', 'build_dataset.py'),
       f'--config={os.path.join(repo, "configs", "dataset.py")}:industrial',
       '--config.data.category=Toy', f'--config.data.manual_dir={root}',
       f'--config.data.data_dir={tmp_path / "tfds"}'], capture_output=True, text=True)
  assert result.returncode == 2
  assert f"{_train_csv(root)}:2: field 'history_item_id' = '[0, oops]'" in result.stderr
  assert 'Traceback' not in result.stderr
