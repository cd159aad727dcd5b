"""Item-level and SID-level metrics on a tiny catalogue with one collision."""

import numpy as np
import pytest

from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import ranking

# Six items; items 1, 2 and 4 share one SID (group id 1), every other item has its own.
GROUPS = np.array([0, 1, 1, 3, 1, 5])
# Training-target counts: item 4 is the most popular of the group, then 2 and 1 (a tie broken
# by the lower id would put 1 first; 2 is more popular here).
POPULARITY = np.array([5, 1, 3, 0, 7, 2])


def test_members_are_ordered_by_popularity_then_id():
  members = item_lists.members_by_popularity(GROUPS, POPULARITY)
  assert members.shape == (6, 3)
  np.testing.assert_array_equal(members[1], [4, 2, 1])
  np.testing.assert_array_equal(members[0], [0, -1, -1])
  np.testing.assert_array_equal(members[2], [-1, -1, -1])  # 2 is no group's id
  tied = item_lists.members_by_popularity(GROUPS, np.zeros(6))
  np.testing.assert_array_equal(tied[1], [1, 2, 4])


def test_expand_puts_a_group_in_place_of_its_sid():
  members = item_lists.members_by_popularity(GROUPS, POPULARITY)
  ranked_sids = np.array([[3, 1, 0, -1], [5, 0, 3, 1]])
  scores = np.array([[-1.0, -2.0, -3.0, 0.0], [-0.5, -1.5, -2.5, -3.5]])
  items, item_scores = item_lists.expand(ranked_sids, scores, members)
  np.testing.assert_array_equal(items, [[3, 4, 2, 1, 0] + [-1] * 7,
                                        [5, 0, 3, 4, 2, 1] + [-1] * 6])
  np.testing.assert_array_equal(item_scores, [[-1, -2, -2, -2, -3] + [0] * 7,
                                              [-0.5, -1.5, -2.5, -3.5, -3.5, -3.5] + [0] * 6])


def test_distinct_groups_keeps_the_first_item_of_each_group():
  ranked = np.array([[4, 2, 3, 1, 0], [3, -1, 2, 2, 5]])
  np.testing.assert_array_equal(item_lists.distinct_groups(ranked, GROUPS),
                                [[4, 3, 0, -1, -1], [3, 2, 5, -1, -1]])


def test_the_two_levels_differ_exactly_on_collided_targets():
  members = item_lists.members_by_popularity(GROUPS, POPULARITY)
  # One generated SID list per row (beam 3); targets: item 1 (collided, least popular of its
  # group), item 4 (collided, most popular), item 0 (alone), item 2 (collided, missed).
  ranked_sids = np.array([[3, 1, 0], [1, 3, 0], [3, 1, 0], [3, 0, 5]])
  targets = np.array([1, 4, 0, 2])
  items, _ = item_lists.expand(ranked_sids, np.zeros(ranked_sids.shape), members)
  ranks = item_lists.level_ranks(items, targets, GROUPS)
  # SID level: the rank of the target's SID among the generated SIDs (the official metric).
  np.testing.assert_array_equal(ranks['sid'], [1, 0, 2, -1])
  np.testing.assert_array_equal(ranks['sid'],
                                ranking.first_hit_rank(ranked_sids, targets, GROUPS))
  # Item level: the group fills places 1-3 (items 4, 2, 1), so item 1 is at 3 and item 0 at 4.
  np.testing.assert_array_equal(ranks['item'], [3, 0, 4, -1])
  counts = item_lists.level_counts(items, targets, GROUPS)
  means = item_lists.level_means(counts, ks=(1, 3), list_length=3)
  assert means['hr@1'] == pytest.approx(1 / 4) and means['sid_hr@1'] == pytest.approx(1 / 4)
  assert means['hr@3'] == pytest.approx(1 / 4)  # only item 4 is within the first 3 items
  assert means['sid_hr@3'] == pytest.approx(3 / 4)
  assert means['ndcg@3'] == pytest.approx(1 / 4)
  assert means['sid_ndcg@3'] == pytest.approx((1 / np.log2(3) + 1 + 1 / np.log2(4)) / 4)
  assert item_lists.sid_level(means) == {'hr@1': means['sid_hr@1'],
                                         'ndcg@1': means['sid_ndcg@1'],
                                         'mrr@1': means['sid_mrr@1'],
                                         'hr@3': means['sid_hr@3'],
                                         'ndcg@3': means['sid_ndcg@3'],
                                         'mrr@3': means['sid_mrr@3']}


def test_an_item_ranker_at_sid_level_skips_repeats_of_a_group():
  # SASRec-style item list: items 2 and 4 (same SID) both ranked; target 0.
  items = np.array([[2, 4, 0, 3]])
  ranks = item_lists.level_ranks(items, np.array([0]), GROUPS)
  assert int(ranks['item'][0]) == 2
  assert int(ranks['sid'][0]) == 1  # 4 repeats 2's SID, so 0 is the second distinct SID


def test_without_collisions_both_levels_are_equal():
  rng = np.random.default_rng(0)
  groups = np.arange(20)
  ranked = np.stack([rng.permutation(20)[:8] for _ in range(50)])
  targets = rng.integers(0, 20, 50)
  members = item_lists.members_by_popularity(groups, rng.integers(0, 9, 20))
  np.testing.assert_array_equal(item_lists.expand(ranked, np.zeros(ranked.shape), members)[0],
                                ranked)
  ranks = item_lists.level_ranks(ranked, targets, groups)
  np.testing.assert_array_equal(ranks['item'], ranks['sid'])
  np.testing.assert_array_equal(item_lists.level_ranks(ranked, targets, None)['sid'],
                                ranks['item'])
