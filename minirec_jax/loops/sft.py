"""The SFT host loop: data -> packed sequences -> jitted steps -> eval -> checkpoints."""

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
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import checkpointing
from minirec_jax.infra import distributed
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.infra import optim
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


def _packed_arrays(packed: sid_sequences.PackedSequences) -> dict[str, np.ndarray]:
  return {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed) if f.name != 'rows'}


@dataclasses.dataclass
class SftSetup:
  """Everything built from a config before training starts."""

  dataset: loading.Dataset
  sids: catalogue.SidCatalogue
  vocab: sid_sequences.SidVocab
  model: decoder_lib.Decoder
  model_config: Any
  train: sid_sequences.PackedSequences
  valid: sid_sequences.PackedSequences


def setup(config: ml_collections.ConfigDict) -> SftSetup:
  dataset = loading.load(config.data)
  sids = catalogue.load_sids(config.sids, dataset)
  vocab = sid_sequences.SidVocab(sids.num_levels, sids.codebook_size)
  item_tokens = vocab.item_tokens(sids.codes)
  max_history = config.data.max_history
  overrides = {k: config.model[k] for k in ('width', 'depth') if config.model[k]}
  model_config = variants.decoder_config(config.model.variant, vocab_size=vocab.vocab_size,
                                         dtype=config.model.dtype, **overrides)
  return SftSetup(
      dataset=dataset, sids=sids, vocab=vocab, model=decoder_lib.Decoder(model_config),
      model_config=model_config,
      train=packed_split(dataset.split('train'), item_tokens, max_history, config.train.seq_len,
                         config.train.get('data_fraction', 1.0)),
      valid=packed_split(dataset.split('valid'), item_tokens, max_history, config.train.seq_len))


def init_state(s: SftSetup, config, total_steps: int, rng, mesh=None) -> state_lib.TrainState:
  """Params and optimizer state; with `mesh`, created in the train step's state sharding
  (`parallel.state_sharding`: replicated, or FSDP)."""
  seq = config.train.seq_len
  tx, _ = optim.from_config(config.optim, total_steps)
  tokens = jnp.zeros((1, seq), jnp.int32)
  mask = sft.segment_causal_mask(jnp.ones((1, seq), jnp.int32))
  init = lambda rng: s.model.init(rng, tokens, tokens, mask)['params']
  sharding = None if mesh is None else lambda abstract: parallel.state_sharding(abstract, mesh)
  return state_lib.create(init, tx, rng, sharding=sharding)


def valid_loss(eval_step, params, packed, batch_size: int, mesh) -> float:
  sums = {'loss_sum': 0.0, 'weight_sum': 0.0}
  for batch in pipeline.array_batches(_packed_arrays(packed), batch_size,
                                      drop_remainder=False):
    batch['weights'] = batch['weights'] * batch.pop('valid')[:, None]
    out = eval_step(params, parallel.shard_batch(batch, mesh))
    sums = {k: sums[k] + float(out[k]) for k in sums}
  return sums['loss_sum'] / max(sums['weight_sum'], 1.0)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, keeps the best checkpoint by config.eval.select_by, evaluates it; returns metrics.

  Multi-host: every process runs this (see minirec_jax/infra/distributed.py) and reads its own slice
  of each epoch; `config.train.batch_size` is the global batch.
  """
  distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  s = setup(config)
  # Configs written before FSDP have no mesh.fsdp: plain data parallelism.
  mesh = parallel.make_mesh(config.mesh.num_devices or None, fsdp=config.mesh.get('fsdp', 1))
  batch_size = config.train.batch_size
  local_batch_size = distributed.local_batch_size(batch_size)
  shard = distributed.data_shard()
  per_process = pipeline.examples_per_epoch(len(s.train), shard['shard_count'])
  steps_per_epoch = per_process // local_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{len(s.train)} packed sequences < batch size {batch_size}')
  total_steps = steps_per_epoch * config.train.epochs
  eval_every = config.train.eval_every_steps or steps_per_epoch
  rng = jax.random.key(config.seed)
  state = init_state(s, config, total_steps, rng, mesh)
  counts = decoder_lib.count_params(s.model_config)
  logging.info('model %s: %s params; %d packed train sequences, %d steps',
               config.model.variant, counts, len(s.train), total_steps)

  select_by = config.eval.select_by
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=config.ckpt.keep,
                                    best_metric=select_by,
                                    best_mode='min' if select_by == 'loss' else 'max')
  data = pipeline.array_batches(_packed_arrays(s.train), local_batch_size, seed=config.seed,
                                num_epochs=None, **shard).to_iter_dataset()
  data_iter = iter(data)
  restored = ckpts.restore_latest(state)
  if restored is not None:
    state, data_state, _ = restored
    data_iter.set_state(data_state)
    logging.info('resumed at step %d', int(state.step))

  apply_fn = sft.decoder_apply_fn(s.model)
  recommender = generative.Recommender(s.model_config, s.sids, config.data.max_history)
  train_step = parallel.jit_data_parallel(sft.make_sft_step(apply_fn), mesh,
                                          state_sharding=parallel.state_sharding(state, mesh),
                                          max_traces=1)  # static batch shapes
  eval_step = jax.jit(sft.make_sft_eval_step(apply_fn))
  writer = metric_logging.MetricWriter(workdir, tensorboard=config.log.tensorboard,
                                       enabled=jax.process_index() == 0)
  writer.write(int(state.step), {**counts, **decoder_lib.flops_per_token(
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
      writer.write(step, {**metrics, 'steps_per_s': config.log.every_steps / elapsed},
                   prefix='train/')
      window_start = time.perf_counter()
    if config.ckpt.every_steps and step % config.ckpt.every_steps == 0 and step % eval_every:
      metric_logging.check_finite(step, jax.device_get(metrics))  # never save a NaN state
      ckpts.save(step, state, data_state=data_iter.get_state())
    if step % eval_every == 0 or step == total_steps:
      eval_metrics = {'loss': valid_loss(eval_step, state.params, s.valid,
                                         config.eval.batch_size, mesh)}
      if select_by != 'loss':
        eval_metrics.update(generative.evaluate(
            recommender, state.params, s.dataset.split(config.eval.split),
            beam_size=config.eval.beam_size, batch_size=config.eval.batch_size,
            ks=config.eval.ks, max_examples=config.eval.max_examples,
            split=config.eval.split).metrics)
      if select_by not in eval_metrics:
        raise ValueError(f'eval.select_by={select_by!r} is not among the eval metrics '
                         f'{sorted(eval_metrics)}; adjust eval.ks or eval.select_by')
      metric_logging.check_finite(step, eval_metrics)
      writer.write(step, eval_metrics, prefix='valid/')
      ckpts.save(step, state, data_state=data_iter.get_state(), metrics=eval_metrics)
  progress.close()
  ckpts.wait()
  best_state, _, best_metrics = ckpts.restore_best(state)
  best_step = ckpts.best_step()
  ckpts.close()
  results = report(config, workdir, s, best_state.params)
  results.update({'best_step': best_step, 'best_valid_during_training': best_metrics})
  io_utils.write_json(os.path.join(workdir, 'results.json'), results)
  writer.write(total_steps, results['test'], prefix='final_test/')
  writer.close()
  return results


def restore_best_params(config: ml_collections.ConfigDict, workdir: str, s: SftSetup):
  """The best checkpoint's parameters of a finished (or running) SFT workdir."""
  state = init_state(s, config, 1, jax.random.key(0))
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'),
                                    best_metric=config.eval.select_by)
  best_state, _, _ = ckpts.restore_best(state)
  ckpts.close()
  return best_state.params


def report(config: ml_collections.ConfigDict, workdir: str, s: SftSetup, params) -> dict:
  """Beam-search evaluation on valid and test; predictions files; tables on stdout."""
  recommender = generative.Recommender(s.model_config, s.sids, config.data.max_history)
  results = {}
  for split in ('valid', 'test'):
    result = generative.evaluate(recommender, params, s.dataset.split(split),
                                 beam_size=config.eval.beam_size,
                                 batch_size=config.eval.batch_size, ks=config.eval.ks,
                                 max_examples=config.eval.report_max_examples, split=split,
                                 keep_predictions=True)
    predictions.write(os.path.join(workdir, f'predictions_{split}.jsonl'), result.predictions)
    results[split] = result.metrics
    print(f'--- {split} ({result.metrics["examples"]} samples, beam {config.eval.beam_size}) ---')
    print(ranking.full_table(result.metrics))
    print(f'target perplexity: {result.metrics["ppl_token"]:.3f} per token, '
          f'{result.metrics["ppl_item"]:.2f} per item')
  print(ranking.table1({f'minirec-jax SFT ({config.model.variant})': results['test']}))
  return results
