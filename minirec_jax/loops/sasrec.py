"""The SASRec / baseline host loop: split arrays, epochs of jitted steps, full-ranking evaluation.

`config.model.variant` picks the model (`minirec_jax.training.sasrec`: official, recbole, bpr,
pop). The loop jits the pure step with `parallel.jit_data_parallel`, trains epoch by epoch,
evaluates on valid by full ranking over all items (history items are NOT masked, as in the
official evaluation and RecBole's sequential models), keeps the best checkpoint by
`config.eval.select_by`, stops early after more than `config.train.patience` evaluations without
improvement, and finally evaluates the best parameters on valid and test (metrics at
`config.eval.ks`, top-`config.eval.top_k` predictions file for test, results.json).

Batches are slices of in-memory split arrays (`row_batches`): one numpy gather per batch,
where a Grain index pipeline pays Python overhead per example, a large share of a step at
SASRec's size. Workdir setup, resuming and the final files follow `loops.run`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import math
import time
from typing import Callable, Iterator

from absl import logging
import jax
import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data import pipeline
from minirec_jax.data import sasrec_packing
from minirec_jax.evaluation import predictions as predictions_lib
from minirec_jax.evaluation import ranking
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.loops import run as run_lib
from minirec_jax.models import baselines
from minirec_jax.training import parallel
from minirec_jax.training import sasrec as sasrec_steps
from minirec_jax.training import state as state_lib
from minirec_jax.training.state import TrainState

_COLUMNS = ('history', 'history_len', 'target', 'user')
MODEL_FILE = 'model.json'  # the ranker's description; for SASRec, its model config

# ----------------------------------------------------------------------------------------------
# Data: whole splits as padded numpy arrays (they are small; batches are then cheap slices).


@dataclasses.dataclass
class SplitArrays:
  """One split as arrays: history [n, H] (-1 padded), history_len, target, user [n]."""

  history: np.ndarray
  history_len: np.ndarray
  target: np.ndarray
  user: np.ndarray
  user_ids: list[str]

  def __len__(self) -> int:
    return len(self.target)

  @functools.cached_property
  def prefix_groups(self) -> np.ndarray:
    """`[n]`: rows whose histories are prefixes of one history share a group id."""
    return sasrec_packing.prefix_representatives(self.history, self.history_len)

  def columns(self, with_index: bool = False) -> dict[str, np.ndarray]:
    out = {name: getattr(self, name) for name in _COLUMNS}
    if with_index:
      out['index'] = np.arange(len(self), dtype=np.int32)
    return out


def read_split(source, max_history: int) -> SplitArrays:
  """Reads every row of a split; histories keep their last `max_history` items; user = -1."""
  examples = source.__getitems__(list(range(len(source))))
  n = len(examples)
  history = np.full((n, max_history), pipeline.PAD_ITEM, np.int32)
  lengths = np.zeros((n,), np.int32)
  for row, example in enumerate(examples):
    items = np.asarray(example['history'], np.int32)[-max_history:]
    history[row, :len(items)] = items
    lengths[row] = len(items)
  return SplitArrays(
      history=history, history_len=lengths,
      target=np.asarray([e['target'] for e in examples], np.int32).reshape(n),
      user=np.full((n,), -1, np.int32), user_ids=[e['user_id'].decode() for e in examples])


def index_users(splits: dict[str, SplitArrays]) -> int:
  """Sets `user` of every split to contiguous ids of the TRAIN users (first-seen order; -1 for
  users without training rows); returns the number of train users."""
  index: dict[str, int] = {}
  for user in splits['train'].user_ids:
    index.setdefault(user, len(index))
  for arrays in splits.values():
    arrays.user = np.asarray([index.get(u, -1) for u in arrays.user_ids], np.int32)
  return len(index)


class BatchPacker:
  """Packs training batches on the host into row counts that are multiples of `row_multiple`.

  Bucketed (default): each batch gets the fewest rows it needs, rounded up to `row_multiple`,
  so the step computes little padding; every distinct count compiles the step once (on
  MovieLens-100K LOO about ten counts, 1,024-1,536 rows, against 1,536 for every batch when
  fixed). `fixed_rows`: one count for all batches, the largest seen so far (it only grows; one
  compilation once `warm_up` has seen the epochs to come). `examples` keeps one packed batch
  per row count seen, so a caller can compile every shape before timing anything.
  """

  def __init__(self, pack: Callable[[dict, int, int], dict], row_multiple: int,
               fixed_rows: bool = False):
    self._pack = pack
    self.row_multiple = row_multiple
    self.fixed_rows = fixed_rows
    self.rows = 0
    self.examples: dict[int, dict] = {}

  def __call__(self, batch: dict) -> dict:
    packed = self._pack(batch, self.row_multiple, self.rows if self.fixed_rows else 0)
    rows = len(packed['tokens'])
    self.rows = max(self.rows, rows)
    self.examples.setdefault(rows, packed)
    return packed

  def warm_up(self, batches) -> None:
    for batch in batches:
      self(batch)



# ----------------------------------------------------------------------------------------------
# Host side: setup, epochs, evaluation, the loop.


@dataclasses.dataclass
class Setup:
  dataset: loading.Dataset
  splits: dict[str, SplitArrays]
  ranker: sasrec_steps.Ranker
  num_items: int


def setup(config: ml_collections.ConfigDict) -> Setup:
  variant = config.model.variant
  if variant not in sasrec_steps.VARIANTS:
    raise ValueError(f'unknown model.variant {variant!r}; '
                     f'choose one of {sasrec_steps.VARIANTS}')
  dataset = loading.load(config.data)
  splits = {name: read_split(dataset.split(name), config.data.max_history)
            for name in ('train', 'valid', 'test')}
  num_users = index_users(splits)
  n = dataset.num_items
  if variant in sasrec_steps.SASREC_VARIANTS:
    ranker = sasrec_steps.sasrec_ranker(sasrec_steps.sasrec_config(config, n),
                                        pack=config.train.pack,
                                        share_prefixes=shares_prefixes(config))
  elif variant == 'bpr':
    bpr = baselines.BPRConfig(num_items=n, num_users=num_users, dim=config.model.dim,
                              user_repr=config.model.user_repr)
    ranker = sasrec_steps.bpr_ranker(bpr, config.data.max_history)
  else:
    ranker = sasrec_steps.pop_ranker(splits['train'].target, n)
  return Setup(dataset, splits, ranker, n)


def init_state(s: Setup, config: ml_collections.ConfigDict, mesh) -> TrainState:
  """Params and optimizer state, created replicated on `mesh` (the step's state sharding, so
  the first step does not compile a second time for a differently placed state)."""
  tx = sasrec_steps.optimizer(config.optim)
  return state_lib.create(s.ranker.init, tx, jax.random.key(config.seed),
                          sharding=parallel.replicated(mesh))


def _check_divisible(batch_size: int, mesh, what: str) -> None:
  if batch_size % mesh.size:
    raise ValueError(f'{what} {batch_size} is not divisible by the {mesh.size} devices')


def row_batches(columns: dict[str, np.ndarray], batch_size: int,
                order: np.ndarray | None = None) -> Iterator[dict[str, np.ndarray]]:
  """Batches of rows (in `order`, default file order) of equally long arrays.

  The last batch is filled up to `batch_size` with copies of its first row and every batch
  has `valid` (bool `[batch_size]`) marking the real rows, so all batches have one shape.
  """
  n = len(next(iter(columns.values())))
  order = np.arange(n) if order is None else np.asarray(order)
  for start in range(0, n, batch_size):
    rows = order[start:start + batch_size]
    real = len(rows)
    rows = np.concatenate([rows, np.repeat(rows[:1], batch_size - real)])
    batch = {name: values[rows] for name, values in columns.items()}
    batch['valid'] = np.arange(batch_size) < real
    yield batch


def epoch_order(n: int, *, seed: int, epoch: int, groups: np.ndarray | None = None) -> np.ndarray:
  """A permutation of n rows fixed by (seed, epoch); with `groups` (int `[n]`), the groups are
  shuffled as units and each group's rows stay together (in shuffled order)."""
  rng = np.random.default_rng((seed, epoch))
  if groups is None:
    return rng.permutation(n)
  _, group = np.unique(groups, return_inverse=True)
  group_rank = rng.permutation(group.max() + 1)[group]
  return np.lexsort((rng.random(n), group_rank))


def epoch_batches(train: SplitArrays, *, batch_size: int, seed: int, epoch: int,
                  max_steps: int = 0,
                  group_prefixes: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """The training batches of one epoch: shuffled by (seed, epoch), last one padded.

  `group_prefixes`: histories that are prefixes of one history (e.g. one user's first rows)
  are kept in the same batches, so that prefix sharing (`sasrec_packing.pack`) finds them. This
  shuffles chains of rows rather than rows: every row is still seen once per epoch.
  """
  order = epoch_order(len(train), seed=seed, epoch=epoch,
                      groups=train.prefix_groups if group_prefixes else None)
  return itertools.islice(row_batches(train.columns(), batch_size, order), max_steps or None)


def shares_prefixes(config: ml_collections.ConfigDict) -> bool:
  """Whether training packs prefix histories into their extension's segment (and so keeps
  them in the same batches)."""
  return bool(config.model.variant in sasrec_steps.SASREC_VARIANTS and config.train.pack
              and config.train.share_prefixes)


def make_packer(ranker: sasrec_steps.Ranker, config: ml_collections.ConfigDict,
                mesh) -> BatchPacker | None:
  """The ranker's batch packer (row counts a multiple of the device count), or None."""
  if ranker.pack is None:
    return None
  return BatchPacker(ranker.pack, math.lcm(config.train.pack_row_multiple, mesh.size),
                     fixed_rows=config.train.pack_fixed_rows)


def train_epoch(step_fn: Callable, state: TrainState, train: SplitArrays, *, batch_size: int,
                seed: int, epoch: int, mesh, rng: jax.Array, max_steps: int = 0,
                packer: BatchPacker | None = None,
                group_prefixes: bool = False) -> tuple[TrainState, dict[str, float]]:
  """One shuffled pass (order fixed by seed and epoch); returns mean loss and timings.

  `packer` rewrites each batch on the host before it goes to the devices; `group_prefixes`
  as in `epoch_batches`.
  """
  start = time.perf_counter()
  losses = []
  for batch in epoch_batches(train, batch_size=batch_size, seed=seed, epoch=epoch,
                             max_steps=max_steps, group_prefixes=group_prefixes):
    if packer is not None:
      batch = packer(batch)
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh), rng)
    losses.append(metrics['loss'])  # stays on device: no sync per step
  losses = np.asarray(jax.device_get(losses))
  seconds = time.perf_counter() - start
  return state, {'loss': float(losses.mean()), 'steps': len(losses), 'epoch_seconds': seconds,
                 'examples_per_s': len(losses) * batch_size / seconds}


def evaluate(eval_fn: Callable, params, arrays: SplitArrays, *, batch_size: int,
             ks, mesh, split: str = '', keep_predictions: bool = False):
  """Full-ranking metrics of one split (exact counts); optionally prediction rows."""
  totals, rows = ranking.RankCounts.zeros(), []
  for batch in row_batches(arrays.columns(with_index=True), batch_size):
    index = batch.pop('index')
    items, scores, metrics = eval_fn(params, parallel.shard_batch(batch, mesh))
    totals = totals + ranking.RankCounts.from_batch(jax.device_get(metrics))
    if keep_predictions:
      items, scores = jax.device_get((items, scores))
      for r in np.flatnonzero(batch['valid']):
        i = int(index[r])
        rows.append(predictions_lib.make_row(arrays.user_ids[i], arrays.target[i], items[r],
                                             scores[r], sample_index=i, split=split))
  metrics = totals.means(ks)
  metrics['examples'] = len(arrays)
  return metrics, rows


def _model_name(config) -> str:
  variant = config.model.variant
  if variant == 'bpr':
    return f'BPR-MF (user = {config.model.user_repr})'
  return {'official': 'SASRec (official MiniOneRec config)',
          'recbole': 'SASRec (RecBole defaults)', 'pop': 'Most popular'}[variant]


def train_sasrec(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (unless variant == 'pop'), evaluates the best params; returns results.json."""
  run = run_lib.start(config, workdir)
  s = setup(config)
  io_utils.write_json(run.path(MODEL_FILE), s.ranker.description)
  _check_divisible(config.eval.batch_size, run.mesh, 'eval.batch_size')
  top_k = min(config.eval.top_k, s.num_items)
  reported = [f'{m}@{k}' for m in ranking.METRIC_NAMES
              for k in ranking.usable_ks(config.eval.ks, top_k)]
  if config.model.variant != 'pop' and config.eval.select_by not in reported:
    raise ValueError(f'eval.select_by={config.eval.select_by!r} is not among the reported '
                     f'metrics {reported}; adjust eval.ks, eval.top_k or eval.select_by')
  eval_fn = sasrec_steps.make_eval_fn(s.ranker, top_k)
  logging.info('%s: %d params, %d items, train/valid/test rows %d/%d/%d', _model_name(config),
               s.ranker.description['num_params'], s.num_items,
               *(len(s.splits[n]) for n in ('train', 'valid', 'test')))
  eval_kwargs = dict(batch_size=config.eval.batch_size, ks=config.eval.ks, mesh=run.mesh)

  training = {}
  if config.model.variant == 'pop':
    params = s.ranker.init(None)
  else:
    params, training = _train(config, run, s, eval_fn, eval_kwargs)

  results = {'model': _model_name(config), 'variant': config.model.variant,
             'num_params': s.ranker.description['num_params'], **training}
  for split in ('valid', 'test'):
    metrics, rows = evaluate(eval_fn, params, s.splits[split], split=split,
                             keep_predictions=split == 'test', **eval_kwargs)
    results[split] = metrics
    if rows:
      run_lib.write_predictions(workdir, split, rows)
    print(f'--- {split} ({metrics["examples"]} samples, full ranking over {s.num_items} '
          'items) ---')
    print(ranking.full_table(metrics))
  print(ranking.table1({f'minirec-jax {_model_name(config)}': results['test']}))
  return run.finish(training.get('steps', 0), results)


def _train(config, run: run_lib.Run, s: Setup, eval_fn, eval_kwargs):
  """The epoch loop with early stopping; returns (best params, training summary)."""
  batch_size = config.train.batch_size
  mesh = run.mesh
  _check_divisible(batch_size, mesh, 'train.batch_size')
  state = init_state(s, config, mesh)
  select_by = config.eval.select_by
  ckpts = run.checkpoints(select_by)
  state, restored = run_lib.resume(ckpts, state)
  progress = restored or {'epoch': 0, 'best': -1.0, 'best_epoch': -1, 'since_best': 0}
  packer = make_packer(s.ranker, config, mesh)
  # One shape per packed row count (a multiple of the packer's, at most one row per sample).
  max_traces = -(-batch_size // packer.row_multiple) if packer is not None else 1
  step_fn = parallel.jit_data_parallel(
      sasrec_steps.make_train_step(s.ranker, config.train.loss, s.num_items), mesh,
      max_traces=max_traces)
  rng = jax.random.key(config.seed + 1)
  group = shares_prefixes(config)
  if packer is not None and packer.fixed_rows:
    # The largest packed batch of the first epoch to train fixes the row count up front.
    packer.warm_up(epoch_batches(s.splits['train'], batch_size=batch_size, seed=config.seed,
                                 epoch=progress['epoch'],
                                 max_steps=config.train.max_steps_per_epoch,
                                 group_prefixes=group))
  epoch_seconds = []
  bar = metric_logging.Progress(config.train.epochs, 'sasrec', unit='epoch',
                                start=progress['epoch'])
  while (progress['epoch'] < config.train.epochs and
         progress['since_best'] <= config.train.patience):
    epoch = progress['epoch']
    state, train_metrics = train_epoch(step_fn, state, s.splits['train'], batch_size=batch_size,
                                       seed=config.seed, epoch=epoch, mesh=mesh, rng=rng,
                                       max_steps=config.train.max_steps_per_epoch,
                                       packer=packer, group_prefixes=group)
    metric_logging.check_finite(int(state.step), train_metrics)
    epoch_seconds.append(train_metrics['epoch_seconds'])
    step = int(state.step)
    run.writer.write(step, {**train_metrics, 'epoch': epoch + 1}, prefix='train/')
    progress['epoch'] = epoch + 1
    bar.update()
    if progress['epoch'] % config.train.eval_every_epochs and (
        progress['epoch'] < config.train.epochs):
      continue
    valid, _ = evaluate(eval_fn, state.params, s.splits['valid'], **eval_kwargs)
    run.writer.write(step, valid, prefix='valid/')
    improved = valid[select_by] > progress['best']
    if improved:
      progress.update(best=valid[select_by], best_epoch=epoch + 1, since_best=0)
    else:
      progress['since_best'] += 1
    logging.info('epoch %d: loss %.4f (%.1f s), valid %s %.4f (best %.4f @ epoch %d)',
                 epoch + 1, train_metrics['loss'], train_metrics['epoch_seconds'], select_by,
                 valid[select_by], progress['best'], progress['best_epoch'])
    # `latest` every evaluation (resume); `best` only when it changes (metrics passed).
    ckpts.save(step, state, data_state=progress, metrics=valid if improved else None)
  bar.close()
  best_state, _, best_metrics = run_lib.restore_best(ckpts, state)
  summary = {'epochs_run': progress['epoch'], 'best_epoch': progress['best_epoch'],
             'steps': int(state.step), 'best_valid_during_training': best_metrics,
             'train_seconds_per_epoch': float(np.mean(epoch_seconds)) if epoch_seconds else None,
             'stopped_early': progress['since_best'] > config.train.patience}
  return best_state.params, summary
