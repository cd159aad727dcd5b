"""experiments/recommend.py and minirec_jax.serving.recommend on tiny trained workdirs."""

import json
import os
import subprocess
import sys

import pytest

from minirec_jax.data import synthetic
from minirec_jax.data.errors import DataError
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sasrec as sasrec_loop
from minirec_jax.loops import sft as sft_loop
from minirec_jax.serving import recommend
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_ITEMS = 40


def _data(config, root):
  config.data.category = 'Toy'
  config.data.manual_dir = str(root / 'data')
  config.data.data_dir = str(root / 'tfds')
  return config


@pytest.fixture(scope='module')
def workdirs(tmp_path_factory):
  root = tmp_path_factory.mktemp('recommend')
  write_synthetic_layout(str(root / 'data'), synthetic.SyntheticParams(
      num_items=NUM_ITEMS, num_clusters=4, num_users=50, seed=1))
  sft = _data(load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny'),
              root)
  sft.mesh.num_devices = 1
  sft_loop.train_and_evaluate(sft, str(root / 'sft'))
  pop = _data(load_config(os.path.join(REPO, 'configs', 'sasrec.py')
                          + ':dataset=industrial,variant=pop,tiny'), root)
  pop.mesh.num_devices = 1
  sasrec_loop.train_sasrec(pop, str(root / 'pop'))
  return {'sft': str(root / 'sft'), 'pop': str(root / 'pop')}


def _write(path, rows):
  with open(path, 'w') as f:
    f.write('\n'.join(rows) + '\n')
  return str(path)


@pytest.mark.parametrize('kind', ['sft', 'pop'])
def test_recommends_k_known_items_with_titles_best_first(workdirs, tmp_path, kind):
  path = _write(tmp_path / 'in.jsonl', ['{"user_id": "a", "history": [1, 2, 3]}',
                                        '{"user_id": "b", "history": [5]}'])
  out = str(tmp_path / 'out.jsonl')
  summary = recommend.recommend_file(workdirs[kind], path, out, top_k=5, batch_size=4)
  assert summary['rows'] == 2 and summary['skipped'] == 0
  with open(out) as f:
    rows = [json.loads(line) for line in f]
  assert [r['user_id'] for r in rows] == ['a', 'b']
  for row in rows:
    assert len(row['items']) == 5 and len(set(row['items'])) == 5
    assert all(0 <= i < NUM_ITEMS for i in row['items'])
    assert len(row['titles']) == 5 and all(isinstance(t, str) for t in row['titles'])
    assert row['scores'] == sorted(row['scores'], reverse=True)


def test_csv_input_and_a_history_longer_than_the_window(workdirs, tmp_path):
  path = _write(tmp_path / 'in.csv', ['user_id,history', f'c,"{list(range(30))}"'])
  out = str(tmp_path / 'out.jsonl')
  assert recommend.recommend_file(workdirs['sft'], path, out, top_k=3)['rows'] == 1


@pytest.mark.parametrize('row, field, problem', [
    ('{"user_id": "a", "history": [1, 99]}', 'history', 'item id 99 is not in the catalogue'),
    ('{"user_id": "a", "history": []}', 'history', 'empty history'),
    ('{"user_id": "", "history": [1]}', 'user_id', 'missing or empty user_id'),
    ('{"user_id": "a", "history": "1, 2"}', 'history', 'not a list of item ids'),
    ('{"user_id": "a", "history": [1]', '(line)', 'invalid JSON'),
])
def test_bad_rows_name_file_line_field_or_are_skipped_and_counted(workdirs, tmp_path, row,
                                                                  field, problem):
  path = _write(tmp_path / 'in.jsonl', ['{"user_id": "ok", "history": [1]}', row])
  out = str(tmp_path / 'out.jsonl')
  with pytest.raises(DataError) as info:
    recommend.recommend_file(workdirs['pop'], path, out, top_k=3)
  assert f"{path}:2: field '{field}'" in str(info.value) and problem in str(info.value)
  assert not os.path.exists(out)
  if field == '(line)':
    return  # a line that is not JSON is never skipped
  summary = recommend.recommend_file(workdirs['pop'], path, out, top_k=3, skip_bad_rows=True)
  assert summary['rows'] == 1 and summary['skipped'] == 1 and problem in summary['reasons'][0]


def test_the_binary_reports_a_bad_row_in_one_line(workdirs, tmp_path):
  path = _write(tmp_path / 'in.jsonl', ['{"user_id": "a", "history": [1, 99]}'])
  result = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'recommend.py'),
       f'--workdir={workdirs["pop"]}', f'--input={path}', f'--output={tmp_path / "o.jsonl"}'],
      capture_output=True, text=True, check=False, env={**os.environ, 'JAX_PLATFORMS': 'cpu'})
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {path}:1: field')
