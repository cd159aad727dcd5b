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
from typing import Any, Sequence

import grain
import numpy as np

PAD_ITEM = -1


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


def batched(source: Sequence[dict], spec: BatchSpec, *, seed: int | None = None,
            num_epochs: int | None = 1, shard_index: int = 0,
            shard_count: int = 1) -> grain.MapDataset:
  """A MapDataset of padded batches over `source` (e.g. `Dataset.split('train')`).

  Shuffling, sharding and batching act on example indices; each batch is then read with one
  bulk `__getitems__` call (3x faster than per-example reads of the array_record source).

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
  if shard_count < 1 or not 0 <= shard_index < shard_count:
    raise ValueError(f'bad shard {shard_index} of {shard_count}')
  ds = grain.MapDataset.range(len(source))
  if seed is not None:
    ds = ds.seed(seed).shuffle()
  if shard_count > 1:
    per_shard = len(ds) // shard_count
    ds = ds[shard_index * per_shard:(shard_index + 1) * per_shard]
  if num_epochs != 1:
    ds = ds.repeat(num_epochs)
  ds = ds.batch(spec.batch_size, drop_remainder=spec.drop_remainder, batch_fn=np.asarray)
  return ds.map(lambda idx: _read_batch(source, idx, spec.batch_size, spec.max_history))


def examples_per_epoch(num_examples: int, shard_count: int = 1) -> int:
  """Examples one process sees per epoch under `batched(..., shard_count=...)`."""
  return num_examples // shard_count


def steps_per_epoch(num_examples: int, spec: BatchSpec, shard_count: int = 1) -> int:
  n = examples_per_epoch(num_examples, shard_count)
  return n // spec.batch_size if spec.drop_remainder else -(-n // spec.batch_size)
