"""Turning interaction logs into (user, history, target, timestamp) samples, two ways.

Shared by the MovieLens and synthetic builders.

* `minionerec`: the official MiniOneRec rule: per user, interactions sorted by
  time (stable, ties in file order); every position i >= 1 gives a sample with the previous
  <= H items; all samples of all users pooled, stably sorted by target time and cut into
  train = first floor(0.8 N), valid = up to floor(0.9 N), test = the rest.
* `loo`: leave-one-out per user (RecBole, SASRec paper): the last item is the test target and
  the second-last the valid target (history = everything before, last <= H items); every prefix
  of the rest gives a train sample. Users with fewer than 3 interactions cannot give all three
  splits: they are skipped and counted.
"""

from __future__ import annotations

from typing import NamedTuple


class Sample(NamedTuple):
  user_id: str
  history: list[int]
  target: int
  timestamp: int


def user_sequences(users, items, timestamps) -> dict[str, list[tuple[int, int]]]:
  """{user: [(timestamp, item)] sorted by time, ties in file order}; users in first-seen order."""
  sequences: dict[str, list[tuple[int, int]]] = {}
  for user, item, stamp in zip(users, items, timestamps):
    sequences.setdefault(user, []).append((stamp, item))
  for seq in sequences.values():
    seq.sort(key=lambda pair: pair[0])  # list.sort is stable
  return sequences


def minionerec_splits(sequences, max_history: int) -> dict[str, list[Sample]]:
  samples = []
  for user, seq in sequences.items():
    items = [item for _, item in seq]
    for i in range(1, len(items)):
      samples.append(Sample(user, items[max(0, i - max_history):i], items[i], seq[i][0]))
  samples.sort(key=lambda s: s.timestamp)
  n = len(samples)
  train_end, valid_end = int(n * 0.8), int(n * 0.9)
  return {'train': samples[:train_end], 'valid': samples[train_end:valid_end],
          'test': samples[valid_end:]}


def leave_one_out_splits(sequences, max_history: int) -> tuple[dict[str, list[Sample]], int]:
  """Returns (splits, number of users skipped for having < 3 interactions)."""
  splits = {'train': [], 'valid': [], 'test': []}
  skipped = 0
  for user, seq in sequences.items():
    if len(seq) < 3:
      skipped += 1
      continue
    items = [item for _, item in seq]
    for i in range(1, len(items) - 2):
      splits['train'].append(Sample(user, items[max(0, i - max_history):i], items[i], seq[i][0]))
    for split, i in (('valid', len(items) - 2), ('test', len(items) - 1)):
      splits[split].append(Sample(user, items[max(0, i - max_history):i], items[i], seq[i][0]))
  return splits, skipped
