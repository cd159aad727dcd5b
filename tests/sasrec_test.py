"""SASRec: both configurations, masking, scoring API, losses, and a tiny end-to-end run."""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.data import sasrec_packing
from minirec_jax.evaluation import predictions
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.loops import sasrec as train_lib
from minirec_jax.models import layers
from minirec_jax.models import sasrec
from minirec_jax.testing import write_official_layout
from minirec_jax.training import sasrec as sasrec_steps

VARIANTS = ('official', 'recbole')


def _histories(num_items, batch, length, seed=0):
  rs = np.random.default_rng(seed)
  lengths = rs.integers(1, length + 1, batch).astype(np.int32)
  history = rs.integers(0, num_items, (batch, length)).astype(np.int32)
  history[np.arange(length)[None, :] >= lengths[:, None]] = -1
  return jnp.asarray(history), jnp.asarray(lengths)


def _tiny(variant, num_items=37, max_len=8, **overrides):
  config = sasrec.make_config(variant, num_items, max_len, **overrides)
  return config, jax.jit(sasrec.init_params, static_argnums=0)(config, jax.random.key(0))


def _apply(config, method, **kwargs):
  """Jitted `(params, history, lengths) -> method output` of a SASRec."""
  model = sasrec.SASRec(config)
  return jax.jit(lambda p, h, n: model.apply({'params': p}, h, n, method=method, **kwargs))


@pytest.mark.parametrize('variant,num_items,max_len,expected', [
    # RecBole's own parameter counts for its SASRec on these catalogues (peers/RESULTS.md).
    ('recbole', 3686, 10, 336_704),
    ('recbole', 1682, 50, 211_008),
    # Official: item emb 3687x32, pos 10x32, LN1-3, Q/K/V, two 1x1 convs + LN, Linear(32, N).
    ('official', 3686, 10, 3687 * 32 + 320 + 3 * 64 + 3 * 1056 + 2 * 1056 + 64 + 33 * 3686),
])
def test_parameter_counts_match_the_reference_implementations(variant, num_items, max_len,
                                                              expected):
  assert sasrec.count_params(sasrec.make_config(variant, num_items, max_len)) == expected


def test_presets_are_the_documented_hyperparameters():
  official = sasrec.make_config('official', 10, 10)
  assert (official.hidden, official.num_blocks, official.num_heads, official.dropout) == (
      32, 1, 1, 0.3)
  recbole = sasrec.make_config('recbole', 10, 50)
  assert (recbole.hidden, recbole.num_blocks, recbole.num_heads, recbole.inner,
          recbole.dropout, recbole.attn_dropout, recbole.layer_norm_eps,
          recbole.activation) == (64, 2, 2, 256, 0.5, 0.5, 1e-12, 'gelu')
  with pytest.raises(ValueError, match='unknown SASRec variant'):
    sasrec.make_config('nope', 10, 10)


@pytest.mark.parametrize('variant', VARIANTS)
def test_padding_and_future_items_do_not_change_the_output(variant):
  config, params = _tiny(variant)
  logits = _apply(config, sasrec.SASRec.all_logits)
  history, lengths = _histories(config.num_items, 6, config.max_len)
  out = logits(params, history, lengths)
  assert out.shape == (6, config.num_items) and out.dtype == jnp.float32
  # Overwrite every position at or after history_len with real items (future/padding).
  positions = jnp.arange(config.max_len)[None, :]
  garbage = jnp.where(positions >= lengths[:, None], (positions * 7 + 3) % config.num_items,
                      history)
  np.testing.assert_allclose(out, logits(params, garbage, lengths), atol=1e-5)
  # A shorter length must change the output (the mask is not ignoring everything).
  shorter = logits(params, history, jnp.maximum(lengths - 1, 1))
  assert not np.allclose(out[lengths > 1], shorter[lengths > 1], atol=1e-4)


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('num_heads', [1, 4])
def test_last_position_shortcut_equals_the_full_sequence_output(variant, num_heads):
  config, params = _tiny(variant, num_blocks=2, num_heads=num_heads, hidden=16)
  # Random values everywhere (RecBole initialises biases to zero, which would hide bias terms
  # that the one-query shortcut moves around).
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.key(7), len(leaves))
  params = jax.tree.unflatten(tree, [0.3 * jax.random.normal(k, x.shape) for k, x in
                                     zip(keys, leaves)])
  history, lengths = _histories(config.num_items, 5, config.max_len, seed=1)
  last = _apply(config, sasrec.SASRec.encode)(params, history, lengths)
  every = _apply(config, sasrec.SASRec.encode_all)(params, history, lengths)
  np.testing.assert_allclose(last, every[jnp.arange(5), lengths - 1], atol=1e-5)


def _user_windows(num_items, max_len, seed):
  """Training rows as the data pipeline makes them: for every user and step, the last
  `max_len` items before it; so a user's first rows are prefixes of each other."""
  rs = np.random.default_rng(seed)
  history, lengths = [], []
  for _ in range(5):
    items = rs.integers(0, num_items, rs.integers(2, 2 * max_len))
    for t in range(1, len(items)):
      window = items[max(0, t - max_len):t]
      history.append(np.pad(window, (0, max_len - len(window)), constant_values=-1))
      lengths.append(len(window))
  return np.stack(history).astype(np.int32), np.asarray(lengths, np.int32)


def test_prefix_representatives_are_longest_extensions():
  history, lengths = _user_windows(11, 6, seed=3)
  rep = sasrec_packing.prefix_representatives(history, lengths)
  n = len(lengths)
  as_tuples = [tuple(history[i, :lengths[i]]) for i in range(n)]
  for i in range(n):
    r = rep[i]
    assert as_tuples[r][:lengths[i]] == as_tuples[i]      # i is a prefix of its representative
    assert rep[r] == r                                    # representatives are fixed points
    # nothing extends a representative (other than an identical history)
    assert not any(len(t) > len(as_tuples[r]) and t[:len(as_tuples[r])] == as_tuples[r]
                   for t in as_tuples)
  # A user's first rows (lengths 1 .. max_len) collapse into one representative each.
  assert len(np.unique(rep)) < n - 10


@pytest.mark.parametrize('variant', VARIANTS)
@pytest.mark.parametrize('share_prefixes', [False, True])
def test_packed_batches_give_the_per_row_outputs(variant, share_prefixes):
  config, params = _tiny(variant, num_items=11, max_len=6, num_blocks=2)
  history, lengths = _user_windows(config.num_items, config.max_len, seed=4)
  keep = np.ones(len(lengths), bool)
  keep[::7] = False  # batch padding rows point nowhere and are skipped
  packed = sasrec_packing.pack(history, lengths, keep, row_multiple=4,
                              share_prefixes=share_prefixes)
  assert len(packed.tokens) % 4 == 0
  model = sasrec.SASRec(config)
  out = jax.jit(lambda p, x: model.apply({'params': p}, x))(params, packed)
  expected = _apply(config, sasrec.SASRec.all_logits)(params, history, lengths)
  np.testing.assert_allclose(out[keep], expected[keep], atol=1e-5)
  unshared = sasrec_packing.pack(history, lengths, keep)
  if share_prefixes:  # shared prefixes are packed once: fewer filled slots
    assert (packed.segments > 0).sum() < (unshared.segments > 0).sum()


@pytest.mark.parametrize('fixed_rows', [False, True])
def test_batch_packer_row_counts(fixed_rows):
  history, lengths = _user_windows(11, 6, seed=5)
  ranker = sasrec_steps.sasrec_ranker(sasrec.make_config('recbole', 11, 6))
  packer = train_lib.BatchPacker(ranker.pack, row_multiple=4, fixed_rows=fixed_rows)
  # Batches of decreasing size: bucketed counts follow each batch, fixed ones never shrink.
  sizes = [len(lengths), len(lengths) // 2, 5]
  rows = []
  for size in sizes:
    batch = {'history': history[:size], 'history_len': lengths[:size],
             'valid': np.ones(size, bool), 'target': np.zeros(size, np.int32)}
    needed = len(sasrec_packing.pack(batch['history'], batch['history_len'], batch['valid']).tokens)
    rows.append(len(packer(batch)['tokens']))
    assert rows[-1] % 4 == 0 and rows[-1] >= needed
    if not fixed_rows:
      assert rows[-1] < needed + 4  # the fewest rows the batch needs, rounded up
  if fixed_rows:
    assert rows == [rows[0]] * len(sizes)
  else:
    assert rows[0] > rows[1] > rows[2]
  assert packer.rows == rows[0] and sorted(packer.examples) == sorted(set(rows))


def test_grouped_epoch_order_keeps_groups_together():
  groups = np.repeat(np.arange(30), np.arange(1, 31))[::-1].copy()
  order = train_lib.epoch_order(len(groups), seed=0, epoch=1, groups=groups)
  assert sorted(order) == list(range(len(groups)))
  runs = groups[order]
  assert (np.diff(runs) != 0).sum() == 29  # each group is one contiguous run
  again = train_lib.epoch_order(len(groups), seed=0, epoch=1, groups=groups)
  np.testing.assert_array_equal(order, again)
  assert not np.array_equal(order, train_lib.epoch_order(len(groups), seed=0, epoch=2,
                                                         groups=groups))


@pytest.mark.parametrize('variant', VARIANTS)
def test_score_and_score_all_agree_and_jit(variant):
  config, params = _tiny(variant)
  fns = sasrec.score_fns(config)
  history, lengths = _histories(config.num_items, 4, config.max_len, seed=2)
  candidates = jnp.asarray(np.random.default_rng(0).integers(0, config.num_items, (4, 5)),
                           jnp.int32)
  every = jax.jit(fns.score_all)(params, history, lengths)
  some = jax.jit(fns.score)(params, history, lengths, candidates)
  assert some.shape == (4, 5)
  np.testing.assert_allclose(some, jnp.take_along_axis(every, candidates, axis=1), atol=1e-5)


@pytest.mark.parametrize('variant,rng_kind', [('recbole', 'hash'), ('official', 'jax')])
def test_dropout_is_active_in_training_only(variant, rng_kind):
  config, params = _tiny(variant, dropout_rng=rng_kind)
  model = sasrec.SASRec(config)
  history, lengths = _histories(config.num_items, 4, config.max_len, seed=3)
  train_logits = jax.jit(lambda p, rng: model.apply(
      {'params': p}, history, lengths, deterministic=False, rngs={'dropout': rng},
      method=sasrec.SASRec.all_logits))
  run = lambda seed: train_logits(params, jax.random.key(seed))
  eval_out = _apply(config, sasrec.SASRec.all_logits)(params, history, lengths)
  np.testing.assert_allclose(run(0), run(0))
  assert not np.allclose(run(0), run(1))
  assert not np.allclose(run(0), eval_out)


def test_hash_keep_mask_rate_and_independence():
  shape = (64, 50, 32)
  a = layers.hash_keep_mask(jax.random.key(0), shape, 0.7)
  b = layers.hash_keep_mask(jax.random.key(1), shape, 0.7)
  assert a.shape == shape and a.dtype == jnp.bool_
  assert abs(float(a.mean()) - 0.7) < 0.01
  # Independent masks agree on p^2 + (1-p)^2 = 0.58 of the elements.
  assert abs(float((a == b).mean()) - 0.58) < 0.01
  assert abs(float(layers.hash_keep_mask(jax.random.key(0), shape, 0.5).mean()) - 0.5) < 0.01


def test_losses_on_hand_made_logits():
  weights = jnp.asarray([1.0, 1.0, 0.0])  # the last row pads the batch
  logits = jnp.asarray([[2.0, -1.0], [0.0, 0.0], [50.0, -50.0]])
  softplus = lambda x: float(np.log1p(np.exp(x)))
  expected_bce = ((softplus(-2.0) + softplus(-1.0)) / 2 + np.log(2.0)) / 2
  np.testing.assert_allclose(sasrec_steps.bce_one_negative_loss(logits, weights), expected_bce,
                             rtol=1e-6)
  expected_bpr = (softplus(-3.0) + np.log(2.0)) / 2
  np.testing.assert_allclose(sasrec_steps.bpr_loss(logits, weights), expected_bpr, rtol=1e-6)
  ce_logits = jnp.asarray([[0.0, 0.0, 0.0, 0.0], [10.0, 0.0, 0.0, 0.0], [0.0, 9.0, 0.0, 0.0]])
  targets = jnp.asarray([2, 0, 0])
  expected_ce = (np.log(4.0) + np.log1p(3 * np.exp(-10.0))) / 2
  np.testing.assert_allclose(sasrec_steps.softmax_ce_loss(ce_logits, targets, weights),
                             expected_ce, rtol=1e-5)


def test_negatives_are_uniform_over_the_other_items():
  targets = jnp.asarray(np.arange(20000) % 5, jnp.int32)
  negatives = np.asarray(sasrec_steps.sample_negatives(jax.random.key(0), targets, 5))
  assert not np.any(negatives == np.asarray(targets))
  counts = np.bincount(negatives[np.asarray(targets) == 2], minlength=5)
  assert counts[2] == 0 and counts.min(initial=10**9, where=np.arange(5) != 2) > 900


def test_official_optimizer_is_adam_with_coupled_l2():
  config = load_config('configs/sasrec.py:variant=official')
  tx = sasrec_steps.optimizer(config.optim)
  params = {'w': jnp.asarray([1.0, -2.0])}
  grads = {'w': jnp.asarray([0.5, 0.0])}
  updates, _ = tx.update(grads, tx.init(params), params)
  # First Adam step moves each weight by lr * sign(grad + l2 * w) (eps is negligible).
  expected = -1e-3 * np.sign(np.asarray([0.5 + 1e-5, -2e-5]))
  np.testing.assert_allclose(updates['w'], expected, rtol=1e-3)
  assert config.train.batch_size == 1024 and config.train.patience == 20
  assert config.eval.select_by == 'ndcg@20' and config.data.max_history == 10


def _successor_rows(num_items, num_users, seed):
  """User logs where the next item is (last + 1) % num_items 90% of the time."""
  rs = np.random.default_rng(seed)
  rows = {'train': [], 'valid': [], 'test': []}
  for u in range(num_users):
    seq = [int(rs.integers(num_items))]
    for _ in range(int(rs.integers(6, 12))):
      seq.append((seq[-1] + 1) % num_items if rs.random() < 0.9 else int(rs.integers(num_items)))
    user = f'A{u}'
    for i in range(1, len(seq) - 2):
      rows['train'].append((user, seq[max(0, i - 10):i], seq[i]))
    rows['valid'].append((user, seq[-12:-2], seq[-2]))
    rows['test'].append((user, seq[-11:-1], seq[-1]))
  return rows


@pytest.fixture(scope='module')
def successor_data(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('succ'))
  return write_official_layout(root, 'Succ', num_items=40,
                               rows=_successor_rows(40, 120, seed=0))


def _config(data_root, tfds_dir, arg):
  config = load_config(f'configs/sasrec.py:{arg}')
  config.data.category = 'Succ'
  config.data.manual_dir = data_root
  config.data.data_dir = tfds_dir
  config.train.max_steps_per_epoch = 0
  config.optim.lr = 1e-2
  config.eval.ks = (1, 5, 10, 20)
  config.mesh.num_devices = 1  # the resume test below runs the sharded loop
  return config


def test_tiny_training_beats_random_and_writes_outputs(successor_data, tmp_path):
  config = _config(successor_data, str(tmp_path / 'tfds'), 'variant=official,tiny')
  config.train.epochs = 12
  config.train.eval_every_epochs = 4
  workdir = str(tmp_path / 'run')
  results = train_lib.train_sasrec(config, workdir)
  # Random ranking gives HR@5 = 5/40; 90% of targets follow the rule.
  assert results['test']['hr@5'] > 0.5, results['test']
  assert results['test']['examples'] == 120
  with open(os.path.join(workdir, 'results.json')) as f:
    assert json.load(f)['test'] == results['test']
  rows = list(predictions.read(os.path.join(workdir, 'predictions_test.jsonl')))
  assert len(rows) == 120 and len(rows[0]['items']) == 40
  assert rows[0]['scores'] == sorted(rows[0]['scores'], reverse=True)
  # The reward-model hand-off: the best params restored from the workdir rank the test rows
  # exactly as the run's own evaluation did.
  model_config, params = artifacts.load_sasrec(workdir)
  assert model_config.architecture == 'official' and model_config.num_items == 40
  test_rows = _successor_rows(40, 120, seed=0)['test'][:8]
  history = np.full((8, 10), -1, np.int32)
  for i, (_, items, _) in enumerate(test_rows):
    history[i, :len(items)] = items
  lengths = np.asarray([len(items) for _, items, _ in test_rows], np.int32)
  scores = sasrec.score_fns(model_config).score_all(params, history, lengths)
  top = np.asarray(jnp.argsort(-scores, axis=1)[:, :5])
  np.testing.assert_array_equal(top, [r['items'][:5] for r in rows[:8]])


def test_resumed_run_matches_an_uninterrupted_run(successor_data, tmp_path):
  config = _config(successor_data, str(tmp_path / 'tfds'), 'variant=recbole,tiny')
  config.train.epochs = 2
  config.mesh.num_devices = 0  # all 4 devices: the data-parallel loop
  straight_dir, resumed_dir = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  straight = train_lib.train_sasrec(config, straight_dir)
  # A run killed after epoch 1: the same workdir without anything saved after epoch 1.
  shutil.copytree(straight_dir, resumed_dir)
  steps = sorted(int(d) for d in os.listdir(os.path.join(resumed_dir, 'checkpoints', 'latest'))
                 if d.isdigit())
  assert len(steps) == 2
  for kind in ('latest', 'best'):
    shutil.rmtree(os.path.join(resumed_dir, 'checkpoints', kind, str(steps[1])),
                  ignore_errors=True)
  os.remove(os.path.join(resumed_dir, 'results.json'))
  resumed = train_lib.train_sasrec(config, resumed_dir)
  with open(os.path.join(resumed_dir, 'metrics.jsonl')) as f:
    epochs = [row['train/epoch'] for row in map(json.loads, f) if 'train/epoch' in row]
  assert epochs == [1, 2, 2]  # the copied history, then only epoch 2 again
  assert resumed['epochs_run'] == straight['epochs_run'] == 2
  assert resumed['test'] == straight['test']
  assert resumed['valid'] == straight['valid']
