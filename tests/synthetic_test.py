"""The synthetic planted-structure dataset: deterministic, valid, and the rules are visible."""

import collections
import dataclasses
import sys

import ml_collections
import numpy as np
import pytest

from minirec_jax.data import loading
from minirec_jax.data import synthetic
from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable

SMALL = synthetic.SyntheticParams(num_items=120, num_clusters=6, num_users=100, seed=1)


def _all_samples(data):
  return [s for name in ('train', 'valid', 'test') for s in data.splits[name]]


def test_deterministic_by_seed():
  a = synthetic.generate(SMALL)
  b = synthetic.generate(SMALL)
  c = synthetic.generate(dataclasses.replace(SMALL, seed=2))
  assert _all_samples(a) == _all_samples(b)
  assert a.table == b.table
  np.testing.assert_array_equal(a.planted.successor, b.planted.successor)
  assert _all_samples(a) != _all_samples(c)
  assert a.table.title != c.table.title
  assert not np.array_equal(a.planted.item_cluster, c.planted.item_cluster)


def test_official_split_rule_ids_and_histories():
  data = synthetic.generate(SMALL)
  samples = _all_samples(data)
  n = len(samples)
  assert len(data.splits['train']) == n * 8 // 10
  assert len(data.splits['valid']) == n * 9 // 10 - n * 8 // 10
  stamps = [s.timestamp for s in samples]
  assert stamps == sorted(stamps)
  by_user = collections.defaultdict(list)
  for s in samples:
    assert 1 <= len(s.history) <= SMALL.max_history
    assert all(0 <= i < SMALL.num_items for i in s.history + [s.target])
    by_user[s.user_id].append(s)
  assert len(by_user) == SMALL.num_users
  assert data.num_interactions == n + SMALL.num_users  # each user's first item is no target
  for rows in by_user.values():
    assert SMALL.min_len - 1 <= len(rows) <= SMALL.max_len - 1
    for k in range(1, len(rows)):
      # The history is the user's previous items, newest last, capped at max_history.
      assert rows[k].history[-1] == rows[k - 1].target
      assert rows[k].history[:-1] == rows[k - 1].history[-(SMALL.max_history - 1):]
      assert len(rows[k].history) == min(k + 1, SMALL.max_history)
  assert len(set(data.table.title)) == SMALL.num_items
  assert data.table.sid == [''] * SMALL.num_items


def test_cluster_transitions_match_the_planted_matrix():
  p = synthetic.SyntheticParams(num_users=2000)
  data = synthetic.generate(p)
  cluster = data.planted.item_cluster
  counts = np.zeros((p.num_clusters, p.num_clusters))
  for s in _all_samples(data):
    counts[cluster[s.history[-1]], cluster[s.target]] += 1
  empirical = counts / counts.sum(axis=1, keepdims=True)
  np.testing.assert_allclose(empirical, data.planted.transition, atol=0.04)
  # Each cluster's preferred next cluster is (c + 1) mod C.
  np.testing.assert_array_equal(np.argsort(-empirical, axis=1)[:, 1],
                                (np.arange(p.num_clusters) + 1) % p.num_clusters)


def test_next_item_law_is_the_planted_one():
  p = synthetic.SyntheticParams(num_users=2000)
  data = synthetic.generate(p)
  planted = data.planted
  probs = synthetic.next_item_probs(planted, np.arange(p.num_items))
  np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-9)
  samples = _all_samples(data)
  last = np.array([s.history[-1] for s in samples])
  target = np.array([s.target for s in samples])
  # How often the planted successor comes next, against the law's prediction.
  took_successor = target == planted.successor[last]
  assert abs(took_successor.mean() - probs[last, planted.successor[last]].mean()) < 0.02
  # Within-cluster popularity: the most popular item of each cluster is the most frequent
  # target after a cluster change.
  changed = planted.item_cluster[last] != planted.item_cluster[target]
  hits = np.bincount(target[changed], minlength=p.num_items)
  for c in range(p.num_clusters):
    members = np.flatnonzero(planted.item_cluster == c)
    assert members[np.argmax(hits[members])] == members[np.argmax(planted.popularity[members])]
  # The law predicts the data; the law of another seed does not.
  true = synthetic.oracle_metrics(planted, data.splits['test'])
  other = synthetic.generate(dataclasses.replace(p, seed=1)).planted
  wrong = synthetic.oracle_metrics(other, data.splits['test'])
  assert true['hr@1'] > 0.3 and true['hr@10'] > 0.6
  assert wrong['hr@10'] < true['hr@10'] / 3


def test_item_text_groups_by_cluster():
  data = synthetic.generate(synthetic.SyntheticParams())
  cluster = data.planted.item_cluster
  words = [set((t + ' ' + d).lower().replace(',', ' ').replace('.', ' ').split())
           for t, d in zip(data.table.title, data.table.description)]
  same = 0
  for i, wi in enumerate(words):
    jaccard = [len(wi & wj) / len(wi | wj) if j != i else -1.0 for j, wj in enumerate(words)]
    same += cluster[int(np.argmax(jaccard))] == cluster[i]
    label = synthetic.THEMES[cluster[i]].label
    assert label in data.table.title[i] and data.table.categories[i]
  assert same == len(words)  # every item's nearest neighbour by words is in its cluster


def test_config_name_encodes_every_parameter():
  base = synthetic.SyntheticParams()
  names = {synthetic.make_config(base).name}
  changes = dict(num_items=201, num_clusters=9, num_users=301, min_len=4, max_len=21,
                 max_history=9, stay=0.5, move_next=0.2, follow_successor=0.6,
                 popularity_skew=0.5, seed=1)
  assert set(changes) == {f.name for f in dataclasses.fields(base)}
  for field, value in changes.items():
    names.add(synthetic.make_config(dataclasses.replace(base, **{field: value})).name)
  assert len(names) == len(changes) + 1
  assert synthetic.make_config(base).name == synthetic.make_config(
      synthetic.SyntheticParams()).name


def test_params_from_config():
  cfg = ml_collections.ConfigDict(dict(name='synthetic', num_items=0, num_clusters=0,
                                       num_users=50, min_len=3, max_len=0, max_history=10,
                                       seed=7))
  p = synthetic.params_from_config(cfg)
  assert (p.num_items, p.num_clusters, p.num_users, p.min_len, p.max_len, p.seed) == (
      200, 10, 50, 3, 20, 7)


@pytest.mark.parametrize('overrides, field', [
    (dict(num_clusters=13), 'data.num_clusters'),
    (dict(num_items=5), 'data.num_items'),
    (dict(min_len=1), 'data.min_len'),
    (dict(min_len=8, max_len=6), 'data.max_len'),
    (dict(stay=0.8, move_next=0.3), 'data.move_next'),
    (dict(follow_successor=1.5), 'data.follow_successor'),
])
def test_bad_parameters_name_the_field(overrides, field):
  with pytest.raises(DataError, match=field):
    synthetic.SyntheticParams(**overrides)


def test_builder_through_loading(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name='synthetic', num_items=0, num_clusters=0,
                                       num_users=0, max_history=10, seed=0,
                                       data_dir=str(tmp_path)))
  ds = loading.load(cfg)  # default size
  data = synthetic.generate(synthetic.SyntheticParams())
  assert ds.items == data.table and ds.num_items == 200
  for name in ('train', 'valid', 'test'):
    source, rows = ds.split(name), data.splits[name]
    assert len(source) == len(rows)
    examples = source.__getitems__(list(range(len(rows))))
    for e, s in zip(examples, rows):
      user = e['user_id'].decode() if isinstance(e['user_id'], bytes) else e['user_id']
      assert (user, e['history'].tolist(), int(e['target']), int(e['timestamp'])) == tuple(s)
  meta = ds.builder.info.metadata
  planted = synthetic.Planted.from_metadata(meta['planted'])
  np.testing.assert_array_equal(planted.item_cluster, data.planted.item_cluster)
  np.testing.assert_allclose(planted.transition, data.planted.transition)
  assert meta['planted']['params'] == dataclasses.asdict(synthetic.SyntheticParams())
  assert meta['stats']['rows'] == {k: len(v) for k, v in data.splits.items()}
  assert meta['stats']['oracle']['test'] == synthetic.oracle_metrics(data.planted,
                                                                     data.splits['test'])
  assert ItemTable.from_metadata(meta['items']).sid == [''] * 200
  # A second load reopens the same folder; another seed gets its own folder.
  assert len(loading.load(cfg).split('test')) == len(data.splits['test'])
  other = loading.load(ml_collections.ConfigDict(dict(cfg.to_dict(), num_users=40, seed=3)))
  assert other.builder.data_dir != ds.builder.data_dir
  assert 'tensorflow' not in sys.modules


def test_tiny_setting_reports_an_empty_split(tmp_path):
  cfg = ml_collections.ConfigDict(dict(name='synthetic', num_items=7, num_clusters=1,
                                       num_users=3, min_len=2, max_len=2,
                                       data_dir=str(tmp_path)))
  ds = loading.load(cfg)  # 3 samples: train 2, valid 0, test 1
  assert (len(ds.split('train')), len(ds.split('test'))) == (2, 1)
  with pytest.raises(DataError, match='no valid rows'):
    ds.split('valid')
