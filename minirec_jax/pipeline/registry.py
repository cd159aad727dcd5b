"""The registry of pipeline stages and results-table rows, and the run order it implies.

A stage is registered once with its name, the stages it reads (`inputs`), how its effective
config is derived from the pipeline config and the workdir (`configure`), and its body (`run`).
A method is one row of the results table: the stage whose folder holds its predictions, its
display name and the item -> SID group map of its SID-level metrics. Planning a
pipeline config into a workdir evaluates all of these and orders the stages so that every stage
runs after the stages it reads; among the stages ready to run, the one registered first goes
first, so the order is deterministic and a registration order that already respects the inputs
is kept as it is. A stage may be optional (`enabled`, a function of the pipeline config): a
disabled stage is not planned, and neither is its table row.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable

import ml_collections
import numpy as np

from minirec_jax.data import loading


# (effective stage config, stage folder, plan) -> outputs summary for DONE.json.
RunFn = Callable[[ml_collections.ConfigDict, str, 'Plan'], dict]
# (plan, dataset) -> int [num_items]: item -> SID group, so items sharing a SID count as one.
ItemGroups = Callable[['Plan', loading.Dataset], np.ndarray]


class StageGraphError(ValueError):
  """The registered stages cannot be ordered: a duplicate name, an unknown input or a cycle."""


@dataclasses.dataclass(frozen=True)
class Context:
  """What a stage's `inputs` and `configure` may look at while a pipeline is planned.

  Attributes:
    config: the pipeline config (read it; a stage's config is a copy of its parts).
    workdir: the pipeline's output folder.
    methods: the registered table rows, in the table's order.
  """

  config: ml_collections.ConfigDict
  workdir: str
  methods: tuple[Method, ...]

  def folder(self, stage: str) -> str:
    """The folder of `stage` in this workdir."""
    return os.path.join(self.workdir, stage)


@dataclasses.dataclass(frozen=True)
class Stage:
  """A planned stage: its effective config, the stages it reads and its body."""

  name: str
  config: ml_collections.ConfigDict
  deps: tuple[str, ...]
  run: RunFn


@dataclasses.dataclass(frozen=True)
class Plan(Context):
  """A planned pipeline: the context plus every stage (name -> Stage) in run order."""

  stages: dict[str, Stage]


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the results table.

  Attributes:
    stage: the stage whose folder holds `predictions_<split>.jsonl` and `results.json`.
    name: the row's display name, or a function of the plan giving it.
    item_groups: the item -> SID groups its ranked item lists are also scored with at SID
      level (`evaluation.item_lists`); None: item level only.
  """

  stage: str
  name: str | Callable[[Plan], str]
  item_groups: ItemGroups | None = None

  def display_name(self, plan: Plan) -> str:
    return self.name if isinstance(self.name, str) else self.name(plan)


@dataclasses.dataclass(frozen=True)
class _StageDef:
  inputs: Callable[[Context], tuple[str, ...]]
  configure: Callable[[Context], ml_collections.ConfigDict]
  run: RunFn
  enabled: Callable[[ml_collections.ConfigDict], bool]


class Registry:
  """Registered stages and methods, in registration order."""

  def __init__(self):
    self._stages: dict[str, _StageDef] = {}
    self._methods: dict[str, Method] = {}

  def register_stage(self, name: str, run: RunFn, *,
                     inputs: tuple[str, ...] | Callable[[Context], tuple[str, ...]] = (),
                     configure: Callable[[Context], ml_collections.ConfigDict] | None = None,
                     enabled: Callable[[ml_collections.ConfigDict], bool] | None = None,
                     ) -> None:
    """Adds a stage.

    Args:
      name: the stage's name, also its folder in the workdir.
      run: (effective config, stage folder, plan) -> outputs summary for DONE.json.
      inputs: the stages it reads, or a function of the context giving them (for inputs that
        depend on the config, e.g. a path left empty and filled with another stage's folder).
      configure: context -> the stage's effective config; by default a copy of the pipeline
        config's section named like the stage.
      enabled: pipeline config -> whether the stage (and its table row) is planned; by default
        always.
    """
    if name in self._stages:
      raise StageGraphError(f'stage {name!r} is registered twice')
    self._stages[name] = _StageDef(
        inputs if callable(inputs) else lambda context: inputs,
        configure or (lambda context: context.config[name].copy_and_resolve_references()), run,
        enabled or (lambda config: True))

  def register_method(self, stage: str, name: str | Callable[[Plan], str],
                      item_groups: ItemGroups | None = None) -> None:
    """Adds a row to the results table, after the rows registered before it (see Method)."""
    if stage in self._methods:
      raise StageGraphError(f'stage {stage!r} already has a row in the results table')
    self._methods[stage] = Method(stage, name, item_groups)

  def copy(self) -> Registry:
    """A registry with the same entries, to extend without changing this one."""
    new = Registry()
    new._stages, new._methods = dict(self._stages), dict(self._methods)
    return new

  def stage_names(self) -> tuple[str, ...]:
    return tuple(self._stages)

  def plan(self, config: ml_collections.ConfigDict, workdir: str) -> Plan:
    """Every enabled stage's effective config and inputs for `config` in `workdir`, in run
    order, and the table rows of those stages."""
    enabled = {name: d for name, d in self._stages.items() if d.enabled(config)}
    context = Context(config, workdir,
                      tuple(m for m in self._methods.values() if m.stage in enabled))
    planned = {name: Stage(name, d.configure(context), tuple(d.inputs(context)), d.run)
               for name, d in enabled.items()}
    order = run_order({name: s.deps for name, s in planned.items()})
    return Plan(config, workdir, context.methods, {name: planned[name] for name in order})


def run_order(inputs: dict[str, tuple[str, ...]]) -> list[str]:
  """Stage names with every stage after its inputs; ties go to the earlier key of `inputs`.

  Raises:
    StageGraphError: a stage reads a stage that is not in `inputs`, or the inputs form a cycle.
  """
  for name, deps in inputs.items():
    unknown = [d for d in deps if d not in inputs]
    if unknown:
      raise StageGraphError(f'stage {name!r} reads {unknown}, which are not registered stages; '
                            f'registered: {list(inputs)}')
  order: list[str] = []
  while len(order) < len(inputs):
    ready = [n for n in inputs if n not in order and all(d in order for d in inputs[n])]
    if not ready:
      raise StageGraphError('the stages read each other in a cycle: ' +
                            ' reads '.join(_cycle(inputs, set(order))))
    order.append(ready[0])
  return order


def _cycle(inputs: dict[str, tuple[str, ...]], placed: set[str]) -> list[str]:
  """A cycle among the unplaced stages, first stage repeated at the end (a -> b -> a)."""
  # Every unplaced stage reads an unplaced one, so following those inputs must loop.
  path = []
  name = next(n for n in inputs if n not in placed)
  while name not in path:
    path.append(name)
    name = next(d for d in inputs[name] if d not in placed)
  return path[path.index(name):] + [name]


# The default registry: MiniOneRec's stages and rows (pipeline/minionerec.py) register here.
REGISTRY = Registry()
register_stage = REGISTRY.register_stage
register_method = REGISTRY.register_method
