"""Most-popular and BPR-MF baselines: ranking correctness and learning a planted preference."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.evaluation import predictions
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sasrec as train_lib
from minirec_jax.models import baselines
from minirec_jax.testing import write_official_layout
from minirec_jax.training import parallel
from minirec_jax.training import sasrec as sasrec_steps
from minirec_jax.training.state import TrainState


def _arrays(history, target, user):
  history = np.asarray(history, np.int32)
  return train_lib.SplitArrays(
      history=history, history_len=np.full(len(history), history.shape[1], np.int32),
      target=np.asarray(target, np.int32), user=np.asarray(user, np.int32),
      user_ids=[f'U{u}' for u in user])


def test_popularity_counts_targets_and_ranks_everyone_the_same():
  counts = baselines.popularity_counts(np.asarray([3, 1, 3, 3, 0, 1]), 5)
  np.testing.assert_array_equal(counts, [1, 2, 0, 3, 0])
  with pytest.raises(ValueError, match='outside'):
    baselines.popularity_counts(np.asarray([5]), 5)
  ranker = sasrec_steps.pop_ranker(np.asarray([3, 1, 3, 3, 0, 1]), 5)
  eval_fn = sasrec_steps.make_eval_fn(ranker, 5)
  batch = {'history': jnp.zeros((2, 3), jnp.int32), 'history_len': jnp.ones(2, jnp.int32),
           'target': jnp.asarray([3, 0]), 'user': jnp.zeros(2, jnp.int32),
           'valid': jnp.ones(2, bool)}
  items, scores, metrics = eval_fn(ranker.init(None), batch)
  # Most frequent first; ties (items 2 and 4, never a target) by lower id.
  np.testing.assert_array_equal(items, [[3, 1, 0, 2, 4]] * 2)
  np.testing.assert_array_equal(scores[0], [3, 2, 1, 0, 0])
  np.testing.assert_array_equal(metrics.ranks, [0, 2])


def test_unseen_users_get_the_zero_vector():
  config = baselines.BPRConfig(num_items=6, num_users=3, dim=4, user_repr='id')
  params = baselines.init_bpr_params(config, jax.random.key(0))
  model = baselines.BPRMF(config)
  history = jnp.zeros((3, 2), jnp.int32)
  scores = model.apply({'params': params}, history, jnp.ones(3, jnp.int32),
                       jnp.asarray([0, 2, -1]), method=baselines.BPRMF.all_logits)
  assert np.all(np.asarray(scores[2]) == 0.0) and np.any(np.asarray(scores[0]) != 0.0)


def _train(ranker, train, num_items, steps, lr=0.05, batch_size=64):
  config = load_config('configs/sasrec.py:variant=bpr')
  config.optim.lr = lr
  state = TrainState.create(apply_fn=None, params=ranker.init(jax.random.key(0)),
                            tx=sasrec_steps.optimizer(config.optim))
  mesh = parallel.make_mesh()
  step_fn = parallel.jit_data_parallel(sasrec_steps.make_train_step(ranker, 'bpr', num_items),
                                       mesh)
  epoch = 0
  while int(state.step) < steps:
    state, _ = train_lib.train_epoch(step_fn, state, train, batch_size=batch_size, seed=0,
                                     epoch=epoch, mesh=mesh, rng=jax.random.key(1))
    epoch += 1
  return state.params, mesh


@pytest.mark.parametrize('user_repr', ['id', 'history'])
def test_bpr_learns_a_planted_preference(user_repr):
  """Users (or histories) of group g only buy items of group g; 4 groups of 10 items."""
  num_items, num_users, groups = 40, 32, 4
  rs = np.random.default_rng(0)
  group_of_user = np.arange(num_users) % groups

  def rows(n):
    user = rs.integers(0, num_users, n)
    g = group_of_user[user]
    history = g[:, None] * 10 + rs.integers(0, 10, (n, 3))
    return _arrays(history, g * 10 + rs.integers(0, 10, n), user)

  config = baselines.BPRConfig(num_items=num_items, num_users=num_users, dim=8,
                               user_repr=user_repr)
  ranker = sasrec_steps.bpr_ranker(config, max_history=3)
  params, mesh = _train(ranker, rows(1024), num_items, steps=200)
  metrics, _ = train_lib.evaluate(sasrec_steps.make_eval_fn(ranker, num_items), params, rows(256),
                                  batch_size=64, ks=(10,), mesh=mesh)
  # Random ranking: HR@10 = 0.25; a perfect group model: 1.0 (the group's 10 items on top).
  assert metrics['hr@10'] > 0.9, metrics


def test_pop_and_bpr_end_to_end(tmp_path):
  rows = {'train': [('A1', [0], 1), ('A2', [2, 3], 1), ('A1', [0, 1], 2), ('A3', [4], 1)],
          'valid': [('A3', [1, 2, 3], 1), ('A4', [2], 2)],
          'test': [('A2', [2, 3, 4], 1), ('A5', [5], 3)]}
  root = write_official_layout(str(tmp_path / 'data'), 'Toy', num_items=6, rows=rows)
  for variant in ('pop', 'bpr'):
    config = load_config(f'configs/sasrec.py:variant={variant},tiny')
    config.data.category, config.data.manual_dir = 'Toy', root
    config.data.data_dir = str(tmp_path / 'tfds')
    config.eval.ks = (1, 3, 5)
    config.eval.select_by = 'ndcg@5'
    workdir = str(tmp_path / variant)
    results = train_lib.train_sasrec(config, workdir)
    with open(os.path.join(workdir, 'results.json')) as f:
      assert json.load(f)['test'] == results['test']
    written = list(predictions.read(os.path.join(workdir, 'predictions_test.jsonl')))
    assert [r['user_id'] for r in written] == ['A2', 'A5']
    assert all(len(r['items']) == 6 for r in written)
    if variant == 'pop':
      # Item 1 is the most frequent train target: first for everyone.
      assert results['test']['hr@1'] == 0.5 and written[1]['items'][0] == 1
    else:
      assert results['epochs_run'] == 2 and 'hr@5' in results['test']
