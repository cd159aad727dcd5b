"""Ranking metrics, predictions files and the compute_metrics command."""

import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import metrics
from minirec_jax.evaluation import predictions

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hand_computed_cases():
  ranked = np.array([[5, 3, 9],    # hit at rank 1
                     [7, 7, 2],    # hit at rank 0 (duplicate later does not matter)
                     [1, 2, 4],    # miss
                     [2, 8, 8]])   # hit at rank 1: only the first hit counts
  targets = np.array([3, 7, 0, 8])
  np.testing.assert_array_equal(metrics.first_hit_rank(ranked, targets), [1, 0, -1, 1])
  got = metrics.compute_metrics(ranked, targets, ks=(1, 3, 5))
  assert got['hr@1'] == pytest.approx(1 / 4)
  assert got['hr@3'] == pytest.approx(3 / 4)
  assert 'hr@5' not in got  # K longer than the lists is dropped
  assert got['ndcg@3'] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(3)) / 4)
  assert got['mrr@3'] == pytest.approx((0.5 + 1 + 0.5) / 4)
  assert got['ndcg@1'] == got['mrr@1'] == got['hr@1']


def test_item_groups_count_collided_items_as_hits():
  groups = np.array([0, 1, 1, 3])  # items 1 and 2 share a SID
  ranked = np.array([[0, 2], [3, 0]])
  np.testing.assert_array_equal(metrics.first_hit_rank(ranked, [1, 2], groups), [1, -1])
  np.testing.assert_array_equal(metrics.first_hit_rank(ranked, [1, 2]), [-1, -1])


def test_padding_ids_never_hit_and_invalid_rows_are_skipped():
  ranked = np.array([[-1, 4], [0, 1]])
  np.testing.assert_array_equal(metrics.first_hit_rank(ranked, [0, 1], [0, 1, 2, 3, 4]), [-1, 1])
  sums = metrics.metric_sums(ranked, [4, 1], (1, 2), valid=[True, False])
  assert sums.count == 1 and sums.means()['hr@2'] == 1.0 and sums.means()['hr@1'] == 0.0


def test_numpy_and_jnp_agree_and_jit_does_not_retrace():
  rng = np.random.default_rng(0)
  ranked = rng.integers(0, 30, size=(64, 20))
  targets = rng.integers(0, 30, size=64)
  groups = rng.integers(0, 25, size=30)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def jnp_metrics(r, t, g):
    return metrics.per_sample_metrics(metrics.first_hit_rank_jnp(r, t, g), (1, 5, 10), xp=jnp)

  for seed in range(2):
    ranked = np.random.default_rng(seed).integers(0, 30, size=(64, 20))
    expected = metrics.per_sample_metrics(metrics.first_hit_rank(ranked, targets, groups),
                                          (1, 5, 10))
    got = jnp_metrics(ranked, targets, groups)
    for key, value in expected.items():
      np.testing.assert_allclose(np.asarray(got[key]), value, rtol=1e-6)


def test_tables():
  m = metrics.compute_metrics(np.array([[1, 2, 3]]), np.array([2]), ks=(1, 3))
  assert '| HR | 0.0000 | 1.0000 |' in metrics.full_table(m)
  t1 = metrics.table1({'ours': {'hr@3': 0.5, 'ndcg@3': 0.25}})
  assert t1.splitlines()[0].startswith('| method | HR@3 | NDCG@3 |')
  assert '| ours | 0.5000 | 0.2500 | - |' in t1


def _rows():
  return [{'user_id': 'A1', 'target': 3, 'items': [5, 3, 9], 'scores': [-0.1, -0.5, -0.9]},
          {'user_id': 'A2', 'target': 7, 'items': [7, 1], 'scores': [-0.2, -0.3],
           'sample_index': 1, 'split': 'test'}]


def test_predictions_round_trip(tmp_path):
  path = str(tmp_path / 'p.jsonl')
  assert predictions.write(path, iter(_rows())) == 2
  assert list(predictions.read(path)) == _rows()
  items, targets = predictions.ranked_arrays(_rows())
  np.testing.assert_array_equal(items, [[5, 3, 9], [7, 1, -1]])
  np.testing.assert_array_equal(targets, [3, 7])


@pytest.mark.parametrize('line, field', [
    ('{"user_id": "A", "target": 1, "items": [1]', 'line'),
    ('{"user_id": "A", "items": [1], "scores": [0.5]}', 'target'),
    ('{"user_id": 5, "target": 1, "items": [1], "scores": [0.5]}', 'user_id'),
    ('{"user_id": "A", "target": 1, "items": [1, "x"], "scores": [0.5, 0.1]}', 'items'),
    ('{"user_id": "A", "target": 1, "items": [1, 2], "scores": [0.5]}', 'scores'),
    ('[1, 2]', 'row'),
])
def test_bad_prediction_lines(tmp_path, line, field):
  path = tmp_path / 'p.jsonl'
  path.write_text(json.dumps(_rows()[0]) + '\n' + line + '\n')
  with pytest.raises(DataError) as info:
    list(predictions.read(str(path)))
  assert f'{path}:2' in str(info.value) and f"field '{field}'" in str(info.value)


def test_compute_metrics_command(tmp_path):
  path = str(tmp_path / 'p.jsonl')
  predictions.write(path, _rows())
  out = str(tmp_path / 'm.json')
  result = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'compute_metrics.py'),
                           f'--predictions={path}', '--ks=1,2', f'--output={out}'],
                          capture_output=True, text=True)
  assert result.returncode == 0, result.stderr[-1000:]
  assert '| HR | 0.5000 | 1.0000 |' in result.stdout
  with open(out) as f:
    assert json.load(f)['ndcg@2'] == pytest.approx((1 / math.log2(3) + 1) / 2)
  bad = tmp_path / 'bad.jsonl'
  bad.write_text('{"user_id": "A"}\n')
  result = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'compute_metrics.py'),
                           f'--predictions={bad}'], capture_output=True, text=True)
  assert result.returncode == 2
  assert "bad.jsonl:1: field 'target': missing field" in result.stderr
  assert 'Traceback' not in result.stderr
