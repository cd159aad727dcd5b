"""MiniOneRec's stages and the rows of its results table, registered in the default registry.

Stages, each in `<workdir>/<stage>/`, in registration order (a stage runs after the stages it
reads: with the default LETTER tokenizer, sasrec runs before semantic_ids):

  dataset       build/open the TFDS dataset; statistics (stats.json)
  embeddings    item text embeddings (a packaged sentence encoder, MiniLM by default, or a
                user .npy) -> embeddings.npy
  semantic_ids  RQ-VAE / RQ-KMeans codes -> collision-free SIDs (semantic_ids/stage.py); with a
                tokenizer collab mode (the default: LETTER) and no sasrec_workdir, it reads the
                sasrec stage's item embeddings
  sft           generative recommender on those SIDs (loops/sft.py)
  tiger         optional (a `tiger` config section): TIGER's encoder-decoder on the same SIDs
                (loops/sft.py with model.arch='tiger')
  sasrec        the SASRec baseline, also the collaborative reward model (loops/sasrec.py)
  popularity    the most-popular baseline (the same loop, variant 'pop': no training)
  bpr           BPR-MF (the same loop, variant 'bpr': a user is the mean of their history's
                item vectors), the matrix-factorisation baseline
  grpo          GRPO from the best SFT checkpoint (loops/grpo.py)
  evaluation    test metrics of every registered row on the same test rows, from their
                predictions files (results.py)

Rows, in the table's order: most popular, BPR-MF and SASRec (full ranking over items), SFT and
SFT+GRPO (generated SIDs, each standing for its items), then TIGER when its stage runs; every
row at item level and, read through the SFT's SID groups, at SID level.
"""

from __future__ import annotations

import os
from typing import Callable

import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data import stats as stats_lib
from minirec_jax.infra import io_utils
from minirec_jax.loops import artifacts
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import run as run_lib
from minirec_jax.loops import sasrec as sasrec_train
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import lm_embeddings
from minirec_jax.pipeline import registry
from minirec_jax.pipeline import results as results_lib
from minirec_jax.semantic_ids import catalogue
from minirec_jax.semantic_ids import stage as sid_stage

EMBEDDINGS_FILE = 'embeddings.npy'
# The stage whose results.json is the pipeline's results table.
EVALUATION = 'evaluation'


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return config.copy_and_resolve_references()


def _run_dataset(config, folder: str, plan) -> dict:
  del plan
  dataset = loading.load(config.data)
  stats = stats_lib.dataset_statistics(dataset)
  io_utils.write_json(os.path.join(folder, 'stats.json'), stats)
  print(stats_lib.format_statistics(stats))
  return {'name': dataset.name, 'data_dir': dataset.builder.data_dir, 'items': stats['items'],
          'rows': {name: s['rows'] for name, s in stats['splits'].items()}}


registry.register_stage('dataset', _run_dataset)


def _embeddings_config(context: registry.Context) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({'data': _copy(context.config.dataset.data),
                                    'embeddings': _copy(context.config.tokenizer.embeddings)})


def _run_embeddings(config, folder: str, plan) -> dict:
  del plan
  vectors = sid_stage.item_vectors(config, loading.load(config.data),
                                   load_encoder=lm_embeddings.MeanPoolEncoder)
  with io_utils.atomic_path(os.path.join(folder, EMBEDDINGS_FILE)) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, vectors)
  return {'file': EMBEDDINGS_FILE, 'shape': list(vectors.shape),
          'source': config.embeddings.source}


registry.register_stage('embeddings', _run_embeddings, inputs=('dataset',),
                        configure=_embeddings_config)


def _tokenizer_reads_pipeline_sasrec(config: ml_collections.ConfigDict) -> bool:
  """Whether the tokenizer takes its collaborative embeddings from this workdir's SASRec (a
  collab mode, no workdir)."""
  return config.tokenizer.collab.mode != 'none' and not config.tokenizer.collab.sasrec_workdir


def _tokenizer_config(context: registry.Context) -> ml_collections.ConfigDict:
  """The tokenizer config, reading this workdir's embeddings (and SASRec, see above)."""
  tokenizer = _copy(context.config.tokenizer)
  tokenizer.embeddings = ml_collections.ConfigDict(
      {'source': 'npy', 'path': os.path.join(context.folder('embeddings'), EMBEDDINGS_FILE),
       'cache_dir': ''})
  if _tokenizer_reads_pipeline_sasrec(context.config):
    tokenizer.collab.sasrec_workdir = context.folder('sasrec')
  return tokenizer


registry.register_stage(
    'semantic_ids', lambda config, folder, plan: sid_stage.run(
        config, folder, load_table=artifacts.sasrec_item_embeddings),
    inputs=lambda ctx: ('embeddings', 'sasrec') if _tokenizer_reads_pipeline_sasrec(ctx.config)
    else ('embeddings',), configure=_tokenizer_config)


def _loop_stage(train: Callable[[ml_collections.ConfigDict, str], dict]) -> registry.RunFn:
  """A stage body around a training loop: trains, then summarises its results.json."""

  def run(config, folder: str, plan) -> dict:
    del plan
    results = train(config, folder)
    keep = ('best_step', 'report_step', 'epochs_run', 'best_epoch', 'model')
    return {**{k: results[k] for k in keep if k in results}, 'test': results['test'],
            'results': results_lib.RESULTS_FILE, 'predictions': 'predictions_test.jsonl'}

  return run


def _reporting_test(config: ml_collections.ConfigDict, stage: str) -> ml_collections.ConfigDict:
  """`config` (stage `stage`'s), checked to report test: the results table reads its test
  predictions."""
  if 'test' not in run_lib.reported_splits(config.eval):
    raise ValueError(f'{stage}.eval.report_splits={tuple(config.eval.report_splits)!r}: the '
                     "pipeline's results table reads each method's test predictions")
  return config


def _reads_pipeline_sids(config: ml_collections.ConfigDict, stage: str) -> bool:
  """Whether `stage` (sft or tiger) trains on this workdir's semantic_ids stage (a tokenizer
  source, no path)."""
  return config[stage].sids.source == 'tokenizer' and not config[stage].sids.path


def _generative_stage(stage: str, **kwargs) -> None:
  """Registers `stage`, a loops/sft.py run on this workdir's SIDs unless its config names
  others."""

  def configure(context: registry.Context) -> ml_collections.ConfigDict:
    config = _copy(context.config[stage])
    if _reads_pipeline_sids(context.config, stage):
      config.sids.path = context.folder('semantic_ids')
    return _reporting_test(config, stage)

  registry.register_stage(
      stage, _loop_stage(sft_loop.train_and_evaluate), configure=configure,
      inputs=lambda ctx: ('semantic_ids',) if _reads_pipeline_sids(ctx.config, stage)
      else ('dataset',), **kwargs)


_generative_stage('sft')
registry.register_stage('sasrec', _loop_stage(sasrec_train.train_sasrec), inputs=('dataset',))
registry.register_stage('popularity', _loop_stage(sasrec_train.train_sasrec),
                        inputs=('dataset',))
registry.register_stage('bpr', _loop_stage(sasrec_train.train_sasrec), inputs=('dataset',))


def _grpo_reads_pipeline_sasrec(config: ml_collections.ConfigDict) -> bool:
  """Whether the collaborative reward or gate uses this workdir's SASRec (weighted, no model
  path)."""
  g = config.grpo.grpo
  uses = g.rewards.collab or g.rewards.get('collab_rank') or ('gate' in g and g.gate.min_reward_auc)
  return bool(uses) and not g.reward_model


def _grpo_config(context: registry.Context) -> ml_collections.ConfigDict:
  grpo = _copy(context.config.grpo)
  grpo.init_from = grpo.init_from or context.folder('sft')
  if _grpo_reads_pipeline_sasrec(context.config):
    grpo.grpo.reward_model = context.folder('sasrec')
  return _reporting_test(grpo, 'grpo')


registry.register_stage(
    'grpo', _loop_stage(grpo_loop.train_and_evaluate), configure=_grpo_config,
    inputs=lambda ctx: ('sft', 'sasrec') if _grpo_reads_pipeline_sasrec(ctx.config) else ('sft',))
_generative_stage('tiger', enabled=lambda config: 'tiger' in config)


def _run_evaluation(config, folder: str, plan: registry.Plan) -> dict:
  """Every registered row's metrics on the rows all of them ranked -> results.json."""
  dataset = loading.load(plan.stages['dataset'].config.data)
  names = {m.stage: m.display_name(plan) for m in plan.methods}
  results = results_lib.evaluate_methods(
      {names[m.stage]: plan.folder(m.stage) for m in plan.methods}, config.ks,
      {names[m.stage]: m.item_groups(plan, dataset) if m.item_groups else None
       for m in plan.methods},
      split=config.split)
  results.update(dataset=dataset.name, split_rows=len(dataset.split(config.split)))
  io_utils.write_json(os.path.join(folder, results_lib.RESULTS_FILE), results)
  return {'results': results_lib.RESULTS_FILE, 'rows': results['rows'],
          'metrics': {name: m['metrics'] for name, m in results['methods'].items()}}


registry.register_stage(EVALUATION, _run_evaluation,
                        inputs=lambda ctx: tuple(m.stage for m in ctx.methods))


def _sft_sid_groups(plan: registry.Plan, dataset: loading.Dataset) -> np.ndarray:
  """SFT's SIDs (GRPO keeps them): the SID groups every row is also scored with, at SID
  level."""
  return catalogue.load_sids(plan.stages['sft'].config.sids, dataset).item_to_group


def _generative_name(label: str):
  return lambda plan: f"minirec-jax {label} ({plan.stages['sft'].config.model.variant})"


registry.register_method('popularity', 'Most popular', _sft_sid_groups)
registry.register_method('bpr', 'BPR-MF', _sft_sid_groups)
registry.register_method('sasrec', 'SASRec', _sft_sid_groups)
registry.register_method('sft', _generative_name('SFT'), _sft_sid_groups)
registry.register_method('grpo', _generative_name('SFT+GRPO'), _sft_sid_groups)
registry.register_method(
    'tiger', lambda plan: f"TIGER ({plan.stages['tiger'].config.model.variant})", _sft_sid_groups)
