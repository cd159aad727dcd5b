"""What every host loop does around its training: the workdir, the mesh, checkpoints, metric
logs, and at the end the predictions files and results.json.

A loop calls `start` (config.json, mesh, metric writer), opens its checkpoints with
`Run.checkpoints` and `resume`s from the latest, trains, takes its reported parameters with
`restore_best`, writes `write_predictions` per split and closes with `Run.finish`
(results.json, the final test metrics). These are plain functions on a plain dataclass: the
loop itself still reads top to bottom.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable

from absl import logging
import jax
from jax.sharding import Mesh
import ml_collections

from minirec_jax.evaluation import predictions
from minirec_jax.infra import checkpointing
from minirec_jax.infra import distributed
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.training import parallel

CONFIG_FILE = 'config.json'
RESULTS_FILE = 'results.json'
CHECKPOINTS_DIR = 'checkpoints'


def check_selection_split(split: str) -> None:
  """Refuses to choose checkpoints on the test split: a test number that selection has seen
  is no longer an estimate of test performance. Test is evaluated once, on the chosen
  checkpoint, at the end of every loop."""
  if split == 'test':
    raise ValueError("eval.split='test': checkpoints are chosen on the valid split only; test "
                     'is evaluated once, at the end, on the chosen checkpoint')


REPORT_SPLITS = ('valid', 'test')


def reported_splits(eval_config: ml_collections.ConfigDict) -> tuple[str, ...]:
  """The splits a loop's final report decodes, in REPORT_SPLITS order: `eval.report_splits`
  (default both). Ablations set ('valid',), so that test is not even decoded while a recipe
  or a tokenizer is still being chosen."""
  splits = tuple(eval_config.get('report_splits', REPORT_SPLITS))
  if not splits or len(set(splits)) != len(splits) or not set(splits) <= set(REPORT_SPLITS):
    raise ValueError(f'eval.report_splits must be a non-empty subset of {REPORT_SPLITS} '
                     f'without repeats, got {splits!r}')
  return tuple(split for split in REPORT_SPLITS if split in splits)


def write_predictions(workdir: str, split: str, rows: Iterable[dict]) -> None:
  """`workdir/predictions_<split>.jsonl`, validated and written atomically."""
  predictions.write(os.path.join(workdir, f'predictions_{split}.jsonl'), rows)


@dataclasses.dataclass
class Run:
  """An open run: its workdir, device mesh and metric writer (which writes on process 0)."""

  config: ml_collections.ConfigDict
  workdir: str
  mesh: Mesh
  writer: metric_logging.MetricWriter

  def path(self, name: str) -> str:
    return os.path.join(self.workdir, name)

  def checkpoints(self, best_metric: str, best_mode: str = 'max') -> checkpointing.Checkpoints:
    """The run's latest-`config.ckpt.keep` and best-by-`best_metric` checkpoints."""
    return checkpointing.Checkpoints(self.path(CHECKPOINTS_DIR), keep=self.config.ckpt.keep,
                                     best_metric=best_metric, best_mode=best_mode)

  def finish(self, step: int, results: dict) -> dict:
    """Writes results.json, logs its test metrics (if reported) as `final_test/` and closes
    the writer."""
    io_utils.write_json(self.path(RESULTS_FILE), results)
    if 'test' in results:
      self.writer.write(step, results['test'], prefix='final_test/')
    self.writer.close()
    return results


def start(config: ml_collections.ConfigDict, workdir: str) -> Run:
  """Joins the other processes (multi-host), writes `workdir/config.json`, makes the mesh
  (`config.mesh.num_devices`, 0 for all; `config.mesh.fsdp` where the config has it) and the
  metric writer."""
  distributed.initialize()
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  # Configs without mesh.fsdp (SASRec, GRPO, SFT written before FSDP): plain data parallelism.
  mesh = parallel.make_mesh(config.mesh.num_devices or None, fsdp=config.mesh.get('fsdp', 1))
  writer = metric_logging.MetricWriter(workdir, tensorboard=config.log.tensorboard,
                                       enabled=jax.process_index() == 0)
  return Run(config, workdir, mesh, writer)


def resume(ckpts: checkpointing.Checkpoints, tree: Any,
           data_iter: Any = None) -> tuple[Any, dict | None]:
  """`tree` restored from the latest checkpoint and `data_iter` (a Grain iterator) moved to
  its saved position; returns (tree, saved data state), or (tree, None) when there is none."""
  restored = ckpts.restore_latest(tree)
  if restored is None:
    return tree, None
  tree, data_state, _ = restored
  if data_iter is not None:
    data_iter.set_state(data_state)
  logging.info('resumed at step %d', ckpts.latest_step())
  return tree, data_state


def restore_best(ckpts: checkpointing.Checkpoints, tree: Any) -> tuple[Any, int, dict]:
  """Waits for pending saves, restores the best checkpoint into `tree`'s structure and closes
  `ckpts`; returns (tree, its step, its validation metrics)."""
  ckpts.wait()
  best, _, metrics = ckpts.restore_best(tree)
  step = ckpts.best_step()
  ckpts.close()
  return best, step, metrics
