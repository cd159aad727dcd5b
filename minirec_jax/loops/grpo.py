"""The GRPO host loop: start from an SFT workdir, roll out, reward, update, evaluate."""

from __future__ import annotations

import json
import os
import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from minirec_jax.data import pipeline
from minirec_jax.evaluation import generative
from minirec_jax.evaluation import predictions
from minirec_jax.infra import checkpointing
from minirec_jax.infra import distributed
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.infra import optim
from minirec_jax.loops import sasrec as sasrec_train
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import sasrec as sasrec_model
from minirec_jax.rl import rollout as rollout_lib
from minirec_jax.rl import step as step_lib
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.training import parallel
from minirec_jax.training import state as state_lib


def sft_config(init_from: str) -> ml_collections.ConfigDict:
  with open(os.path.join(init_from, 'config.json')) as f:
    return ml_collections.ConfigDict(json.load(f))


def soft_sync(ref_params, params, alpha: float):
  """TR-DPO style reference update: ref <- alpha * policy + (1 - alpha) * ref."""
  return jax.tree.map(lambda r, p: alpha * p + (1.0 - alpha) * r, ref_params, params)


def reward_model(sasrec_workdir: str):
  """(score_fn, frozen params) of a SASRec trained by `train_sasrec`, for the collab reward."""
  model_config, params = sasrec_train.restore_sasrec(sasrec_workdir)
  return sasrec_model.score_fns(model_config).score, params


def step_timing(times: dict[str, list[float]]) -> dict:
  """Medians of the per-step rollout and update seconds, the first step (compilation) apart."""
  steady = {k: v[1:] or v for k, v in times.items()}
  med = {f'{k}_median': float(np.median(v)) if v else None for k, v in steady.items()}
  out = {'steps_timed': len(times['rollout_s']), **med,
         'first_step_s': (times['rollout_s'][0] + times['update_s'][0]
                          if times['rollout_s'] else None)}
  if times['rollout_s']:
    out['rollout_share'] = med['rollout_s_median'] / (med['rollout_s_median']
                                                      + med['update_s_median'])
  return out


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       score_fn=None, reward_params=None) -> dict:
  """GRPO from the best checkpoint of `config.init_from` (an SFT workdir).

  `score_fn`/`reward_params`: a frozen collaborative model for the 'collab' reward; when not
  given, `config.grpo.reward_model` (a `train_sasrec` workdir) is loaded if set.
  """
  distributed.initialize()
  if config.eval.report not in ('best', 'last'):
    raise ValueError(f"config.eval.report must be 'best' or 'last', got {config.eval.report!r}")
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  base = sft_config(config.init_from)
  s = sft_loop.setup(base)
  init_params = sft_loop.restore_best_params(base, config.init_from, s)
  recommender = generative.Recommender(s.model_config, s.sids, base.data.max_history)
  trie = trie_lib.build_trie(s.sids.codes, s.sids.codebook_size, dedupe='first')
  g = config.grpo
  if score_fn is None and g.reward_model:
    score_fn, reward_params = reward_model(g.reward_model)
  tx, _ = optim.from_config(config.optim, config.train.steps)
  mesh = parallel.make_mesh(config.mesh.num_devices or None)
  # Everything placed as the update places its outputs, so each jitted function compiles once.
  init_params = jax.device_put(init_params, parallel.replicated(mesh))
  state = state_lib.create(lambda p: p, tx, init_params, sharding=parallel.replicated(mesh))
  ref_params = jax.tree.map(jnp.copy, init_params)  # state is donated; ref must not alias it
  weights = dict(g.rewards)
  step_fn = step_lib.make_grpo_step(
      s.model_config, sid_offset=recommender.vocab.sid_offset,
      codebook_size=recommender.vocab.codebook_size, item_to_group=trie.item_to_group,
      codes_table=trie.codes, weights=weights, beta=g.beta, kl_estimator=g.kl_estimator,
      clip_eps=g.clip_eps, aggregation=g.aggregation, adv_ddof=g.adv_ddof, adv_eps=g.adv_eps,
      sft_weight=g.sft_weight, score_fn=score_fn)
  update = parallel.jit_data_parallel(step_fn, mesh, num_frozen=2, max_traces=1)

  ckpts = checkpointing.Checkpoints(os.path.join(workdir, 'checkpoints'), keep=config.ckpt.keep,
                                    best_metric='ndcg@10')
  train = s.dataset.split('train')
  spec = pipeline.BatchSpec(config.train.prompts_per_step, max_history=base.data.max_history)
  data_iter = iter(pipeline.batched(train, spec, seed=config.seed,
                                    num_epochs=None).to_iter_dataset())
  restored = ckpts.restore_latest({'state': state, 'ref': ref_params})
  if restored is not None:
    tree, data_state, _ = restored
    state, ref_params = tree['state'], tree['ref']
    data_iter.set_state(data_state)
    logging.info('resumed GRPO at step %d', int(state.step))

  def evaluate(params, split, max_examples, keep=False):
    return generative.evaluate(recommender, params, s.dataset.split(split),
                               beam_size=config.eval.beam_size,
                               batch_size=config.eval.batch_size, ks=config.eval.ks,
                               max_examples=max_examples, split=split, keep_predictions=keep)

  writer = metric_logging.MetricWriter(workdir, tensorboard=config.log.tensorboard,
                                       enabled=jax.process_index() == 0)
  if int(state.step) == 0:
    start = evaluate(state.params, 'valid', config.eval.max_examples).metrics
    writer.write(0, start, prefix='valid/')
    ckpts.save(0, {'state': state, 'ref': ref_params}, data_state=data_iter.get_state(),
               metrics=start)
  rng = jax.random.key(config.seed)
  progress = metric_logging.Progress(config.train.steps, 'grpo', unit='step',
                                     start=int(state.step))
  times = {'rollout_s': [], 'update_s': []}  # per step of this process (after a resume too)
  step = int(state.step)
  while step < config.train.steps:
    batch = next(data_iter)
    prompts = recommender.prompts(batch['history'], batch['history_len'])
    t0 = time.perf_counter()
    roll = rollout_lib.rollout(
        s.model_config, state.params, trie, prompts['tokens'], prompts['positions'],
        prompts['mask'], jnp.asarray(batch['target']), jax.random.fold_in(rng, step),
        mode=g.rollout, group_size=g.group_size, sid_offset=recommender.vocab.sid_offset,
        temperature=g.temperature, add_target=g.add_target)
    jax.block_until_ready(roll)
    t1 = time.perf_counter()
    update_batch = {'tokens': prompts['tokens'], 'positions': prompts['positions'],
                    'mask': prompts['mask'], 'history': batch['history'],
                    'history_len': batch['history_len'], 'target': batch['target'],
                    'items': np.asarray(roll.items), 'codes': np.asarray(roll.codes)}
    state, metrics = update(state, ref_params, reward_params,
                            parallel.shard_batch(update_batch, mesh), rng)
    metrics = jax.device_get(metrics)
    t2 = time.perf_counter()
    times['rollout_s'].append(t1 - t0)
    times['update_s'].append(t2 - t1)
    step += 1
    progress.update()
    if g.ref_sync_every and step % g.ref_sync_every == 0:
      ref_params = soft_sync(ref_params, state.params, g.ref_sync_alpha)
    metric_logging.check_finite(step, metrics)
    if step % config.log.every_steps == 0:
      writer.write(step, {**metrics, 'rollout_s': t1 - t0, 'update_s': t2 - t1},
                   prefix='train/')
    if step % config.train.eval_every_steps == 0 or step == config.train.steps:
      valid = evaluate(state.params, 'valid', config.eval.max_examples).metrics
      writer.write(step, valid, prefix='valid/')
      ckpts.save(step, {'state': state, 'ref': ref_params}, data_state=data_iter.get_state(),
                 metrics=valid)
  progress.close()
  ckpts.wait()
  if config.eval.report == 'best':
    best, _, _ = ckpts.restore_best({'state': state, 'ref': ref_params})
    report_params, report_step = best['state'].params, ckpts.best_step()
  else:
    report_params, report_step = state.params, int(state.step)
  ckpts.close()
  results = {'report_step': report_step, 'timing': step_timing(times)}
  predictions.save_item_groups(os.path.join(workdir, predictions.ITEM_GROUPS_FILE),
                               s.sids.item_to_group)
  for split in ('valid', 'test'):
    result = evaluate(report_params, split, config.eval.report_max_examples, keep=True)
    predictions.write(os.path.join(workdir, f'predictions_{split}.jsonl'), result.predictions)
    results[split] = result.metrics
  io_utils.write_json(os.path.join(workdir, 'results.json'), results)
  writer.write(config.train.steps, results['test'], prefix='final_test/')
  writer.close()
  return results
