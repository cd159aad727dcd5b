"""Paired comparison of two predictions files."""

import numpy as np
import pytest

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import compare
from minirec_jax.evaluation import predictions
from minirec_jax.infra import metric_logging


def _write(path, ranked):
  rows = [predictions.make_row(f'u{i}', 7, items, [0.0] * len(items))
          for i, items in enumerate(ranked)]
  predictions.write(path, rows)
  return path


def test_paired_difference_and_its_standard_error(tmp_path):
  a = _write(tmp_path / 'a.jsonl', [[7, 1], [1, 2], [1, 7], [1, 2]])
  b = _write(tmp_path / 'b.jsonl', [[7, 1], [7, 2], [7, 1], [1, 2]])
  diffs = {d.metric: d for d in compare.paired_differences(a, b, ks=(1, 2))}
  hr1 = diffs['hr@1']
  assert (hr1.a, hr1.b, hr1.n) == (0.25, 0.75, 4)
  per_row = np.array([0.0, 1.0, 1.0, 0.0])
  assert hr1.diff == pytest.approx(0.5)
  assert hr1.stderr == pytest.approx(per_row.std(ddof=1) / 2)
  assert diffs['hr@2'].diff == pytest.approx(0.25)
  assert diffs['ndcg@2'].diff == pytest.approx((1 + 1 - 1 / np.log2(3)) / 4)


def test_rows_must_match(tmp_path):
  a = _write(tmp_path / 'a.jsonl', [[7], [1]])
  b = tmp_path / 'b.jsonl'
  predictions.write(b, [predictions.make_row('u0', 7, [7], [0.0]),
                        predictions.make_row('other', 7, [1], [0.0])])
  with pytest.raises(DataError, match=r'b.jsonl:2: .*user_id/target'):
    compare.paired_differences(a, b)
  with pytest.raises(DataError, match='has 1 rows'):
    compare.paired_differences(a, _write(tmp_path / 'c.jsonl', [[7]]))


def test_difference_averaged_over_pairs_averages_each_row_first(tmp_path):
  # Two seeds' (default, variant) pairs on the same 4 users; HR@1 per row:
  # seed 0: default [1, 0, 0, 0], variant [1, 1, 0, 0]; seed 1: default [0, 0, 1, 0],
  # variant [1, 0, 1, 1]. Row means of the differences: [0.5, 0.5, 0, 0.5].
  pairs = [(_write(tmp_path / 'a0.jsonl', [[7], [1], [1], [1]]),
            _write(tmp_path / 'b0.jsonl', [[7], [7], [1], [1]])),
           (_write(tmp_path / 'a1.jsonl', [[1], [1], [7], [1]]),
            _write(tmp_path / 'b1.jsonl', [[7], [1], [7], [7]]))]
  hr1 = {d.metric: d for d in compare.averaged_paired_differences(pairs, ks=(1,))}['hr@1']
  per_row = np.array([0.5, 0.5, 0.0, 0.5])
  assert (hr1.a, hr1.b, hr1.n) == (0.25, 0.625, 4)
  assert hr1.diff == pytest.approx(per_row.mean())
  assert hr1.stderr == pytest.approx(per_row.std(ddof=1) / 2)
  # One pair alone is the plain paired difference.
  alone = compare.averaged_paired_differences(pairs[:1], ks=(1,))
  assert alone == compare.paired_differences(*pairs[0], ks=(1,))
  other_users = _write(tmp_path / 'c.jsonl', [[7], [1], [1], [9]])
  predictions.write(other_users, [predictions.make_row(f'v{i}', 7, [7], [0.0]) for i in range(4)])
  with pytest.raises(DataError, match='holds other rows'):
    compare.averaged_paired_differences([pairs[0], (other_users, other_users)], ks=(1,))


def test_mean_and_spread_over_runs():
  summary = compare.mean_and_spread([{'hr@10': 0.1, 'x': 1.0}, {'hr@10': 0.3}])
  assert set(summary) == {'hr@10'}
  assert summary['hr@10'][0] == pytest.approx(0.2)
  assert summary['hr@10'][1] == pytest.approx(np.std([0.1, 0.3], ddof=1))
  with pytest.raises(ValueError):
    compare.mean_and_spread([])


def test_train_summary_means_logged_steps(tmp_path):
  writer = metric_logging.MetricWriter(str(tmp_path))
  writer.write(0, {'hr@10': 0.1}, prefix='valid/')
  for step, value in [(5, 0.5), (10, 0.25), (15, 0.0)]:
    writer.write(step, {'zero_advantage_groups': value}, prefix='train/')
  writer.close()
  out = compare.train_summary(tmp_path, ['zero_advantage_groups', 'kl'])
  assert out['zero_advantage_groups'] == {'mean': 0.25, 'last': 0.0}
  assert np.isnan(out['kl']['mean']) and np.isnan(out['kl']['last'])


def test_row_standard_errors(tmp_path):
  path = _write(tmp_path / 'a.jsonl', [[7, 2], [3, 7], [5, 6], [7, 4]])  # target 7
  out = compare.row_standard_errors([path, path], [1])
  hits = np.array([1.0, 0.0, 0.0, 1.0])
  assert out['hr@1'] == pytest.approx(hits.std(ddof=1) / 2.0)


def test_file_metrics_and_predictions_file(tmp_path):
  path = _write(tmp_path / 'a.jsonl.gz', [[7, 2], [3, 7], [5, 6], [1, 4]])  # target 7
  out = compare.file_metrics(path, [1, 2])
  assert out['hr@1'] == pytest.approx(0.25) and out['hr@2'] == pytest.approx(0.5)
  assert out['ndcg@2'] == pytest.approx((1 + 1 / np.log2(3)) / 4)
  assert compare.predictions_file(str(path), 'test') == str(path)  # a file is read as it is
  assert compare.predictions_file('runs/a', 'valid') == 'runs/a/predictions_valid.jsonl'
  assert compare.is_predictions_file('x.jsonl') and not compare.is_predictions_file('runs/a')
