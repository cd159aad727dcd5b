"""The SFT host loop: data -> packed sequences -> jitted steps -> eval -> checkpoints; and the
generative evaluation by `config.eval` that GRPO and experiments/evaluate.py share.

`setup` builds what decoding needs (dataset handle, SIDs, decoder, recommender) and
`pack_splits` the packed training data, so that a loop that only decodes packs nothing.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data import pipeline
from minirec_jax.data import sid_sequences
from minirec_jax.evaluation import generative
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import distributed
from minirec_jax.infra import metric_logging
from minirec_jax.infra import optim
from minirec_jax.loops import run as run_lib
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.semantic_ids import catalogue
from minirec_jax.training import parallel
from minirec_jax.training import sft
from minirec_jax.training import state as state_lib


def packed_split(source, item_tokens: np.ndarray, max_history: int, seq_len: int,
                 fraction: float = 1.0) -> sid_sequences.PackedSequences:
  """Packs the rows of a split (all, or the first `fraction` in file order) exactly."""
  if not 0.0 < fraction <= 1.0:
    raise ValueError(f'data fraction must be in (0, 1], got {fraction}')
  examples = source.__getitems__(list(range(max(1, int(round(fraction * len(source)))))))
  users = [e['user_id'] for e in examples]
  histories = [e['history'][-max_history:] for e in examples]
  if any(len(e['history']) > max_history for e in examples):
    logging.warning('histories longer than %d items were cut to their last %d', max_history,
                    max_history)
  targets = [int(e['target']) for e in examples]
  segments = sid_sequences.build_segments(users, histories, targets, max_history)
  return sid_sequences.pack_segments(segments, item_tokens, seq_len)


def packed_arrays(packed: sid_sequences.PackedSequences) -> dict[str, np.ndarray]:
  """The per-sequence arrays of `packed` (each `[n, seq_len]`), for `pipeline.array_batches`."""
  return {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed) if f.name != 'rows'}


@dataclasses.dataclass
class SftSetup:
  """What an SFT config builds before any data is packed: enough to decode or to train."""

  dataset: loading.Dataset
  sids: catalogue.SidCatalogue
  vocab: sid_sequences.SidVocab
  model: decoder_lib.Decoder
  model_config: Any
  recommender: generative.Recommender


def setup(config: ml_collections.ConfigDict) -> SftSetup:
  """The dataset handle, SID catalogue, vocabulary, decoder and recommender of `config`."""
  dataset = loading.load(config.data)
  sids = catalogue.load_sids(config.sids, dataset)
  vocab = sid_sequences.SidVocab(sids.num_levels, sids.codebook_size)
  overrides = {k: config.model[k] for k in ('width', 'depth') if config.model[k]}
  model_config = variants.decoder_config(config.model.variant, vocab_size=vocab.vocab_size,
                                         dtype=config.model.dtype, **overrides)
  return SftSetup(
      dataset=dataset, sids=sids, vocab=vocab, model=decoder_lib.Decoder(model_config),
      model_config=model_config,
      recommender=generative.Recommender(model_config, sids, config.data.max_history,
                                         item_lists.train_popularity(dataset)))


def pack_splits(config: ml_collections.ConfigDict, s: SftSetup) -> tuple[
    sid_sequences.PackedSequences, sid_sequences.PackedSequences]:
  """The packed train (its first `config.train.data_fraction`) and valid sequences."""
  item_tokens = s.vocab.item_tokens(s.sids.codes)
  max_history, seq_len = config.data.max_history, config.train.seq_len
  return (packed_split(s.dataset.split('train'), item_tokens, max_history, seq_len,
                       config.train.get('data_fraction', 1.0)),
          packed_split(s.dataset.split('valid'), item_tokens, max_history, seq_len))


def _state_parts(s: SftSetup, config, total_steps: int):
  """(rng -> params, optimizer) of the SFT train state."""
  seq = config.train.seq_len
  tx, _ = optim.from_config(config.optim, total_steps)
  tokens = jnp.zeros((1, seq), jnp.int32)
  mask = sft.segment_causal_mask(jnp.ones((1, seq), jnp.int32))
  return (lambda rng: s.model.init(rng, tokens, tokens, mask)['params']), tx


def init_state(s: SftSetup, config, total_steps: int, rng, mesh=None) -> state_lib.TrainState:
  """Params and optimizer state; with `mesh`, created in the train step's state sharding
  (`parallel.state_sharding`: replicated, or FSDP)."""
  init, tx = _state_parts(s, config, total_steps)
  sharding = None if mesh is None else lambda abstract: parallel.state_sharding(abstract, mesh)
  return state_lib.create(init, tx, rng, sharding=sharding)


def abstract_state(s: SftSetup, config) -> state_lib.TrainState:
  """`init_state`'s shapes and dtypes, computing nothing: the target to restore a checkpoint."""
  init, tx = _state_parts(s, config, 1)
  return state_lib.abstract(init, tx, jax.random.key(0))


def valid_loss(eval_step, params, packed, batch_size: int, mesh) -> float:
  """Mean next-token loss over the supervised tokens of `packed`."""
  sums = {'loss_sum': 0.0, 'weight_sum': 0.0}
  for batch in pipeline.array_batches(packed_arrays(packed), batch_size,
                                      drop_remainder=False):
    batch['weights'] = batch['weights'] * batch.pop('valid')[:, None]
    out = eval_step(params, parallel.shard_batch(batch, mesh))
    sums = {k: sums[k] + float(out[k]) for k in sums}
  return sums['loss_sum'] / max(sums['weight_sum'], 1.0)


def evaluate(s: SftSetup, params, eval_config: ml_collections.ConfigDict, split: str,
             max_examples: int, keep_predictions: bool = False) -> generative.EvalResult:
  """Beam search over `split` (its first `max_examples` rows; 0: all) with `eval_config`'s
  beam size, batch size and ks."""
  return generative.evaluate(s.recommender, params, s.dataset.split(split),
                             beam_size=eval_config.beam_size,
                             batch_size=eval_config.batch_size, ks=eval_config.ks,
                             max_examples=max_examples, split=split,
                             keep_predictions=keep_predictions)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, keeps the best checkpoint by config.eval.select_by, evaluates it; returns metrics.

  Multi-host: every process runs this (see minirec_jax/infra/distributed.py) and reads its own slice
  of each epoch; `config.train.batch_size` is the global batch.
  """
  run_lib.check_selection_split(config.eval.split)
  run = run_lib.start(config, workdir)
  mesh = run.mesh
  s = setup(config)
  train, valid = pack_splits(config, s)
  batch_size = config.train.batch_size
  local_batch_size = distributed.local_batch_size(batch_size)
  shard = distributed.data_shard()
  per_process = pipeline.examples_per_epoch(len(train), shard['shard_count'])
  steps_per_epoch = per_process // local_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(train)} packed sequences < batch size {batch_size}')
  total_steps = steps_per_epoch * config.train.epochs
  eval_every = config.train.eval_every_steps or steps_per_epoch
  rng = jax.random.key(config.seed)
  state = init_state(s, config, total_steps, rng, mesh)
  counts = decoder_lib.count_params(s.model_config)
  logging.info('model %s: %s params; %d packed train sequences, %d steps',
               config.model.variant, counts, len(train), total_steps)

  select_by = config.eval.select_by
  ckpts = run.checkpoints(select_by, best_mode='min' if select_by == 'loss' else 'max')
  data = pipeline.array_batches(packed_arrays(train), local_batch_size, seed=config.seed,
                                num_epochs=None, **shard).to_iter_dataset()
  data_iter = iter(data)
  state, _ = run_lib.resume(ckpts, state, data_iter)

  apply_fn = sft.decoder_apply_fn(s.model)
  train_step = parallel.jit_data_parallel(sft.make_sft_step(apply_fn), mesh,
                                          state_sharding=parallel.state_sharding(state, mesh),
                                          max_traces=1)  # static batch shapes
  eval_step = jax.jit(sft.make_sft_eval_step(apply_fn))
  run.writer.write(int(state.step), {**counts, **decoder_lib.flops_per_token(
      s.model_config, config.train.seq_len)}, prefix='model/')
  progress = metric_logging.Progress(total_steps, 'sft', unit='step', start=int(state.step))
  step = int(state.step)
  window_start = time.perf_counter()
  while step < total_steps:
    batch = next(data_iter)
    batch.pop('valid')
    state, metrics = train_step(state, parallel.shard_batch(batch, mesh), rng)
    step += 1
    progress.update()
    if step % config.log.every_steps == 0 or step == total_steps:
      metrics = jax.device_get(metrics)
      metric_logging.check_finite(step, metrics)
      elapsed = time.perf_counter() - window_start
      run.writer.write(step, {**metrics, 'steps_per_s': config.log.every_steps / elapsed},
                       prefix='train/')
      window_start = time.perf_counter()
    if config.ckpt.every_steps and step % config.ckpt.every_steps == 0 and step % eval_every:
      metric_logging.check_finite(step, jax.device_get(metrics))  # never save a NaN state
      ckpts.save(step, state, data_state=data_iter.get_state())
    if step % eval_every == 0 or step == total_steps:
      eval_metrics = {'loss': valid_loss(eval_step, state.params, valid,
                                         config.eval.batch_size, mesh)}
      if select_by != 'loss':
        eval_metrics.update(evaluate(s, state.params, config.eval, config.eval.split,
                                     config.eval.max_examples).metrics)
      if select_by not in eval_metrics:
        raise ValueError(f'eval.select_by={select_by!r} is not among the eval metrics '
                         f'{sorted(eval_metrics)}; adjust eval.ks or eval.select_by')
      metric_logging.check_finite(step, eval_metrics)
      run.writer.write(step, eval_metrics, prefix='valid/')
      ckpts.save(step, state, data_state=data_iter.get_state(), metrics=eval_metrics)
  progress.close()
  best_state, best_step, best_metrics = run_lib.restore_best(ckpts, state)
  results = report(config, workdir, s, best_state.params, f'SFT ({config.model.variant})')
  results.update({'best_step': best_step, 'best_valid_during_training': best_metrics})
  return run.finish(total_steps, results)


def report_splits(config: ml_collections.ConfigDict, workdir: str, s: SftSetup,
                  params) -> dict[str, dict]:
  """Beam-search evaluation of valid and test by `config.eval` (the first
  `report_max_examples` rows; 0: all), each split's predictions file written into `workdir`;
  returns {split: metrics}. Also writes the SID groups (`predictions.ITEM_GROUPS_FILE`), with
  which the files' SID-level metrics are recomputed."""
  predictions.save_item_groups(os.path.join(workdir, predictions.ITEM_GROUPS_FILE),
                               s.sids.item_to_group)
  results = {}
  for split in ('valid', 'test'):
    result = evaluate(s, params, config.eval, split, config.eval.report_max_examples,
                      keep_predictions=True)
    run_lib.write_predictions(workdir, split, result.predictions)
    results[split] = result.metrics
  return results


def report(config: ml_collections.ConfigDict, workdir: str, s: SftSetup, params,
           name: str) -> dict[str, dict]:
  """`report_splits`, with each split's metrics tables and the test row of the method `name`
  (e.g. 'SFT (S)') on stdout."""
  results = report_splits(config, workdir, s, params)
  for split, metrics in results.items():
    print(f'--- {split} ({metrics["examples"]} samples, beam {config.eval.beam_size}) ---')
    print('item level (each SID stands for its items):')
    print(ranking.full_table(metrics))
    print('SID level (official: a generated SID hits every item that shares it):')
    print(ranking.full_table(item_lists.sid_level(metrics)))
    print(f'target perplexity: {metrics["ppl_token"]:.3f} per token, '
          f'{metrics["ppl_item"]:.2f} per item')
  print(ranking.table1({f'minirec-jax {name}, item level': results['test'],
                        f'minirec-jax {name}, SID level': item_lists.sid_level(results['test'])}))
  return results
