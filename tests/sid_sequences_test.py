"""Exact packing: the supervised (history -> target) pairs are exactly the split's rows."""

import ast
import csv
import os

import numpy as np
import pytest

from minirec_jax.data import sid_sequences as ss


def _unique_codes(num_items, num_levels=3, k=16, seed=0):
  rng = np.random.default_rng(seed)
  all_codes = np.stack(np.unravel_index(rng.permutation(k ** num_levels)[:num_items],
                                        (k,) * num_levels), axis=1)
  return all_codes.astype(np.int32)


def _assert_pairs_are_rows(packed, item_tokens, histories, targets, max_history):
  pairs = ss.unpack_pairs(packed, item_tokens.shape[1])
  assert sorted(pairs) == list(range(len(targets)))
  for row, (history, target) in pairs.items():
    assert len(history) <= max_history * item_tokens.shape[1]
    assert history == tuple(item_tokens[list(histories[row])].reshape(-1))
    assert target == tuple(item_tokens[targets[row]])


def test_vocab_layout():
  vocab = ss.SidVocab(num_levels=3, codebook_size=4)
  assert vocab.vocab_size == 13
  np.testing.assert_array_equal(vocab.item_tokens(np.array([[0, 1, 3]])), [[1, 6, 12]])
  with pytest.raises(ValueError):
    vocab.item_tokens(np.array([[0, 4, 0]]))


def test_chains_follow_prefixes_and_break_on_sliding_windows():
  users = ['u'] * 5 + ['v']
  histories = [[1], [1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [7]]
  targets = [2, 3, 4, 5, 6, 8]
  segments = ss.build_segments(users, histories, targets, max_history=3)
  assert [(s.items, s.first_target, s.rows) for s in segments] == [
      ((1, 2, 3, 4), 1, (0, 1, 2)),   # closed at max_history + 1 items
      ((2, 3, 4, 5), 3, (3,)),        # a sliding window starts a new chain
      ((3, 4, 5, 6), 3, (4,)),
      ((7, 8), 1, (5,)),
  ]


def test_packing_is_exact_on_random_rows():
  rng = np.random.default_rng(1)
  users, histories, targets = [], [], []
  for u in range(40):  # official-style sliding windows over random user sequences
    seq = rng.integers(0, 30, size=rng.integers(2, 18)).tolist()
    for i in range(1, len(seq)):
      users.append(f'u{u}')
      histories.append(seq[max(0, i - 5):i])
      targets.append(seq[i])
  order = rng.permutation(len(targets))  # rows of users interleaved, like a global time sort
  users = [users[i] for i in order]
  histories = [histories[i] for i in order]
  targets = [targets[i] for i in order]
  item_tokens = ss.SidVocab(3, 16).item_tokens(_unique_codes(30))
  segments = ss.build_segments(users, histories, targets, max_history=5)
  packed = ss.pack_segments(segments, item_tokens, seq_len=40)
  assert packed.tokens.shape[1] == 40
  assert packed.weights.sum() == 3 * len(targets)
  _assert_pairs_are_rows(packed, item_tokens, histories, targets, 5)
  # Positions restart per segment; labels are the next token of the same segment.
  for b in range(len(packed)):
    for seg in set(packed.segment_ids[b]) - {0}:
      idx = np.flatnonzero(packed.segment_ids[b] == seg)
      np.testing.assert_array_equal(packed.positions[b, idx], np.arange(len(idx)))
      np.testing.assert_array_equal(packed.labels[b, idx[:-1]], packed.tokens[b, idx[1:]])


def test_segment_longer_than_sequence_is_an_error():
  segments = ss.build_segments(['u'], [[0, 1, 2]], [3], max_history=3)
  with pytest.raises(ValueError, match='cannot hold'):
    ss.pack_segments(segments, ss.SidVocab(3, 16).item_tokens(_unique_codes(4)), seq_len=11)


def test_packing_is_exact_on_real_industrial_train(amazon18_dir):
  path = os.path.join(amazon18_dir, 'train', 'Industrial_and_Scientific_5_2016-10-2018-11.csv')
  with open(path, newline='') as f:
    rows = list(csv.DictReader(f))
  users = [r['user_id'] for r in rows]
  histories = [ast.literal_eval(r['history_item_id']) for r in rows]
  targets = [int(r['item_id']) for r in rows]
  item_tokens = ss.SidVocab(3, 256).item_tokens(_unique_codes(3686, k=256))
  packed = ss.pack_segments(ss.build_segments(users, histories, targets, 10), item_tokens, 128)
  _assert_pairs_are_rows(packed, item_tokens, histories, targets, 10)
  # The point of packing: far fewer tokens than one padded sequence per row.
  assert packed.tokens.size < 0.25 * len(rows) * 11 * 3


def test_history_prompts_left_pad_and_keep_recent_items():
  item_tokens = ss.SidVocab(2, 4).item_tokens(np.array([[0, 0], [1, 1], [2, 2], [3, 3]]))
  history = np.array([[0, 1, 2, -1], [3, -1, -1, -1]])
  prompts = ss.history_prompts(history, np.array([3, 1]), item_tokens, max_items=2)
  np.testing.assert_array_equal(prompts['tokens'], [[2, 6, 3, 7], [0, 0, 4, 8]])
  np.testing.assert_array_equal(prompts['mask'], [[1, 1, 1, 1], [0, 0, 1, 1]])
  np.testing.assert_array_equal(prompts['positions'], [[0, 1, 2, 3], [0, 0, 0, 1]])
