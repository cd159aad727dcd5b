"""Collaborative signal in the tokenizer: loss terms, masking, training, stage and pipeline."""

import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from minirec_jax import pipeline as ep
from minirec_jax.data import synthetic
from minirec_jax.data.errors import DataError
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.semantic_ids import collaborative
from minirec_jax.semantic_ids import rqvae
from minirec_jax.semantic_ids import stage
from minirec_jax.testing import write_synthetic_layout

N_ITEMS, UNTRAINED = 64, 4
# Jitted: one compilation per shape instead of one per operation.
info_nce = jax.jit(collaborative.info_nce, static_argnums=3)
code_concentration = jax.jit(collaborative.code_concentration)


def synthetic_items(seed: int = 0):
  """Text vectors in 8 clusters and SASRec vectors in 4 clusters that cut across them; the
  last UNTRAINED items are marked untrained."""
  rng = np.random.default_rng(seed)
  ids = np.arange(N_ITEMS)
  text = rng.normal(size=(8, 16))[ids % 8] + 0.1 * rng.normal(size=(N_ITEMS, 16))
  cf = rng.normal(size=(4, 12))[(ids // 8) % 4] + 0.1 * rng.normal(size=(N_ITEMS, 12))
  return text.astype(np.float32), collaborative.Targets(cf.astype(np.float32),
                                                         ids < N_ITEMS - UNTRAINED)


def small_rq_config(**overrides):
  config = rqvae.rqvae_config('fast')
  config.update(dict(hidden_dims=(16,), e_dim=4, num_levels=2, codebook_size=8, epochs=60,
                     warmup_epochs=2, eval_every=20, kmeans_iters=10, ae_warmup_epochs=0,
                     reseed_every=0, reseed_until=0, lr=3e-3, batch_size=N_ITEMS))
  config.update(overrides)
  return config


def log_softmax_np(logits):
  shifted = logits - logits.max(axis=-1, keepdims=True)
  return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def test_loss_terms_match_numpy():
  rng = np.random.default_rng(1)
  q, k = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  mask = np.array([True, True, False, True, False, True])
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)
  kept = np.flatnonzero(mask)  # masked rows are simply not in the batch
  want = -np.mean(np.diag(log_softmax_np(unit(q[kept]) @ unit(k[kept]).T / 0.3)))
  got = info_nce(jnp.asarray(q, jnp.float32), jnp.asarray(k, jnp.float32), jnp.asarray(mask),
                 0.3)
  np.testing.assert_allclose(got, want, rtol=1e-5)

  residuals, books = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 5, 3))
  values = []
  for r, book in zip(residuals, books):
    d = ((r[:, None] - book[None]) ** 2).sum(-1)
    usage = np.exp(log_softmax_np(-d / d.min(axis=1).mean())).mean(axis=0)
    values.append(5 * np.sum(usage ** 2) - 1)
  got = code_concentration(jnp.asarray(residuals, jnp.float32), jnp.asarray(books, jnp.float32))
  np.testing.assert_allclose(got, np.mean(values), rtol=1e-4)
  # All residuals on one codeword: every item shares its code, the penalty is K - 1.
  piled = code_concentration(jnp.tile(books[:, :1], (1, 10, 1)) + 1e-3,
                             jnp.asarray(books, jnp.float32))
  np.testing.assert_allclose(piled, 4.0, atol=1e-3)


def test_alignment_metrics_match_brute_force():
  rng = np.random.default_rng(2)
  codes = rng.integers(0, 3, size=(12, 2))
  targets = collaborative.Targets(rng.normal(size=(12, 5)), np.arange(12) != 4)
  got = collaborative.alignment_metrics(codes, rng.normal(size=(12, 3)), targets, k=3)
  cf = targets.embeddings[targets.trained]
  cf = cf / np.linalg.norm(cf, axis=1, keepdims=True)
  kept = codes[targets.trained]
  for level in range(2):
    sims = [cf[i] @ cf[j] for i in range(len(cf)) for j in range(len(cf))
            if i != j and (kept[i, :level + 1] == kept[j, :level + 1]).all()]
    np.testing.assert_allclose(got['prefix_cf_cosine'][level], np.mean(sims))
  all_sims = cf @ cf.T
  np.testing.assert_allclose(got['all_pairs_cf_cosine'],
                             all_sims[~np.eye(len(cf), dtype=bool)].mean())
  assert 0.0 <= got['knn_overlap@3'] <= 1.0


def test_untrained_items_do_not_contribute():
  rng = np.random.default_rng(3)
  q, k = jnp.asarray(rng.normal(size=(6, 4))), jnp.asarray(rng.normal(size=(6, 4)))
  mask = jnp.asarray([True, True, False, True, False, True])
  base = info_nce(q, k, mask, 0.2)
  moved = info_nce(q.at[2].set(50.0), k.at[4].set(-9.0).at[2].set(3.0), mask, 0.2)
  np.testing.assert_allclose(moved, base, rtol=1e-6)
  grad_q, grad_k = jax.jit(jax.grad(collaborative.info_nce, argnums=(0, 1)), static_argnums=3)(
      q, k, mask, 0.2)
  np.testing.assert_array_equal(grad_q[~mask], 0.0)
  np.testing.assert_array_equal(grad_k[~mask], 0.0)
  assert float(info_nce(q, k, jnp.zeros(6, bool), 0.2)) == 0.0

  text, targets = synthetic_items()
  fused = collaborative.fused_inputs(text, targets, 0.5)
  assert fused.shape == (N_ITEMS, 16 + 12)
  np.testing.assert_array_equal(fused[~targets.trained, 16:], 0.0)
  np.testing.assert_allclose(np.linalg.norm(fused[targets.trained, 16:], axis=1), 0.5,
                             rtol=1e-5)
  np.testing.assert_allclose(np.linalg.norm(fused[:, :16], axis=1), 1.0, rtol=1e-5)


def test_sasrec_item_table_drops_the_padding_row(monkeypatch):
  table = np.arange(6 * 3, dtype=np.float32).reshape(6, 3)
  monkeypatch.setattr(artifacts, 'load_sasrec', lambda workdir: (
      types.SimpleNamespace(num_items=5), {'item_embedding': {'embedding': table}}))
  load = artifacts.sasrec_item_embeddings
  np.testing.assert_array_equal(collaborative.sasrec_item_table('w', 5, load), table[:5])
  with pytest.raises(DataError, match='does not match this dataset of 7 items'):
    collaborative.sasrec_item_table('w', 7, load)


@pytest.fixture(scope='module')
def letter_runs():
  """(params, history, codes) of RQ-VAEs fitted with the regulariser on (twice) and off."""
  text, targets = synthetic_items()

  def fit(weight, diversity_weight):
    settings = collaborative.Settings(weight, 0.2, diversity_weight)
    params, history = rqvae.train_rqvae(text, small_rq_config(), jax.random.key(0),
                                        collab=collaborative.Regulariser(settings, targets))
    return params, history, np.asarray(rqvae.encode(params, text))

  return {'on': fit(1.0, 0.1), 'again': fit(1.0, 0.1), 'off': fit(0.0, 0.0)}


def test_regulariser_lowers_the_contrastive_term(letter_runs):
  text, targets = synthetic_items()
  batch = collaborative.Batch(jnp.asarray(text), jnp.asarray(targets.embeddings),
                              jnp.asarray(targets.trained))
  settings = collaborative.Settings(1.0, 0.2, 0.1)
  final = {}
  for run in ('on', 'off'):
    params, history, _ = letter_runs[run]
    final[run] = float(rqvae.regulariser_terms(params, batch, settings)['collab_loss'])
    assert {'collab_loss', 'code_concentration'} <= set(history[-1])
  assert final['on'] < final['off'] - 0.5, final


def test_regularised_training_is_deterministic(letter_runs):
  np.testing.assert_array_equal(letter_runs['on'][2], letter_runs['again'][2])
  jax.tree.map(np.testing.assert_array_equal, letter_runs['on'][0], letter_runs['again'][0])


def test_default_config_is_the_unregularised_tokenizer():
  config = load_config('configs/tokenizer.py:tiny')
  assert config.collab.mode == 'none' and not config.collab.sasrec_workdir
  assert stage.collab_targets(config, None, None) is None  # no SASRec read, no report
  config.rqvae.overrides = ml_collections.ConfigDict(small_rq_config(epochs=20).to_dict())
  text, _ = synthetic_items()
  codes, _, _, _, fitted = stage.fit_codes(config, text, jax.random.key(3))
  assert collaborative.PROJECTION not in fitted['params']
  # The call the stage made before the collaborative options existed.
  params, _ = rqvae.train_rqvae(text, small_rq_config(epochs=20), jax.random.key(3))
  np.testing.assert_array_equal(codes, rqvae.encode(params, text))


def test_letter_stage_is_collision_free(tmp_path):
  params = synthetic.SyntheticParams(num_items=60, num_clusters=6, num_users=80, seed=0)
  layout = write_synthetic_layout(str(tmp_path / 'data'), params, with_sids=False,
                                  with_info=False)
  rng = np.random.default_rng(0)
  np.save(tmp_path / 'emb.npy', rng.normal(size=(60, 24)).astype(np.float32))
  table = rng.normal(size=(60, 8)).astype(np.float32)
  config = load_config('configs/tokenizer.py:dataset=industrial,method=rqvae,tiny,collab=letter')
  config.data.update({'category': 'Toy', 'manual_dir': layout,
                      'data_dir': str(tmp_path / 'tfds')})
  config.embeddings.update({'source': 'npy', 'path': str(tmp_path / 'emb.npy')})
  config.collab.sasrec_workdir = 'stands-in-for-a-sasrec-workdir'
  # Two batches per epoch: the in-batch negatives are the batch's, not all items.
  config.rqvae.overrides = ml_collections.ConfigDict(small_rq_config(
      num_levels=3, codebook_size=16, epochs=20, batch_size=32).to_dict())
  with pytest.raises(ValueError, match='pass the stage a SASRec table loader'):
    stage.run(config, str(tmp_path / 'refused'))
  # The table of a SASRec over 60 items: 60 item rows and the padding row.
  report = stage.run(config, str(tmp_path / 'tok'),
                     load_table=lambda workdir: np.concatenate([table, table[:1]]))
  assert report['after']['collision_rate'] == 0.0
  collab = report['collab']
  assert collab['trained_items'] + collab['untrained_items'] == 60
  assert np.isfinite(collab['collab_loss']) and len(collab['prefix_cf_cosine']) == 3
  with np.load(tmp_path / 'tok' / 'tokenizer_params.npz') as saved:
    assert saved[f'{collaborative.PROJECTION}/kernel'].shape == (8, 4)


def test_pipeline_reads_its_sasrec_stage(tmp_path):
  config = load_config('configs/pipeline.py:tiny')
  config.tokenizer.collab.mode = 'letter'
  plan = ep.REGISTRY.plan(config, str(tmp_path))
  semantic_ids = plan.stages['semantic_ids']
  assert semantic_ids.deps == ('embeddings', 'sasrec')
  assert semantic_ids.config.collab.sasrec_workdir == str(tmp_path / 'sasrec')
  order = list(plan.stages)
  assert order.index('sasrec') < order.index('semantic_ids') < order.index('sft')
  config.tokenizer.collab.sasrec_workdir = '/elsewhere'  # a given workdir: no new input
  semantic_ids = ep.REGISTRY.plan(config, str(tmp_path)).stages['semantic_ids']
  assert semantic_ids.deps == ('embeddings',)
  assert semantic_ids.config.collab.sasrec_workdir == '/elsewhere'
