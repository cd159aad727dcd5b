"""Orbax checkpoints: training state plus the data-iterator position, latest and best.

`Checkpoints(folder)` keeps two orbax CheckpointManagers:
  folder/latest  the last `keep` saves, for resuming after a crash or a kill;
  folder/best    the single best save by a validation metric, the stage's output.
Orbax writes each step into a temporary directory and renames it when complete, so a kill
mid-save leaves only complete checkpoints. Restoring something that is not a checkpoint of this
state's structure raises CheckpointError naming the path; nothing is silently re-initialised.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored into the requested structure."""


def _barriers(name: str) -> ocp.options.MultiprocessingOptions:
  # Both managers may save the same step; multi-host, their sync barriers need distinct names.
  return ocp.options.MultiprocessingOptions(barrier_sync_key_prefix=name)


class Checkpoints:
  """Latest-N and best-1 checkpoints of a train state and its data-iterator state."""

  def __init__(self, folder: str | os.PathLike, *, keep: int = 2, best_metric: str | None = None,
               best_mode: str = 'max'):
    self.folder = os.path.abspath(os.fspath(folder))
    self.best_metric = best_metric
    self._latest = ocp.CheckpointManager(
        os.path.join(self.folder, 'latest'),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             multiprocessing_options=_barriers('latest')))
    self._best = None
    if best_metric:
      self._best = ocp.CheckpointManager(
          os.path.join(self.folder, 'best'),
          options=ocp.CheckpointManagerOptions(
              max_to_keep=1, create=True, best_fn=lambda m: m[best_metric],
              best_mode=best_mode, multiprocessing_options=_barriers('best')))

  @staticmethod
  def _args(state, data_state, metrics) -> ocp.args.Composite:
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              data=ocp.args.JsonSave(data_state or {}),
                              metrics=ocp.args.JsonSave(metrics or {}))

  def save(self, step: int, state: Any, *, data_state: dict | None = None,
           metrics: dict | None = None) -> None:
    """Saves to `latest`; also to `best` when `metrics` carries the best metric."""
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    self._replace(self._latest, step)
    self._latest.save(step, args=self._args(state, data_state, metrics), force=True)
    if self._best is not None and self.best_metric in metrics:
      self._replace(self._best, step)
      self._best.save(step, args=self._args(state, data_state, metrics), force=True,
                      metrics=metrics)

  @staticmethod
  def _replace(manager, step: int) -> None:
    # A run killed after saving `step` to one manager but before the next `latest` save
    # resumes earlier and reaches `step` again: the new save replaces the old one.
    if step in manager.all_steps():
      logging.info('replacing checkpoint %s/%d saved by an interrupted run',
                   manager.directory, step)
      manager.delete(step)

  def wait(self) -> None:
    self._latest.wait_until_finished()
    if self._best is not None:
      self._best.wait_until_finished()

  def latest_step(self) -> int | None:
    return self._latest.latest_step()

  def best_step(self) -> int | None:
    return None if self._best is None else self._best.best_step()

  def restore_latest(self, abstract_state: Any) -> tuple[Any, dict, dict] | None:
    """(state, data_state, metrics) of the latest save, or None if there is none."""
    step = self._latest.latest_step()
    if step is None:
      return None
    return self._restore(self._latest, step, abstract_state)

  def restore_best(self, abstract_state: Any) -> tuple[Any, dict, dict]:
    if self._best is None or self._best.best_step() is None:
      raise CheckpointError(f'no best checkpoint under {self.folder}/best')
    return self._restore(self._best, self._best.best_step(), abstract_state)

  def _restore(self, manager, step, abstract_state):
    path = os.path.join(str(manager.directory), str(step))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, abstract_state)
    try:
      restored = manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), data=ocp.args.JsonRestore(),
          metrics=ocp.args.JsonRestore()))
    except Exception as exc:  # orbax raises many types; all mean "cannot use this checkpoint"
      raise CheckpointError(
          f'cannot restore checkpoint {path} into the current model/optimizer state '
          f'({type(exc).__name__}: {str(exc)[:500]}). It is corrupt or from an incompatible '
          'config; delete it or point the run at another workdir.') from exc
    logging.info('restored checkpoint %s', path)
    return restored.state, dict(restored.data or {}), dict(restored.metrics or {})

  def close(self) -> None:
    self.wait()
    self._latest.close()
    if self._best is not None:
      self._best.close()
