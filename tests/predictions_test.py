"""Predictions files: round trip, validation errors, file metrics and the compute_metrics binary."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, 'experiments', 'compute_metrics.py')
NDCG_RANK1 = 1 / math.log2(3)


def _rows():
  """First-hit ranks 1, 0, miss, 1 (the duplicate 8 does not count twice)."""
  return [
      {'user_id': 'A1', 'target': 3, 'items': [5, 3, 9], 'scores': [-0.1, -0.5, -0.9]},
      {'user_id': 'A2', 'target': 7, 'items': [7, 1], 'scores': [-0.2, -0.2],
       'sample_index': 1, 'split': 'test'},
      {'user_id': 'A3', 'target': 2, 'items': [4, 6, 8], 'scores': [3, 2.5, 1]},
      {'user_id': 'A4', 'target': 8, 'items': [2, 8, 8], 'scores': [0.0, -1.0, -1e9]},
  ]


def _write_lines(tmp_path, *lines):
  path = tmp_path / 'p.jsonl'
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


def test_round_trip_and_make_row(tmp_path):
  path = str(tmp_path / 'sub' / 'p.jsonl')
  assert predictions.write(path, iter(_rows())) == 4  # Streams an iterator; makes the folder.
  assert list(predictions.read(path)) == _rows()
  assert os.listdir(tmp_path / 'sub') == ['p.jsonl']  # No temporary file left behind.
  row = predictions.make_row(np.str_('U'), np.int32(4), np.array([4, 1], np.int64),
                             np.array([-0.25, -1.5], np.float32), sample_index=np.int64(2),
                             split='valid')
  assert row == {'user_id': 'U', 'target': 4, 'items': [4, 1], 'scores': [-0.25, -1.5],
                 'sample_index': 2, 'split': 'valid'}
  assert type(row['items'][0]) is int and type(row['scores'][0]) is float
  predictions.write(path, [row])
  assert list(predictions.read(path)) == [row]


def test_writing_a_bad_row_fails_and_keeps_the_old_file(tmp_path):
  path = str(tmp_path / 'p.jsonl')
  predictions.write(path, _rows())
  bad = dict(_rows()[0], scores=[-0.1])
  with pytest.raises(DataError, match=r"p.jsonl:2: field 'scores'"):
    predictions.write(path, [_rows()[0], bad])
  assert list(predictions.read(path)) == _rows()
  assert os.listdir(tmp_path) == ['p.jsonl']


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
  good = json.dumps(_rows()[0])
  path = _write_lines(tmp_path, good, '', good, '{"user_id": "A"}')
  with pytest.raises(DataError, match=r"p.jsonl:4: field 'target': missing field"):
    list(predictions.read(path))


GOOD = {'user_id': 'A', 'target': 1, 'items': [1, 2], 'scores': [0.5, 0.25]}


@pytest.mark.parametrize('line, field, value', [
    ('{"user_id": "A", "target": 1, "items": [1]', '(line)', '"items": [1]'),   # bad JSON
    ('[1, 2]', '(line)', '[1, 2]'),
    ('{"target": 1, "items": [1], "scores": [0.5]}', 'user_id', None),
    ('{"user_id": "A", "items": [1], "scores": [0.5]}', 'target', None),
    ('{"user_id": "A", "target": 1, "scores": [0.5]}', 'items', None),
    ('{"user_id": "A", "target": 1, "items": [1]}', 'scores', None),
    (dict(GOOD, user_id=5), 'user_id', '5'),
    (dict(GOOD, target='1'), 'target', "'1'"),
    (dict(GOOD, target=True), 'target', 'True'),
    (dict(GOOD, target=1.0), 'target', '1.0'),
    (dict(GOOD, target=-3), 'target', '-3'),
    (dict(GOOD, items='1 2'), 'items', "'1 2'"),
    (dict(GOOD, items=[1, 'x']), 'items[1]', "'x'"),
    (dict(GOOD, items=[1, -1]), 'items[1]', '-1'),
    (dict(GOOD, scores={'a': 1}), 'scores', "{'a': 1}"),
    (dict(GOOD, scores=[0.5, None]), 'scores[1]', 'None'),
    (dict(GOOD, scores=[0.5, False]), 'scores[1]', 'False'),
    ('{"user_id": "A", "target": 1, "items": [1], "scores": [NaN]}', 'scores[0]', 'nan'),
    (dict(GOOD, scores=[0.25, 0.5]), 'scores[1]', '0.5'),                      # ascending
    (dict(GOOD, items=[1, 2, 3]), 'scores', '[0.5, 0.25]'),                   # length mismatch
    (dict(GOOD, sample_index=-1), 'sample_index', '-1'),
    (dict(GOOD, sample_index='0'), 'sample_index', "'0'"),
    (dict(GOOD, split=1), 'split', '1'),
    (dict(GOOD, score=[0.5]), 'score', '[0.5]'),                               # unknown key
])
def test_every_malformed_line_names_file_line_field_and_value(tmp_path, line, field, value):
  if isinstance(line, dict):
    line = json.dumps(line)
  path = _write_lines(tmp_path, json.dumps(GOOD), line)
  with pytest.raises(DataError) as info:
    list(predictions.read(path))
  message = str(info.value)
  assert message.startswith(f"{path}:2: field '{field}'"), message
  if value is not None:
    assert value in message, message


def test_missing_file(tmp_path):
  with pytest.raises(DataError, match='missing predictions file'):
    list(predictions.read(str(tmp_path / 'nope.jsonl')))


@pytest.mark.parametrize('chunk_rows', [1, 3, 4096])
def test_file_metrics_hand_computed(tmp_path, chunk_rows):
  path = str(tmp_path / 'p.jsonl')
  predictions.write(path, _rows())
  result = predictions.file_metrics(path, ks=(1, 2, 3, 5), chunk_rows=chunk_rows)
  assert (result.samples, result.list_length, result.dropped_ks) == (4, 3, (5,))
  assert result.metrics == pytest.approx({
      'hr@1': 1 / 4, 'ndcg@1': 1 / 4, 'mrr@1': 1 / 4,
      'hr@2': 3 / 4, 'ndcg@2': (2 * NDCG_RANK1 + 1) / 4, 'mrr@2': 2 / 4,
      'hr@3': 3 / 4, 'ndcg@3': (2 * NDCG_RANK1 + 1) / 4, 'mrr@3': 2 / 4}, abs=1e-12)
  assert result.to_json()['samples'] == 4 and result.to_json()['hr@2'] == result.metrics['hr@2']


def test_file_metrics_with_item_groups(tmp_path):
  path = str(tmp_path / 'p.jsonl')
  predictions.write(path, _rows())
  groups = np.arange(10)
  groups[6] = 2  # Items 2 and 6 share a SID: row 3 hits at rank 1 at SID level only.
  result = predictions.file_metrics(path, ks=(3,), item_to_group=groups)
  assert result.metrics['sid_hr@3'] == pytest.approx(1.0)
  assert result.metrics['hr@3'] == pytest.approx(3 / 4)  # item level: the list as it is
  assert set(result.metrics) == {'hr@3', 'ndcg@3', 'mrr@3', 'sid_hr@3', 'sid_ndcg@3',
                                 'sid_mrr@3'}
  with pytest.raises(DataError, match=r"p.jsonl:1: field 'items\[2\]' = 9: item id outside"):
    predictions.file_metrics(path, ks=(3,), item_to_group=groups[:9])


def test_file_metrics_rejects_empty_file_and_bad_ks(tmp_path):
  path = _write_lines(tmp_path, '')
  with pytest.raises(DataError, match='no predictions'):
    predictions.file_metrics(path)
  with pytest.raises(ValueError, match='positive'):
    predictions.file_metrics(path, ks=(0,))


def test_load_item_groups(tmp_path):
  good = tmp_path / 'g.npy'
  np.save(good, np.array([0, 1, 1], np.int32))
  np.testing.assert_array_equal(predictions.load_item_groups(good), [0, 1, 1])
  for name, array, match in [('f.npy', np.zeros(3), 'integer'),
                             ('m.npy', np.zeros((2, 2), int), '1-D'),
                             ('n.npy', np.array([0, -1]), r"field '\[1\]' = -1")]:
    np.save(tmp_path / name, array)
    with pytest.raises(DataError, match=match):
      predictions.load_item_groups(tmp_path / name)
  (tmp_path / 'junk.npy').write_text('not numpy')
  with pytest.raises(DataError, match='not a readable .npy'):
    predictions.load_item_groups(tmp_path / 'junk.npy')


def _run(*args):
  return subprocess.run([sys.executable, BINARY, *args], capture_output=True, text=True,
                        timeout=120)


def test_compute_metrics_command(tmp_path):
  path = str(tmp_path / 'p.jsonl')
  predictions.write(path, _rows())
  out = str(tmp_path / 'metrics.json')
  result = _run(f'--predictions={path}', '--ks=1,2,3,5', f'--output={out}')
  assert result.returncode == 0, result.stderr[-2000:]
  lines = result.stdout.splitlines()
  assert lines[0] == f'4 samples, ranked lists of up to 3 items: {path}'
  assert 'K > 3 dropped: 5' in lines
  assert '| item level | 0.7500 | 0.5655 | - | - | - | - |' in lines
  assert '| HR | 0.2500 | 0.7500 | 0.7500 |' in lines
  assert '| NDCG | 0.2500 | 0.5655 | 0.5655 |' in lines
  assert '| MRR | 0.2500 | 0.5000 | 0.5000 |' in lines
  with open(out) as f:
    saved = json.load(f)
  assert saved['samples'] == 4 and saved['ndcg@2'] == pytest.approx((2 * NDCG_RANK1 + 1) / 4)

  groups = str(tmp_path / 'groups.npy')
  np.save(groups, np.array([0, 1, 2, 3, 4, 5, 2, 7, 8, 9]))
  result = _run(f'--predictions={path}', '--ks=3', f'--item_groups={groups}')
  assert result.returncode == 0, result.stderr[-2000:]
  assert '| HR | 1.0000 |' in result.stdout.splitlines()


def test_compute_metrics_command_bad_input(tmp_path):
  bad = _write_lines(tmp_path, json.dumps(GOOD), '{"user_id": "A", "target": 1, "items": [1]}')
  result = _run(f'--predictions={bad}')
  assert result.returncode == 1
  assert result.stderr.strip() == f"error: {bad}:2: field 'scores': missing field"
  assert 'Traceback' not in result.stderr
  result = _run(f'--predictions={bad}', '--ks=3,x')
  assert result.returncode != 0 and 'positive integers' in result.stderr
  assert 'Traceback' not in result.stderr


def test_gzipped_files_round_trip_and_rounding_keeps_the_ranking(tmp_path):
  rows = _rows()
  path = str(tmp_path / 'p.jsonl.gz')
  assert predictions.write(path, predictions.rounded(rows, 1)) == len(rows)
  with open(path, 'rb') as f:
    assert f.read(2) == b'\x1f\x8b'  # gzip magic
  back = list(predictions.read(path))
  assert [r['items'] for r in back] == [r['items'] for r in rows]
  assert all(s == round(s, 1) for r in back for s in r['scores'])
  assert (predictions.file_metrics(path, ks=(3,)).metrics
          == predictions.file_metrics(_plain(tmp_path, rows), ks=(3,)).metrics)


def _plain(tmp_path, rows):
  path = str(tmp_path / 'plain.jsonl')
  predictions.write(path, rows)
  return path
