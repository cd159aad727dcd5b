"""The SFT host loop: data -> packed sequences -> jitted steps -> eval -> checkpoints; and the
generative evaluation by `config.eval` that GRPO and experiments/evaluate.py share.

`setup` builds what decoding needs (dataset handle, SIDs, decoder, recommender) and
`pack_splits` the packed training data, so that a loop that only decodes packs nothing.

Two policies share the loop, chosen by `config.model.backbone`:
* '' (default): our decoder from scratch on a SID-only vocabulary (`config.model.variant`),
  trained on chained SID sequences (`sid_sequences`); with `config.model.arch='tiger'` the
  T5-style encoder-decoder of TIGER instead (`models/encoder_decoder.py`: the history's SIDs
  in, the target SID out; one example per row, `data/seq2seq.py`);
* a pretrained language model ('smollm2-135m', 'gguf:<file>', 'hf:<folder>';
  models/backbones.py) with its vocabulary extended by SID tokens (`vocab_extension`), trained
  on the text tasks of `config.llm` (`llm_tasks`: task mixture, wording, exact packing), logits
  at the response tokens only, optionally with all but the new token rows and the top
  `train.trainable_layers` blocks frozen, and the new rows optionally at a larger learning rate
  (`train.new_rows_lr_scale`). Its recommender prompts with the next-SID prompt of
  the same wording.
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

from minirec_jax.data import llm_tasks
from minirec_jax.data import loading
from minirec_jax.data import pipeline
from minirec_jax.data import seq2seq
from minirec_jax.data import sid_sequences
from minirec_jax.evaluation import generative
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import distributed
from minirec_jax.infra import metric_logging
from minirec_jax.infra import optim
from minirec_jax.loops import run as run_lib
from minirec_jax.models import backbones
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import encoder_decoder
from minirec_jax.models import variants
from minirec_jax.models import vocab_extension
from minirec_jax.semantic_ids import catalogue
from minirec_jax.training import parallel
from minirec_jax.training import seq2seq as seq2seq_steps
from minirec_jax.training import sft
from minirec_jax.training import state as state_lib


def split_rows(source, max_history: int, fraction: float = 1.0) -> list[dict]:
  """The rows of a split (all, or the first `fraction` in file order), histories cut to their
  last `max_history` items."""
  examples = source.__getitems__(list(range(pipeline.leading_rows(len(source), fraction))))
  if any(len(e['history']) > max_history for e in examples):
    logging.warning('histories longer than %d items were cut to their last %d', max_history,
                    max_history)
  return [{'user_id': e['user_id'], 'history': e['history'][-max_history:],
           'target': int(e['target'])} for e in examples]


def packed_split(source, item_tokens: np.ndarray, max_history: int, seq_len: int,
                 fraction: float = 1.0) -> sid_sequences.PackedSequences:
  """Packs the rows of a split (all, or the first `fraction` in file order) exactly."""
  rows = split_rows(source, max_history, fraction)
  segments = sid_sequences.build_segments([r['user_id'] for r in rows],
                                          [r['history'] for r in rows],
                                          [r['target'] for r in rows], max_history)
  return sid_sequences.pack_segments(segments, item_tokens, seq_len)


def packed_arrays(packed: sid_sequences.PackedSequences) -> dict[str, np.ndarray]:
  """The per-sequence arrays of `packed` (each `[n, seq_len]`), for `pipeline.array_batches`."""
  return {f.name: getattr(packed, f.name) for f in dataclasses.fields(packed) if f.name != 'rows'}


@dataclasses.dataclass
class LanguageModel:
  """What a pretrained backbone adds to the setup.

  tokenizer: its tokenizer with the SID tokens added; params: the extended pretrained
  parameters (numpy), the state's starting point; new_rows_from: the first SID token row;
  items: the item table with each item's SID string (the text tasks' catalogue).
  """

  tokenizer: Any
  params: Any
  new_rows_from: int
  items: Any


@dataclasses.dataclass
class SftSetup:
  """What an SFT config builds before any data is packed: enough to decode or to train.

  `vocab` is the SID-only vocabulary of our decoder (None with a language model, whose
  `language_model` is set instead)."""

  dataset: loading.Dataset
  sids: catalogue.SidCatalogue
  vocab: sid_sequences.SidVocab | None
  model: decoder_lib.Decoder
  model_config: Any
  recommender: generative.Recommender
  language_model: LanguageModel | None = None


def setup(config: ml_collections.ConfigDict) -> SftSetup:
  """The dataset handle, SID catalogue, vocabulary, decoder and recommender of `config`."""
  dataset = loading.load(config.data)
  sids = catalogue.load_sids(config.sids, dataset)
  popularity = item_lists.train_popularity(dataset)
  tiger = is_tiger(config)
  if config.model.get('backbone'):
    return _language_model_setup(config, dataset, sids, popularity)
  vocab = sid_sequences.SidVocab(sids.num_levels, sids.codebook_size)
  if tiger:
    return _tiger_setup(config, dataset, sids, vocab, popularity)
  overrides = {k: config.model[k] for k in ('width', 'depth') if config.model[k]}
  model_config = variants.decoder_config(config.model.variant, vocab_size=vocab.vocab_size,
                                         dtype=config.model.dtype, **overrides)
  return SftSetup(
      dataset=dataset, sids=sids, vocab=vocab, model=decoder_lib.Decoder(model_config),
      model_config=model_config,
      recommender=generative.Recommender(model_config, sids, config.data.max_history,
                                         popularity))


def is_tiger(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` trains the encoder-decoder (`model.arch`: 'decoder' | 'tiger')."""
  arch = config.model.get('arch', 'decoder')
  if arch not in ('decoder', 'tiger'):
    raise ValueError(f"model.arch must be 'decoder' or 'tiger', got {arch!r}")
  if arch == 'tiger' and config.model.get('backbone'):
    raise ValueError('model.arch=tiger trains from scratch: unset model.backbone')
  return arch == 'tiger'


def _tiger_setup(config, dataset, sids, vocab, popularity) -> SftSetup:
  if config.model.width or config.model.depth:
    raise ValueError('model.width/depth override the decoder only; choose a TIGER variant')
  users = config.model.get('num_user_buckets', -1)
  model_config = encoder_decoder.encoder_decoder_config(
      config.model.variant, vocab.vocab_size, dtype=config.model.dtype,
      **({'num_user_buckets': users} if users >= 0 else {}))
  return SftSetup(dataset=dataset, sids=sids, vocab=vocab, model=None, model_config=model_config,
                  recommender=generative.Seq2SeqRecommender(
                      model_config, sids, config.data.max_history, popularity))


def _language_model_setup(config, dataset, sids, popularity) -> SftSetup:
  backbone = backbones.load(config.model.backbone, config.model.dtype)
  llm = config.llm
  extended = vocab_extension.extend(
      backbone.tokenizer, backbone.config, backbone.params, sids.num_levels, sids.codebook_size,
      codes=sids.codes if llm.catalogue_tokens_only else None, noise_scale=llm.noise_scale,
      noise_relative=llm.get('noise_relative', False), seed=config.seed)
  table = np.asarray(extended.token_map.table)
  params = extended.params
  model_config = extended.config
  row_init = llm.get('sid_row_init', 'mean')
  if row_init == 'titles':
    titles = extended.tokenizer.encode_batch(list(dataset.items.title), add_special_tokens=False)
    params = vocab_extension.title_rows(model_config, params, extended.token_map, sids.codes,
                                        titles)
  elif row_init != 'mean':
    raise ValueError(f"llm.sid_row_init must be 'mean' or 'titles', got {row_init!r}")
  if llm.get('sid_softmax', False):
    model_config = dataclasses.replace(model_config,
                                       output_rows=extended.token_map.generated_ids())
  if config.model.get('init', 'pretrained') == 'random':  # the architecture alone (a control)
    tokens = jnp.zeros((1, 1), jnp.int32)
    params = jax.device_get(decoder_lib.Decoder(model_config).init(
        jax.random.key(config.seed), tokens, tokens)['params'])
  elif config.model.get('init', 'pretrained') != 'pretrained':
    raise ValueError(f"model.init must be 'pretrained' or 'random', got {config.model.init!r}")
  items = dataclasses.replace(dataset.items, sid=llm_tasks.sid_strings(sids.codes))
  prompts = llm_tasks.NextSidPrompts(items, extended.tokenizer,
                                     llm.get('eval_wording') or llm.wording,
                                     config.data.max_history)
  recommender = generative.Recommender(model_config, sids, config.data.max_history,
                                       popularity, token_map=extended.token_map,
                                       prompt_fn=prompts)
  return SftSetup(dataset=dataset, sids=sids, vocab=None,
                  model=decoder_lib.Decoder(model_config), model_config=model_config,
                  recommender=recommender,
                  language_model=LanguageModel(extended.tokenizer, params,
                                               int(table[table >= 0].min()), items))


def _category_phrase(config) -> str:
  """The official title-history prompts' phrase: `llm.category_phrase`, else the dataset's."""
  if config.llm.category_phrase or config.llm.wording != 'official':
    return config.llm.category_phrase
  return llm_tasks.category_phrase(config.data.category) if config.data.category else ''


def _task_arrays(config, s: SftSetup, rows: list[dict], mixture: llm_tasks.TaskMixture,
                 where: str) -> tuple[dict[str, np.ndarray], dict]:
  """A language model's packed examples of `mixture` over `rows`, in the compact target form
  (`sft.compact_targets`), and their token counts."""
  lm = s.language_model
  examples = llm_tasks.mixture_examples(rows, lm.items, mixture, phrase=_category_phrase(config),
                                        where=where)
  tokenized = llm_tasks.tokenize_examples(examples, lm.tokenizer, config.llm.cutoff_len or None)
  if s.model_config.output_rows:
    llm_tasks.check_targets_within(tokenized, s.model_config.output_rows,
                                   f'{where} with llm.sid_softmax')
  packed, stats = llm_tasks.pack_examples(tokenized, config.train.seq_len)
  counts = llm_tasks.token_counts(tokenized)
  logging.info('%s: %s; packed %s', where, counts['epoch'], stats)
  arrays = {'tokens': packed.tokens, 'positions': packed.positions,
            'segment_ids': packed.segment_ids,
            **sft.compact_targets(packed.labels, packed.weights)}
  return arrays, counts


def pack_splits(config: ml_collections.ConfigDict, s: SftSetup) -> tuple[
    dict[str, np.ndarray], dict[str, np.ndarray]]:
  """The packed train (its first `config.train.data_fraction`) and valid sequences, as the
  arrays `pipeline.array_batches` reads (each `[n, ...]`). A language model's valid split is
  its next-SID task over the rows that select checkpoints (`eval.max_examples`)."""
  max_history, seq_len = config.data.max_history, config.train.seq_len
  fraction = config.train.get('data_fraction', 1.0)
  if isinstance(s.model_config, encoder_decoder.EncoderDecoderConfig):
    item_tokens = s.vocab.item_tokens(s.sids.codes)
    return tuple(seq2seq.examples(split_rows(s.dataset.split(split), max_history, f),
                                  item_tokens, max_history,
                                  num_user_buckets=s.model_config.num_user_buckets,
                                  vocab_size=s.vocab.vocab_size)
                 for split, f in (('train', fraction), ('valid', 1.0)))
  if s.language_model is None:
    item_tokens = s.vocab.item_tokens(s.sids.codes)
    return tuple(packed_arrays(packed_split(s.dataset.split(split), item_tokens, max_history,
                                            seq_len, f))
                 for split, f in (('train', fraction), ('valid', 1.0)))
  llm = config.llm
  name = config.data.get('category') or config.data.name
  mixture = llm_tasks.TaskMixture(wording=llm.wording, seed=llm.seed,
                                  chain_next_sid=llm.chain_next_sid, **dict(llm.tasks))
  train, _ = _task_arrays(config, s, split_rows(s.dataset.split('train'), max_history,
                                                 fraction), mixture, f'{name} train split')
  valid_source = s.dataset.split('valid')
  n = config.eval.max_examples or len(valid_source)
  next_sid = dataclasses.replace(mixture, **{t: float(t == 'next_sid') for t in llm_tasks.TASKS})
  valid, _ = _task_arrays(config, s, split_rows(valid_source, max_history, n / len(valid_source)),
                          next_sid, f'{name} valid split')
  return train, valid


def _optimizer(s: SftSetup, config, total_steps: int):
  tx, _ = optim.from_config(config.optim, total_steps)
  top_layers, new_rows_scale = _backbone_options(config, s.language_model is not None)
  if new_rows_scale != 1.0:
    tx = optim.scale_updates(tx, vocab_extension.new_row_lr_scales(
        s.model_config, s.language_model.new_rows_from, new_rows_scale))
  if top_layers >= 0:
    tx = optim.freeze(tx, vocab_extension.trainable_mask(
        s.model_config, s.language_model.new_rows_from, top_layers))
  return tx


def _backbone_options(config, has_backbone: bool) -> tuple[int, float]:
  """(train.trainable_layers, train.new_rows_lr_scale), refused without a backbone."""
  top_layers = config.train.get('trainable_layers', -1)
  new_rows_scale = config.train.get('new_rows_lr_scale', 1.0)
  if not has_backbone and (top_layers >= 0 or new_rows_scale != 1.0):
    raise ValueError(
        f'train.trainable_layers={top_layers} / train.new_rows_lr_scale={new_rows_scale} act '
        "on a pretrained backbone's new SID rows; set model.backbone, or leave them at -1 / 1.0")
  return top_layers, new_rows_scale


def _state_parts(s: SftSetup, config, total_steps: int):
  """(init_params, optimizer) of the SFT train state: `init_params(rng)` is a fresh init, or
  a language model's pretrained parameters (the rng unused)."""
  tx = _optimizer(s, config, total_steps)
  if s.language_model is not None:
    pretrained = s.language_model.params
    return (lambda rng, params: params), tx, pretrained
  if isinstance(s.model_config, encoder_decoder.EncoderDecoderConfig):
    return (lambda rng, params: encoder_decoder.init_params(s.model_config, rng)), tx, None
  seq = config.train.seq_len
  tokens = jnp.zeros((1, seq), jnp.int32)
  mask = sft.segment_causal_mask(jnp.ones((1, seq), jnp.int32))
  return (lambda rng, params: s.model.init(rng, tokens, tokens, mask)['params']), tx, None


def init_state(s: SftSetup, config, total_steps: int, rng, mesh=None) -> state_lib.TrainState:
  """Params and optimizer state; with `mesh`, created in the train step's state sharding
  (`parallel.state_sharding`: replicated, or FSDP)."""
  init, tx, pretrained = _state_parts(s, config, total_steps)
  sharding = None if mesh is None else lambda abstract: parallel.state_sharding(abstract, mesh)
  # Pretrained params enter as an argument: closed over, they would be compiled in as constants.
  return state_lib.create(init, tx, rng, pretrained, sharding=sharding)


def abstract_state(s: SftSetup, config) -> state_lib.TrainState:
  """`init_state`'s shapes and dtypes, computing nothing: the target to restore a checkpoint."""
  init, tx, pretrained = _state_parts(s, config, 1)
  return state_lib.abstract(init, tx, jax.random.key(0), pretrained)


def valid_loss(eval_step, params, packed: dict[str, np.ndarray], batch_size: int,
               mesh) -> float:
  """Mean next-token loss over the supervised tokens of the packed arrays `packed`."""
  sums = {'loss_sum': 0.0, 'weight_sum': 0.0}
  weights = 'target_weights' if 'target_weights' in packed else 'weights'
  for batch in pipeline.array_batches(packed, batch_size, drop_remainder=False):
    batch[weights] = batch[weights] * batch.pop('valid')[:, None]
    out = eval_step(params, parallel.shard_batch(batch, mesh))
    sums = {k: sums[k] + float(out[k]) for k in sums}
  return sums['loss_sum'] / max(sums['weight_sum'], 1.0)


def evaluate(s: SftSetup, params, eval_config: ml_collections.ConfigDict, split: str,
             max_examples: int, keep_predictions: bool = False,
             resume_file: str | None = None) -> generative.EvalResult:
  """Beam search over `split` (its first `max_examples` rows; 0: all) with `eval_config`'s
  beam size, batch size and ks (resumable through `resume_file`: `generative.evaluate`)."""
  return generative.evaluate(s.recommender, params, s.dataset.split(split),
                             beam_size=eval_config.beam_size,
                             batch_size=eval_config.batch_size, ks=eval_config.ks,
                             max_examples=max_examples, split=split,
                             keep_predictions=keep_predictions, resume_file=resume_file)


@dataclasses.dataclass
class _ModelSteps:
  steps: tuple[Any, Any]  # (train step, eval step), pure
  count_params: Any


def _model_steps(s: SftSetup, config) -> tuple[_ModelSteps, dict]:
  """The pure train/eval steps, parameter counter and FLOPs of the setup's model."""
  c = s.model_config
  if isinstance(c, encoder_decoder.EncoderDecoderConfig):
    enc_len = seq2seq.encoder_width(config.data.max_history, s.sids.num_levels,
                                    c.num_user_buckets)
    return (_ModelSteps((seq2seq_steps.make_seq2seq_step(c),
                         seq2seq_steps.make_seq2seq_eval_step(c)), encoder_decoder.count_params),
            encoder_decoder.flops_per_token(c, enc_len, s.sids.num_levels))
  apply_fn = sft.decoder_apply_fn(s.model)
  return (_ModelSteps((sft.make_sft_step(apply_fn), sft.make_sft_eval_step(apply_fn)),
                      decoder_lib.count_params),
          decoder_lib.flops_per_token(c, config.train.seq_len))


def train_flops_per_epoch(flops: dict, config, steps_per_epoch: int) -> float:
  """Matmul FLOPs of one epoch's training steps (`_model_steps`' per-token or per-example
  counts, padding included: every position of a batch is computed)."""
  per_row = flops.get('train_flops_per_example') or (
      flops['train_flops_per_token'] * config.train.seq_len)
  return float(per_row) * steps_per_epoch * config.train.batch_size


def epoch_cost(config: ml_collections.ConfigDict) -> dict:
  """The model's parameter counts, steps per epoch and training FLOPs per epoch under
  `config` (one process), without training: for comparisons at matched compute."""
  s = setup(config)
  train, _ = pack_splits(config, s)
  steps_per_epoch = len(next(iter(train.values()))) // config.train.batch_size
  steps_lib, flops = _model_steps(s, config)
  return {**steps_lib.count_params(s.model_config), 'steps_per_epoch': steps_per_epoch,
          'train_flops_per_epoch': train_flops_per_epoch(flops, config, steps_per_epoch)}


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains, keeps the best checkpoint by config.eval.select_by, evaluates it; returns metrics.

  Multi-host: every process runs this (see minirec_jax/infra/distributed.py) and reads its own slice
  of each epoch; `config.train.batch_size` is the global batch.
  """
  run_lib.check_selection_split(config.eval.split)
  run_lib.reported_splits(config.eval)  # a bad value fails before training, not after
  _backbone_options(config, bool(config.model.backbone))
  run = run_lib.start(config, workdir)
  mesh = run.mesh
  s = setup(config)
  train, valid = pack_splits(config, s)
  batch_size = config.train.batch_size
  local_batch_size = distributed.local_batch_size(batch_size)
  shard = distributed.data_shard()
  num_train = len(next(iter(train.values())))
  per_process = pipeline.examples_per_epoch(num_train, shard['shard_count'])
  steps_per_epoch = per_process // local_batch_size
  if steps_per_epoch == 0:
    raise ValueError(f'{num_train} packed sequences < batch size {batch_size}')
  total_steps = steps_per_epoch * config.train.epochs
  eval_every = config.train.eval_every_steps or steps_per_epoch
  rng = jax.random.key(config.seed)
  state = init_state(s, config, total_steps, rng, mesh)
  steps_lib, flops = _model_steps(s, config)
  counts = steps_lib.count_params(s.model_config)
  logging.info('model %s: %s params; %d packed train sequences, %d steps',
               config.model.variant, counts, num_train, total_steps)

  select_by = config.eval.select_by
  ckpts = run.checkpoints(select_by, best_mode='min' if select_by == 'loss' else 'max')
  data = pipeline.array_batches(train, local_batch_size, seed=config.seed,
                                num_epochs=None, **shard).to_iter_dataset()
  data_iter = iter(data)
  state, _ = run_lib.resume(ckpts, state, data_iter)

  make_step, make_eval_step = steps_lib.steps
  train_step = parallel.jit_data_parallel(make_step, mesh,
                                          state_sharding=parallel.state_sharding(state, mesh),
                                          max_traces=1)  # static batch shapes
  eval_step = jax.jit(make_eval_step)
  run.writer.write(int(state.step), {
      **counts, **flops,
      'train_flops_per_epoch': train_flops_per_epoch(flops, config, steps_per_epoch)},
      prefix='model/')
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
  method = 'TIGER' if is_tiger(config) else 'SFT'
  results = report(config, workdir, s, best_state.params, f'{method} ({config.model.variant})')
  results.update({'best_step': best_step, 'best_valid_during_training': best_metrics})
  return run.finish(total_steps, results)


def report_splits(config: ml_collections.ConfigDict, workdir: str, s: SftSetup,
                  params) -> dict[str, dict]:
  """Beam-search evaluation of the splits of `eval.report_splits` (valid and test by default)
  by `config.eval` (the first `report_max_examples` rows; 0: all; valid's first
  `valid_report_max_examples` when that is >= 0, e.g. a slow model's selection prefix), each
  split's predictions file written into `workdir`; returns {split: metrics}. Also writes the
  SID groups (`predictions.ITEM_GROUPS_FILE`), with which the files' SID-level metrics are
  recomputed.
  Each split's running sums are kept in `<workdir>/eval_<split>.partial.json` until it is done,
  so a killed run resumes its report where it stopped (an LLM's test split takes an hour)."""
  predictions.save_item_groups(os.path.join(workdir, predictions.ITEM_GROUPS_FILE),
                               s.sids.item_to_group)
  results = {}
  valid_rows = config.eval.get('valid_report_max_examples', -1)
  for split in run_lib.reported_splits(config.eval):
    rows = valid_rows if split == 'valid' and valid_rows >= 0 else config.eval.report_max_examples
    result = evaluate(s, params, config.eval, split, rows, keep_predictions=True,
                      resume_file=os.path.join(workdir, f'eval_{split}.partial.json'))
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
  if 'test' in results:
    print(ranking.table1({f'minirec-jax {name}, item level': results['test'],
                          f'minirec-jax {name}, SID level': item_lists.sid_level(results['test'])}))
  return results
