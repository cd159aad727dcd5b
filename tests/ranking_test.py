"""Ranking metrics: official definitions, numpy vs jnp, exact accumulation, tables."""

import functools
import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.evaluation import ranking

# Rank of first hit: 1, 0 (a later duplicate is ignored), miss, 1 (only the first of the two 8s
# counts), miss (padding -1 never hits).
RANKED = np.array([[5, 3, 9],
                   [7, 1, 7],
                   [1, 2, 4],
                   [2, 8, 8],
                   [-1, -1, 6]], np.int32)
TARGETS = np.array([3, 7, 0, 8, 9], np.int32)
RANKS = [1, 0, -1, 1, -1]


def _calc_py_style(ranked, targets, ks):
  """Literal per-sample loop over Python lists, the way calc.py reads: a second reference."""
  sums = {f'{m}@{k}': 0.0 for k in ks for m in ranking.METRIC_NAMES}
  for items, target in zip(ranked.tolist(), targets.tolist()):
    if target in items:
      r = items.index(target)
      for k in ks:
        if r < k:
          sums[f'hr@{k}'] += 1
          sums[f'ndcg@{k}'] += 1 / math.log2(r + 2)
          sums[f'mrr@{k}'] += 1 / (r + 1)
  return {key: v / len(targets) for key, v in sums.items()}


def test_hand_computed_first_hit_ranks_and_means():
  np.testing.assert_array_equal(ranking.first_hit_rank(RANKED, TARGETS), RANKS)
  np.testing.assert_array_equal(ranking.first_hit_rank_jnp(RANKED, TARGETS), RANKS)
  got = ranking.compute_metrics(RANKED, TARGETS, ks=(1, 3, 5))
  assert sorted(got) == ['hr@1', 'hr@3', 'mrr@1', 'mrr@3', 'ndcg@1', 'ndcg@3']  # 5 > 3 items
  assert got['hr@1'] == pytest.approx(1 / 5)
  assert got['hr@3'] == pytest.approx(3 / 5)
  assert got['ndcg@3'] == pytest.approx((1 / math.log2(3) + 1 + 1 / math.log2(3)) / 5)
  assert got['mrr@3'] == pytest.approx((1 / 2 + 1 + 1 / 2) / 5)
  assert got['ndcg@1'] == got['mrr@1'] == got['hr@1']


def test_hand_computed_per_sample_values():
  per_sample = ranking.metrics_from_ranks([2, -1, 0], ks=(2, 3))
  np.testing.assert_allclose(per_sample['hr@2'], [0, 0, 1])
  np.testing.assert_allclose(per_sample['hr@3'], [1, 0, 1])
  np.testing.assert_allclose(per_sample['ndcg@3'], [0.5, 0, 1])  # 1 / log2(4) = 0.5
  np.testing.assert_allclose(per_sample['mrr@3'], [1 / 3, 0, 1])


def test_item_groups_make_same_sid_items_hit():
  groups = np.array([0, 1, 1, 3, 4])  # Items 1 and 2 share a SID.
  ranked = np.array([[0, 2, 1], [3, 0, -1], [4, 4, 3]])
  targets = np.array([1, 2, 3])
  np.testing.assert_array_equal(ranking.first_hit_rank(ranked, targets), [2, -1, 2])
  np.testing.assert_array_equal(ranking.first_hit_rank(ranked, targets, groups), [1, -1, 2])
  np.testing.assert_array_equal(ranking.first_hit_rank_jnp(ranked, targets, jnp.asarray(groups)),
                                [1, -1, 2])
  with pytest.raises(ValueError, match='outside item_to_group'):
    ranking.first_hit_rank(ranked, np.array([1, 2, 5]), groups)


def test_bad_inputs_raise():
  with pytest.raises(ValueError, match='expected ranked_items'):
    ranking.first_hit_rank(RANKED, TARGETS[:2])
  with pytest.raises(ValueError, match='non-negative'):
    ranking.first_hit_rank(RANKED, -TARGETS)
  with pytest.raises(ValueError, match='positive integers'):
    ranking.usable_ks((0, 5), 10)
  assert ranking.usable_ks((10, 3, 50, 3), 20) == (3, 10)


@pytest.mark.parametrize('seed, with_groups', [(0, False), (1, True)])
def test_numpy_jnp_and_loop_agree_on_random_cases(seed, with_groups):
  rng = np.random.default_rng(seed)
  ranked = rng.integers(-1, 30, size=(64, 20)).astype(np.int32)
  targets = rng.integers(0, 30, size=64).astype(np.int32)
  groups = rng.integers(0, 25, size=30).astype(np.int32) if with_groups else None
  ks = ranking.usable_ks(ranking.DEFAULT_KS, ranked.shape[1])
  assert ks == (1, 3, 5, 10, 20)

  ranks = ranking.first_hit_rank(ranked, targets, groups)
  assert 10 < np.sum(ranks >= 0) < 64  # Enough hits and misses to test something.
  out = ranking.batch_metrics_jnp(jnp.asarray(ranked), jnp.asarray(targets), ks,
                                  item_to_group=None if groups is None else jnp.asarray(groups))
  np.testing.assert_array_equal(out.ranks, ranks)
  expected = ranking.metrics_from_ranks(ranks, ks)
  assert set(out.per_sample) == set(expected)
  for key, value in expected.items():
    np.testing.assert_allclose(out.per_sample[key], value, rtol=1e-6)

  means = ranking.compute_metrics(ranked, targets, ks, item_to_group=groups)
  mapped = ranked if groups is None else np.where(ranked >= 0, groups[ranked], -2)
  loop = _calc_py_style(mapped, targets if groups is None else groups[targets], ks)
  assert means == pytest.approx(loop, abs=1e-12)
  assert ranking.RankCounts.from_batch(out).means(ks) == pytest.approx(means, abs=1e-12)


def test_valid_mask_leaves_padded_rows_out():
  valid = np.array([True, True, False, True, False])
  out = ranking.batch_metrics_jnp(jnp.asarray(RANKED), jnp.asarray(TARGETS), (1, 3),
                                  valid=jnp.asarray(valid))
  np.testing.assert_array_equal(out.ranks, [1, 0, -1, 1, -1])
  assert int(out.count) == 3
  np.testing.assert_array_equal(out.hits_at, [1, 2, 0])
  np.testing.assert_array_equal(out.per_sample['hr@3'], [1, 1, 0, 1, 0])
  # Row 0 padded: its hit disappears from every output.
  out = ranking.batch_metrics_jnp(jnp.asarray(RANKED), jnp.asarray(TARGETS), (3,),
                                  valid=jnp.asarray([False, True, True, True, True]))
  np.testing.assert_array_equal(out.ranks, [-1, 0, -1, 1, -1])
  np.testing.assert_array_equal(out.hits_at, [1, 1, 0])
  expected = ranking.compute_metrics(RANKED, TARGETS, (3,), valid=[False, True, True, True, True])
  assert ranking.RankCounts.from_batch(out).means((3,)) == pytest.approx(expected)
  assert expected['hr@3'] == pytest.approx(2 / 4)


def test_jit_does_not_retrace_for_same_shapes():

  @functools.partial(jax.jit, static_argnames='ks')
  @chex.assert_max_traces(n=1)
  def metrics_step(ranked, targets, valid, groups, ks):
    return ranking.batch_metrics_jnp(ranked, targets, ks, valid=valid, item_to_group=groups)

  groups = jnp.arange(40, dtype=jnp.int32) // 2
  for seed in range(3):
    rng = np.random.default_rng(seed)
    ranked = rng.integers(0, 40, size=(16, 10)).astype(np.int32)
    targets = rng.integers(0, 40, size=16).astype(np.int32)
    valid = rng.random(16) < 0.8
    out = metrics_step(ranked, targets, valid, groups, ks=(1, 5, 10))
    expected = ranking.first_hit_rank(ranked, targets, np.asarray(groups))
    np.testing.assert_array_equal(out.ranks, np.where(valid, expected, -1))


def test_rank_counts_accumulate_batches_exactly():
  rng = np.random.default_rng(3)
  ranked = rng.integers(0, 12, size=(50, 8)).astype(np.int32)
  targets = rng.integers(0, 12, size=50).astype(np.int32)
  expected = ranking.compute_metrics(ranked, targets, (1, 5, 8, 10))
  step = jax.jit(functools.partial(ranking.batch_metrics_jnp, ks=(1, 5, 8)))
  totals = ranking.RankCounts.zeros()
  for start in range(0, 50, 16):  # Last batch padded from 2 to 16 rows.
    rows = np.arange(start, start + 16)
    valid = rows < 50
    rows = np.minimum(rows, 49)
    totals = totals + ranking.RankCounts.from_batch(
        step(ranked[rows], targets[rows], valid=valid))
  assert totals.count == 50 and totals.list_length == 8
  got = totals.means((1, 5, 8, 10))
  assert got == pytest.approx(expected, abs=1e-12)  # @10 dropped in both.
  assert got['hr@5'] * 50 == pytest.approx(round(got['hr@5'] * 50))


def test_rank_counts_from_ranks_and_mixed_lengths():
  short = ranking.RankCounts.from_ranks([0, -1, 1], list_length=2)
  long = ranking.RankCounts.from_ranks([3, 0, 2], list_length=4, valid=[True, True, False])
  both = short + long
  np.testing.assert_array_equal(both.hits_at, [2, 1, 0, 1])
  assert both.count == 5
  got = both.means((1, 4, 5))
  assert got['hr@1'] == pytest.approx(2 / 5)
  assert got['ndcg@4'] == pytest.approx((2 + 1 / math.log2(3) + 1 / math.log2(5)) / 5)
  assert got['mrr@4'] == pytest.approx((2 + 1 / 2 + 1 / 4) / 5)
  assert 'hr@5' not in got
  with pytest.raises(ValueError, match='outside lists'):
    ranking.RankCounts.from_ranks([2], list_length=2)
  with pytest.raises(ValueError, match='no samples'):
    ranking.RankCounts.zeros(3).means()


def test_table1_layout():
  table = ranking.table1({'ours': {'hr@3': 0.5, 'ndcg@3': 0.25, 'hr@5': 0.123456,
                                   'ndcg@5': 1 / 3}})
  assert table.splitlines() == [
      '| method | HR@3 | NDCG@3 | HR@5 | NDCG@5 | HR@10 | NDCG@10 |',
      '|---|---:|---:|---:|---:|---:|---:|',
      '| ours | 0.5000 | 0.2500 | 0.1235 | 0.3333 | - | - |',
  ]


def test_full_table_has_every_k_and_mrr():
  metrics = ranking.compute_metrics(RANKED, TARGETS, ks=(1, 3))
  assert ranking.full_table(metrics).splitlines() == [
      '| metric | @1 | @3 |',
      '|---|---:|---:|',
      '| HR | 0.2000 | 0.6000 |',
      '| NDCG | 0.2000 | 0.4524 |',
      '| MRR | 0.2000 | 0.4000 |',
  ]
