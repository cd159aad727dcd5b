"""Grain input pipelines over the TFDS array_record sources: fixed-shape padded batches.

A batch is a dict of numpy arrays with static shapes (so jitted steps compile once):

  history     : int32 [batch, max_history]  item ids, oldest first, left-aligned, PAD_ITEM after
  history_len : int32 [batch]               number of real items in `history` (>= 1)
  target      : int32 [batch]               next item id
  index       : int32 [batch]               row of the example in its split (for predictions)
  valid       : bool  [batch]               False on the rows that pad the last batch

Histories longer than `max_history` keep their most recent items (the official data never
exceeds 10). Shuffling is deterministic by seed and differs per epoch; multi-host runs give each
process a disjoint, equally sized slice of every epoch (`shard_index`/`shard_count`).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import grain
import numpy as np

PAD_ITEM = -1


def leading_rows(num_rows: int, fraction: float) -> int:
  """How many of `num_rows` rows (in file order) the first `fraction` in (0, 1] covers: at
  least one. SFT's `train.data_fraction` trains on these; the rest are rows it never saw."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'data fraction must be in (0, 1], got {fraction}')
  return max(1, int(round(fraction * num_rows)))


class RowRange(Sequence[dict]):
  """Rows `[start, stop)` of a random-access source, itself random access (`len`, `[i]` and
  the bulk `__getitems__` that `batched` reads with)."""

  def __init__(self, source: Sequence[dict], start: int, stop: int):
    if not 0 <= start < stop <= len(source):
      raise ValueError(f'row range [{start}, {stop}) is empty or outside the {len(source)} rows')
    self.source, self.start, self.stop = source, start, stop

  def __len__(self) -> int:
    return self.stop - self.start

  def __getitem__(self, index: int) -> dict:
    if not 0 <= index < len(self):
      raise IndexError(index)
    return self.source[self.start + index]

  def __getitems__(self, indices: Sequence[int]) -> list[dict]:
    rows = [self.start + int(i) for i in indices]
    getitems = getattr(self.source, '__getitems__', None)
    return getitems(rows) if getitems else [self.source[i] for i in rows]


def fraction_range(source: Sequence[dict], low: float, high: float) -> RowRange:
  """The rows between the first `low` and the first `high` fractions of `source` (file order,
  counted as `leading_rows` counts): (0, f) are the rows of an SFT with data_fraction f, (f, 1)
  the rows it never trained on."""
  if not 0.0 <= low < high <= 1.0:
    raise ValueError(f'a row fraction range needs 0 <= low < high <= 1, got ({low}, {high})')
  start = 0 if low == 0.0 else leading_rows(len(source), low)
  return RowRange(source, start, len(source) if high == 1.0 else leading_rows(len(source), high))


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  batch_size: int
  max_history: int = 10
  drop_remainder: bool = True


def _read_batch(source: Sequence[dict], indices: np.ndarray, batch_size: int,
                max_history: int) -> dict[str, np.ndarray]:
  """Reads examples `indices` in one bulk call and packs them into one padded batch.

  A short (final) batch is filled up to `batch_size` with copies of its first row marked
  `valid=False`, so every batch has the same shape.
  """
  indices = np.asarray(indices, dtype=np.int32)
  n = len(indices)
  getitems = getattr(source, '__getitems__', None)
  examples = getitems(indices.tolist()) if getitems else [source[int(i)] for i in indices]
  history = np.full((batch_size, max_history), PAD_ITEM, dtype=np.int32)
  lengths = np.zeros((batch_size,), dtype=np.int32)
  target = np.zeros((batch_size,), dtype=np.int32)
  for row, example in enumerate(examples):
    items = np.asarray(example['history'], dtype=np.int32)[-max_history:]
    history[row, :len(items)] = items
    lengths[row] = len(items)
    target[row] = example['target']
  index = np.zeros((batch_size,), dtype=np.int32)
  index[:n] = indices
  if n < batch_size:
    history[n:], lengths[n:], target[n:], index[n:] = history[0], lengths[0], target[0], index[0]
  valid = np.arange(batch_size) < n
  return {'history': history, 'history_len': lengths, 'target': target, 'index': index,
          'valid': valid}


def _index_batches(num_examples: int, batch_size: int, *, seed: int | None,
                   num_epochs: int | None, drop_remainder: bool, shard_index: int,
                   shard_count: int) -> grain.MapDataset:
  """Batches of example indices: shuffled per epoch by seed, sharded, repeated."""
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'bad shard {shard_index} of {shard_count}')
  ds = grain.MapDataset.range(num_examples)
  if seed is not None:
    ds = ds.seed(seed).shuffle()
  if shard_count > 1:
    per_shard = num_examples // shard_count
    ds = ds[shard_index * per_shard:(shard_index + 1) * per_shard]
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  return ds.batch(batch_size, drop_remainder=drop_remainder, batch_fn=np.asarray)


def batched(source: Sequence[dict], spec: BatchSpec, *, seed: int | None = None,
            num_epochs: int | None = 1, shard_index: int = 0,
            shard_count: int = 1) -> grain.MapDataset:
  """A MapDataset of padded batches over `source` (e.g. `Dataset.split('train')`).

  Shuffling, sharding and batching act on example indices; each batch is then read with one
  bulk `__getitems__` call (much faster than per-example reads of the array_record source).

  Args:
    source: random-access sequence of examples in the shared schema.
    spec: batch size, history length and whether to drop the last partial batch.
    seed: shuffle seed; None keeps file order (evaluation).
    num_epochs: number of passes; None repeats forever (step-based training).
    shard_index, shard_count: this process's slice for multi-host data parallelism. Slices
      are equal-sized (the `len(source) % shard_count` remainder examples of each epoch are in
      no shard; `examples_per_epoch` counts what a process sees), so all processes run the
      same number of steps.
  """
  ds = _index_batches(len(source), spec.batch_size, seed=seed, num_epochs=num_epochs,
                      drop_remainder=spec.drop_remainder, shard_index=shard_index,
                      shard_count=shard_count)
  return ds.map(lambda idx: _read_batch(source, idx, spec.batch_size, spec.max_history))


def examples_per_epoch(num_examples: int, shard_count: int = 1) -> int:
  """Examples one process sees per epoch under `batched(..., shard_count=...)`."""
  return num_examples // shard_count


def steps_per_epoch(num_examples: int, spec: BatchSpec, shard_count: int = 1) -> int:
  n = examples_per_epoch(num_examples, shard_count)
  return n // spec.batch_size if spec.drop_remainder else -(-n // spec.batch_size)


def array_batches(arrays: dict[str, np.ndarray], batch_size: int, *, seed: int | None = None,
                  num_epochs: int | None = 1, drop_remainder: bool = True, shard_index: int = 0,
                  shard_count: int = 1) -> grain.MapDataset:
  """Batches of rows of in-memory arrays (e.g. packed SFT sequences), same rules as `batched`.

  All arrays share their leading dimension. A short last batch (drop_remainder=False) is
  padded with copies of its first row and a `valid` column marks the real rows.
  """
  sizes = {len(v) for v in arrays.values()}
  if len(sizes) != 1:
    raise ValueError(f'arrays differ in length: { {k: len(v) for k, v in arrays.items()} }')
  ds = _index_batches(sizes.pop(), batch_size, seed=seed, num_epochs=num_epochs,
                      drop_remainder=drop_remainder, shard_index=shard_index,
                      shard_count=shard_count)

  def gather(idx):
    n = len(idx)
    rows = np.concatenate([idx, np.repeat(idx[:1], batch_size - n)])
    batch = {k: v[rows] for k, v in arrays.items()}
    batch['valid'] = np.arange(batch_size) < n
    return batch

  return ds.map(gather)
