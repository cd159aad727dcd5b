"""Grain pipelines: shapes, padding, determinism, epochs, sharding, checkpointable state."""

import numpy as np
import pytest

from minirec_jax.data import pipeline


def _source(n=23, max_len=12):
  rng = np.random.default_rng(0)
  return [{'user_id': f'u{i}'.encode(),
           'history': rng.integers(0, 50, size=1 + i % max_len).astype(np.int32),
           'target': np.int32(i), 'timestamp': -1} for i in range(n)]


def _targets(ds):
  return [b['target'][b['valid']].tolist() for b in ds]


def test_fixed_shapes_padding_and_truncation():
  source = _source()
  batches = list(pipeline.batched(source, pipeline.BatchSpec(5, max_history=4,
                                                             drop_remainder=False)))
  assert len(batches) == 5
  for b in batches:
    assert b['history'].shape == (5, 4) and b['history'].dtype == np.int32
    assert b['target'].shape == b['history_len'].shape == b['valid'].shape == (5,)
  last = batches[-1]
  assert last['valid'].tolist() == [True, True, True, False, False]
  assert last['index'][:3].tolist() == [20, 21, 22]
  first = batches[0]
  # Row 3 has 4 items: kept whole. Row 9 had 10 items: its 4 most recent are kept.
  np.testing.assert_array_equal(first['history'][3], source[3]['history'])
  second = batches[1]
  np.testing.assert_array_equal(second['history'][4], source[9]['history'][-4:])
  assert second['history_len'][4] == 4
  # Row 0 has one item followed by padding.
  assert first['history'][0].tolist() == [source[0]['history'][0]] + [pipeline.PAD_ITEM] * 3


def test_drop_remainder_and_steps_per_epoch():
  spec = pipeline.BatchSpec(5)
  assert len(pipeline.batched(_source(), spec)) == pipeline.steps_per_epoch(23, spec) == 4
  spec = pipeline.BatchSpec(5, drop_remainder=False)
  assert pipeline.steps_per_epoch(23, spec) == 5


def test_shuffle_is_deterministic_by_seed_and_differs_per_epoch():
  spec = pipeline.BatchSpec(23)
  a = _targets(pipeline.batched(_source(), spec, seed=7, num_epochs=2))
  b = _targets(pipeline.batched(_source(), spec, seed=7, num_epochs=2))
  c = _targets(pipeline.batched(_source(), spec, seed=8, num_epochs=2))
  assert a == b
  assert a != c
  assert sorted(a[0]) == sorted(a[1]) == list(range(23))
  assert a[0] != a[1]


def test_shards_are_disjoint_and_equal():
  spec = pipeline.BatchSpec(1)
  shards = [sum(_targets(pipeline.batched(_source(), spec, seed=3, shard_index=i,
                                          shard_count=3)), []) for i in range(3)]
  assert [len(s) for s in shards] == [7, 7, 7] == [pipeline.examples_per_epoch(23, 3)] * 3
  assert len(set(shards[0]) | set(shards[1]) | set(shards[2])) == 21
  with pytest.raises(ValueError):
    pipeline.batched(_source(), spec, shard_index=3, shard_count=3)


def test_iterator_state_restores_position():
  ds = pipeline.batched(_source(), pipeline.BatchSpec(4), seed=1, num_epochs=None)
  it = iter(ds.to_iter_dataset())
  for _ in range(7):  # crosses an epoch boundary (5 batches per epoch)
    next(it)
  state = it.get_state()
  expected = [next(it)['target'].tolist() for _ in range(3)]
  fresh = iter(ds.to_iter_dataset())
  fresh.set_state(state)
  assert [next(fresh)['target'].tolist() for _ in range(3)] == expected


def test_array_batches_pad_and_shuffle():
  arrays = {'x': np.arange(10), 'y': np.arange(10) * 2}
  batches = list(pipeline.array_batches(arrays, 4, drop_remainder=False))
  assert [b['x'].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 8, 8]]
  assert batches[-1]['valid'].tolist() == [True, True, False, False]
  shuffled = [b['x'] for b in pipeline.array_batches(arrays, 5, seed=0)]
  assert sorted(np.concatenate(shuffled).tolist()) == list(range(10))
  assert np.all(batches[0]['y'] == 2 * batches[0]['x'])


class _BulkOnly(list):
  """A source that counts its bulk reads, as the array_record sources are read."""

  bulk_reads = 0

  def __getitems__(self, indices):
    self.bulk_reads += 1
    return [self[i] for i in indices]


def test_row_ranges_split_a_source_where_an_sft_data_fraction_stops():
  source = _BulkOnly(_source(n=23))
  seen = pipeline.leading_rows(len(source), 0.7)  # what SFT's data_fraction=0.7 trains on
  assert seen == 16 and pipeline.leading_rows(3, 0.01) == 1
  head, rest = pipeline.fraction_range(source, 0.0, 0.7), pipeline.fraction_range(source, 0.7, 1.0)
  assert (head.start, head.stop, rest.start, rest.stop) == (0, 16, 16, 23)
  assert [r['target'] for r in rest] == list(range(16, 23))
  batches = list(pipeline.batched(rest, pipeline.BatchSpec(4, drop_remainder=False)))
  assert _targets(batches) == [[16, 17, 18, 19], [20, 21, 22]]
  assert source.bulk_reads == 2  # one bulk read per batch, through the range
  with pytest.raises(IndexError):
    rest[7]  # pylint: disable=pointless-statement
  for low, high in ((0.5, 0.5), (-0.1, 1.0), (0.2, 1.1)):
    with pytest.raises(ValueError, match='0 <= low < high <= 1'):
      pipeline.fraction_range(source, low, high)
  with pytest.raises(ValueError, match='data fraction must be in'):
    pipeline.leading_rows(10, 0.0)
