"""The synthetic planted-structure dataset: deterministic, valid, and the rules are visible."""

import sys

import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data import synthetic


def _all_samples(data):
  return [s for name in ('train', 'valid', 'test') for s in data.splits[name]]


def test_deterministic_by_seed():
  a = synthetic.generate(synthetic.SyntheticParams(seed=3))
  b = synthetic.generate(synthetic.SyntheticParams(seed=3))
  c = synthetic.generate(synthetic.SyntheticParams(seed=4))
  assert _all_samples(a) == _all_samples(b) and a.table == b.table
  assert _all_samples(a) != _all_samples(c)


def test_split_sizes_ids_and_histories():
  p = synthetic.SyntheticParams(num_items=120, num_clusters=6, num_users=100, seed=1)
  data = synthetic.generate(p)
  n = len(_all_samples(data))
  assert len(data.splits['train']) == int(0.8 * n)
  assert len(data.splits['valid']) == int(0.9 * n) - int(0.8 * n)
  stamps = [s.timestamp for s in _all_samples(data)]
  assert stamps == sorted(stamps)
  for s in _all_samples(data):
    assert 1 <= len(s.history) <= p.max_history
    assert all(0 <= i < p.num_items for i in s.history + [s.target])
  assert len(set(data.table.title)) == p.num_items


def test_planted_rules_are_visible_in_the_data():
  p = synthetic.SyntheticParams(num_users=2000, seed=0)
  data = synthetic.generate(p)
  counts = np.zeros((p.num_clusters, p.num_clusters))
  successor_hits = same_cluster = 0
  for s in _all_samples(data):
    a, b = data.item_cluster[s.history[-1]], data.item_cluster[s.target]
    counts[a, b] += 1
    if a == b:
      same_cluster += 1
      successor_hits += data.successor[s.history[-1]] == s.target
  empirical = counts / counts.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(empirical, data.transition, atol=0.05)
  # Within a cluster, the successor is taken with P = follow + (1 - follow) / cluster size.
  expected = p.follow_successor + (1 - p.follow_successor) / (p.num_items / p.num_clusters)
  assert abs(successor_hits / same_cluster - expected) < 0.03
  # Item text carries the cluster theme.
  for item in range(p.num_items):
    theme = synthetic.generator.THEMES[data.item_cluster[item]][0]
    assert theme in data.table.title[item]


def test_builder_through_loading(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name='synthetic', num_items=50, num_clusters=5,
                                       num_users=40, seed=2, data_dir=str(tmp_path)))
  ds = loading.load(cfg)
  data = synthetic.generate(synthetic.params_from_config(cfg))
  assert len(ds.split('train')) == len(data.splits['train'])
  first = ds.split('test')[0]
  assert first['history'].tolist() == data.splits['test'][0].history
  planted = ds.builder.info.metadata['planted']
  assert planted['item_cluster'] == data.item_cluster.tolist()
  assert 'tensorflow' not in sys.modules
