"""Tokenizers compared by their SFT runs: statistics from report.json or the official table,
item-level metrics and paired differences from the baseline, and the binary around them."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from minirec_jax.data import synthetic
from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import tokenizer_comparison as tc
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.semantic_ids import report as report_lib
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _sft_workdir(root, name, sids, ranked, data=None):
  """An SFT workdir as the loop leaves it: config.json and predictions_valid.jsonl (4 users,
  target 7)."""
  workdir = root / name
  workdir.mkdir()
  config = load_config('configs/sft.py:dataset=industrial,tiny')
  config.sids.update(sids)
  if data:
    config.data.update(data)
  (workdir / 'config.json').write_text(config.to_json_best_effort())
  predictions.write(workdir / 'predictions_valid.jsonl', [
      predictions.make_row(f'u{i}', 7, items, [0.0] * len(items)) for i, items in enumerate(ranked)])
  return str(workdir)


def _tokenizer_workdir(root, name, codes, fit_s):
  workdir = root / name
  workdir.mkdir()
  report = report_lib.tokenizer_report(codes, codes, 4, recon_error=1e-3)
  report.update(method='rqvae', timing_s={'embeddings': 0.1, 'fit': fit_s})
  (workdir / tc.REPORT_FILE).write_text(json.dumps(report))
  return str(workdir)


@pytest.fixture
def runs(tmp_path):
  codes = np.array([[0, 1], [0, 1], [2, 3], [1, 0]])  # items 0 and 1 collide
  tok = _tokenizer_workdir(tmp_path, 'tok', codes, fit_s=12.5)
  base = _sft_workdir(tmp_path, 'sft_a', {'source': 'tokenizer', 'path': tok},
                      [[7, 1], [1, 2], [1, 7], [1, 2]])
  other = _sft_workdir(tmp_path, 'sft_b', {'source': 'tokenizer', 'path': tok},
                       [[7, 1], [7, 2], [7, 1], [1, 2]])
  return {'a': base, 'b': other}


def test_rows_hold_the_report_the_metrics_and_the_paired_gain(runs):
  rows = tc.compare_tokenizers(runs, 'a', artifacts.workdir_config, ks=(1,))
  assert [r.name for r in rows] == ['a', 'b'] and rows[0].paired is None
  tok = rows[0].tokenizer
  assert (tok['collided_items'], tok['collision_groups'], tok['max_group']) == (2, 1, 2)
  assert [level['codes_used'] for level in tok['levels']] == [3, 3]
  assert (tok['method'], tok['recon_error'], tok['fit_s']) == ('rqvae', 1e-3, 12.5)
  assert rows[0].metrics['hr@1'] == 0.25 and rows[1].metrics['hr@1'] == 0.75
  hr1 = {d.metric: d for d in rows[1].paired}['hr@1']
  assert hr1.diff == pytest.approx(0.5)
  assert hr1.stderr == pytest.approx(np.std([0.0, 1.0, 1.0, 0.0], ddof=1) / 2)
  table = tc.comparison_markdown(rows, (1,))
  assert '| a | rqvae | 2 / 1 / 2 | 3 / 3 |' in table
  assert '| 1.00e-03 | 12 | 0.2500 | 0.2500 |' in table
  assert '0.7500 (+0.5000 +- 0.2887)' in table
  with pytest.raises(ValueError, match="baseline 'c' is not one of the runs"):
    tc.compare_tokenizers(runs, 'c', artifacts.workdir_config)


def test_official_sids_are_summarised_from_the_table_with_their_collisions(tmp_path):
  layout = write_synthetic_layout(str(tmp_path / 'data'), synthetic.SyntheticParams(
      num_items=30, num_clusters=3, num_users=40, seed=0))
  data = {'category': 'Toy', 'manual_dir': layout, 'data_dir': str(tmp_path / 'tfds')}
  workdir = _sft_workdir(tmp_path, 'sft_official', {'source': 'official', 'path': ''},
                         [[7]] * 4, data=data)
  config = artifacts.workdir_config(workdir)
  summary = tc.tokenizer_summary(config)
  assert summary['method'] == 'official' and summary['items'] == 30
  assert summary['fit_s'] is None and len(summary['levels']) >= 3
  # A tokenizer workdir without its report is named in the error.
  config.sids.update({'source': 'tokenizer', 'path': str(tmp_path / 'nowhere')})
  with pytest.raises(DataError, match='nowhere/report.json'):
    tc.tokenizer_summary(config)


def test_the_binary_prints_the_table(runs, tmp_path):
  output = tmp_path / 'out.json'
  done = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'compare_tokenizers.py'),
       f'--runs=a:{runs["a"]},b:{runs["b"]}', '--baseline=a', '--ks=1', f'--output={output}'],
      capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-2000:]
  assert '0.7500 (+0.5000 +- 0.2887)' in done.stdout
  saved = json.loads(output.read_text())
  assert saved['rows'][1]['paired'][0]['metric'] == 'hr@1'
  bad = subprocess.run(
      [sys.executable, os.path.join(REPO, 'experiments', 'compare_tokenizers.py'),
       f'--runs=a{runs["a"]}', '--baseline=a'], capture_output=True, text=True, cwd=REPO)
  assert bad.returncode == 1 and 'is not name:workdir' in bad.stderr
