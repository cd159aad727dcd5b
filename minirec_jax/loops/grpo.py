"""The GRPO host loop: start from an SFT workdir's policy, roll out, reward, update, evaluate.

The policy and the optional SASRec reward model come from their workdirs through
`loops.artifacts`; the run's checkpoints hold `artifacts.grpo_tree` (policy state and KL
reference), so that `artifacts.load_policy` can read a GRPO workdir back.
"""

from __future__ import annotations

import time

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from minirec_jax.data import pipeline
from minirec_jax.infra import metric_logging
from minirec_jax.loops import artifacts
from minirec_jax.loops import run as run_lib
from minirec_jax.loops import sft as sft_loop
from minirec_jax.rl import prompts as rl_prompts
from minirec_jax.rl import rollout as rollout_lib
from minirec_jax.rl import step as step_lib
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.training import parallel
from minirec_jax.training import state as state_lib


def soft_sync(ref_params, params, alpha: float):
  """TR-DPO style reference update: ref <- alpha * policy + (1 - alpha) * ref."""
  return jax.tree.map(lambda r, p: alpha * p + (1.0 - alpha) * r, ref_params, params)


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


def prompt_rows(config: ml_collections.ConfigDict, policy: artifacts.Policy):
  """The train rows GRPO prompts with: `config.train.prompt_rows` (low, high), fractions of
  the train split in file order, default all. After an SFT on `train.data_fraction` f,
  (f, 1.0) holds only rows whose targets the SFT never trained on, as valid and test do."""
  train = policy.setup.dataset.split('train')
  low, high = config.train.get('prompt_rows', (0.0, 1.0))
  rows = pipeline.fraction_range(train, low, high)
  fraction = policy.sft_config.train.get('data_fraction', 1.0)
  seen = pipeline.leading_rows(len(train), fraction)
  logging.info('GRPO prompts: train rows [%d, %d) of %d; the SFT trained on rows [0, %d), %d '
               'of them among the prompts', rows.start, rows.stop, len(train), seen,
               max(0, min(seen, rows.stop) - rows.start))
  return rows


def _prompt_pool(config: ml_collections.ConfigDict,
                 policy: artifacts.Policy) -> dict[str, np.ndarray] | None:
  """The RL prompt pool of `config.grpo.prompt_sources` (rl/prompts.py: the official RL
  texts), or None when it is empty (the default): the recommender's next-SID prompt of each
  train row, the prompt the policy is evaluated with."""
  sources = tuple(config.grpo.get('prompt_sources', ()))
  if not sources:
    return None
  s, sft = policy.setup, policy.sft_config
  if s.language_model is None:
    raise ValueError(f'grpo.prompt_sources={sources} are text prompts: they need a '
                     'language-model policy (an SFT workdir with model.backbone)')
  rows = sft_loop.split_rows(prompt_rows(config, policy), sft.data.max_history)
  pool = rl_prompts.prompt_pool(
      rows, s.language_model.items, s.language_model.tokenizer, sources=sources,
      wording=sft.llm.wording, max_history=sft.data.max_history,
      max_len=config.grpo.max_prompt_len, num_title_history=config.grpo.num_title_history,
      seed=config.seed, where=f'{s.dataset.name} train split')
  counts = np.bincount(pool['source'], minlength=len(sources))
  logging.info('GRPO prompt pool: %s prompts, widest %d tokens',
               dict(zip(sources, counts.tolist())), pool['tokens'].shape[1])
  return pool


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       scorer=None, reward_params=None) -> dict:
  """GRPO from the reported checkpoint of `config.init_from` (an SFT workdir, or a GRPO one).

  `scorer`/`reward_params`: a frozen collaborative model (`models.sasrec.ScoreFns`) for the
  'collab' and 'collab_rank' rewards; when not given, `config.grpo.reward_model` (a
  `train_sasrec` workdir) is loaded if set.
  """
  if config.eval.report not in ('best', 'last'):
    raise ValueError(f"config.eval.report must be 'best' or 'last', got {config.eval.report!r}")
  run_lib.reported_splits(config.eval)
  collab = [f'grpo.rewards.{name}' for name in ('collab', 'collab_rank')
            if config.grpo.rewards.get(name)]
  if 'gate' in config.grpo and config.grpo.gate.min_reward_auc > 0:
    collab.append('grpo.gate.min_reward_auc')
  if collab and scorer is None and not config.grpo.reward_model:
    raise ValueError(f'{" and ".join(collab)} > 0 needs a collaborative model: set '
                     'grpo.reward_model to a train_sasrec workdir (e.g. variant=recbole), or '
                     'grpo.rewards.collab=0 for the official rule + rank rewards')
  run = run_lib.start(config, workdir)
  mesh = run.mesh
  policy = artifacts.load_policy(config.init_from)
  if sft_loop.is_tiger(policy.sft_config):
    raise ValueError(f'{config.init_from} holds a TIGER encoder-decoder: GRPO runs on '
                     'decoder-only policies (no encoder-decoder rollouts yet)')
  s, max_history = policy.setup, policy.sft_config.data.max_history
  token_map = s.recommender.token_map
  trie = trie_lib.build_trie(s.sids.codes, s.sids.codebook_size, dedupe='first')
  g = config.grpo
  if scorer is None and g.reward_model:
    scorer, reward_params = artifacts.load_scorer(g.reward_model)
  # Everything placed as the update places its outputs, so each jitted function compiles once.
  init_params, reward_params = jax.device_put((policy.params, reward_params),
                                              parallel.replicated(mesh))
  state = state_lib.create(lambda p: p, artifacts.grpo_optimizer(config), init_params,
                           sharding=parallel.replicated(mesh))
  ref_params = jax.tree.map(jnp.copy, init_params)  # state is donated; ref must not alias it
  weights = dict(g.rewards)
  step_fn = step_lib.make_grpo_step(
      s.model_config, token_map=token_map, item_to_group=trie.item_to_group,
      codes_table=trie.codes, weights=weights, beta=g.beta,
      kl_estimator=g.kl_estimator, clip_eps=g.clip_eps, aggregation=g.aggregation,
      adv_ddof=g.adv_ddof, adv_eps=g.adv_eps, sft_weight=g.sft_weight,
      advantage_mode=g.get('advantage', 'group'),
      updates_per_rollout=g.get('updates_per_rollout', 1),
      gate_max_top_prob=g.gate.max_top_prob if 'gate' in g else 1.0,
      gate_min_reward_auc=g.gate.min_reward_auc if 'gate' in g else 0.0, scorer=scorer)

  ckpts = run.checkpoints(artifacts.GRPO_SELECT_BY)
  pool = _prompt_pool(config, policy)
  if pool is None:  # the recommender's own next-SID prompt of each prompt row
    spec = pipeline.BatchSpec(config.train.prompts_per_step, max_history=max_history)
    data = pipeline.batched(prompt_rows(config, policy), spec, seed=config.seed, num_epochs=None)
  else:
    data = pipeline.array_batches(pool, config.train.prompts_per_step, seed=config.seed,
                                  num_epochs=None)
  data_iter = iter(data.to_iter_dataset())
  # One prompt shape, or one per width bucket of a text prompt pool.
  update = parallel.jit_data_parallel(step_fn, mesh, num_frozen=2, max_traces=len(
      rl_prompts.width_buckets(pool['tokens'].shape[1])) if pool is not None else 1)
  tree, _ = run_lib.resume(ckpts, artifacts.grpo_tree(state, ref_params), data_iter)
  state, ref_params = tree['state'], tree['ref']

  def valid_metrics(params):
    return sft_loop.evaluate(s, params, config.eval, 'valid', config.eval.max_examples).metrics

  if int(state.step) == 0:
    start = valid_metrics(state.params)
    run.writer.write(0, start, prefix='valid/')
    ckpts.save(0, artifacts.grpo_tree(state, ref_params), data_state=data_iter.get_state(),
               metrics=start)
  rng = jax.random.key(config.seed)
  progress = metric_logging.Progress(config.train.steps, 'grpo', unit='step',
                                     start=int(state.step))
  times = {'rollout_s': [], 'update_s': []}  # per step of this process (after a resume too)
  step = int(state.step)
  while step < config.train.steps:
    batch = next(data_iter)
    prompts = (s.recommender.prompts(batch['history'], batch['history_len']) if pool is None
               else rl_prompts.bucket_prompts(batch))
    t0 = time.perf_counter()
    roll = rollout_lib.rollout(
        s.model_config, state.params, trie, prompts['tokens'], prompts['positions'],
        prompts['mask'], jnp.asarray(batch['target']), jax.random.fold_in(rng, step),
        mode=g.rollout, group_size=g.group_size, token_map=token_map,
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
      run.writer.write(step, {**metrics, 'rollout_s': t1 - t0, 'update_s': t2 - t1},
                       prefix='train/')
    evaluates = step % config.train.eval_every_steps == 0 or step == config.train.steps
    if config.ckpt.get('every_steps', 0) and step % config.ckpt.every_steps == 0 and not evaluates:
      # A resumable point between valid checks (a language-model policy takes minutes a step).
      ckpts.save(step, artifacts.grpo_tree(state, ref_params), data_state=data_iter.get_state())
    if evaluates:
      valid = valid_metrics(state.params)
      run.writer.write(step, valid, prefix='valid/')
      ckpts.save(step, artifacts.grpo_tree(state, ref_params), data_state=data_iter.get_state(),
                 metrics=valid)
  progress.close()
  if config.eval.report == 'best':
    best, report_step, _ = run_lib.restore_best(ckpts, artifacts.grpo_tree(state, ref_params))
    report_params = best['state'].params
  else:
    ckpts.close()
    report_params, report_step = state.params, int(state.step)
  results = {'report_step': report_step, 'timing': step_timing(times)}
  results.update(sft_loop.report_splits(config, workdir, s, report_params))
  return run.finish(config.train.steps, results)
