"""Checks, runs and resumes the planned stages in one workdir, then writes the results table.

Each stage folder holds `config.json` (its effective config), `inputs.json` (the keys of the
stages it reads from) and, once finished, `DONE.json` (written last, atomically: finish time,
seconds, outputs summary). A re-run skips stages with a DONE marker and re-runs the others; the
training loops resume from their latest checkpoint. A stage folder whose config or inputs differ
from the current ones is an error naming the fields and the folders to delete, because resuming
or reusing it would silently mix two configurations.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import json
import os
import time

import ml_collections

from minirec_jax.infra import console
from minirec_jax.infra import io_utils
from minirec_jax.pipeline import minionerec
from minirec_jax.pipeline import registry
from minirec_jax.pipeline import results as results_lib

DONE_FILE = 'DONE.json'
CONFIG_FILE = 'config.json'
INPUTS_FILE = 'inputs.json'


class StageMismatchError(ValueError):
  """A stage folder was made with another config or from other inputs than the current ones."""


@dataclasses.dataclass
class PipelineResult:
  """status: stage -> 'skipped' | 'ran' | 'resumed'; seconds: stage -> its wall time from its
  DONE.json (a skipped stage: the run that finished it); results: the evaluation's
  results.json."""

  status: dict[str, str]
  seconds: dict[str, float]
  results: dict
  markdown: str

  def timings_markdown(self) -> str:
    """The stages' wall times as a markdown table, with their total."""
    lines = ['| stage | this run | seconds |', '|---|---|---:|']
    lines += [f'| {name} | {self.status[name]} | {seconds:.0f} |'
              for name, seconds in self.seconds.items()]
    lines.append(f'| total | | {sum(self.seconds.values()):.0f} |')
    return '\n'.join(lines)


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as saved in config.json (tuples become lists), for comparisons."""
  return json.loads(config.to_json_best_effort())


def stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, registry.Stage]:
  """The registered stages with their effective configs, in run order."""
  return registry.REGISTRY.plan(config, workdir).stages


def stage_keys(plan: dict[str, registry.Stage]) -> dict[str, str]:
  """A stage's key: a hash of its config and the keys of the stages it reads (`plan` in order)."""
  keys = {}
  for name, s in plan.items():
    blob = json.dumps({'config': _config_dict(s.config),
                       'inputs': {d: keys[d] for d in s.deps}}, sort_keys=True)
    keys[name] = hashlib.sha256(blob.encode('utf-8')).hexdigest()[:16]
  return keys


def _diff(old, new, prefix: str = '') -> list[str]:
  """Dotted paths where two JSON trees differ, as 'path: old -> new'."""
  if isinstance(old, dict) and isinstance(new, dict):
    out = []
    for key in sorted(set(old) | set(new)):
      out += _diff(old.get(key, '<absent>'), new.get(key, '<absent>'), f'{prefix}{key}.')
    return out
  return [] if old == new else [f'{prefix[:-1]}: {old!r} -> {new!r}']


def _later_stages(plan: dict[str, registry.Stage], name: str) -> list[str]:
  """`name` and every stage that reads it, directly or not, in run order."""
  affected = {name}
  for s in plan.values():
    if affected & set(s.deps):
      affected.add(s.name)
  return [s for s in plan if s in affected]


def check_stage(plan: dict[str, registry.Stage], keys: dict[str, str], name: str,
                workdir: str) -> str:
  """'done' (DONE marker), 'resume' (started) or 'new'; raises StageMismatchError."""
  folder = os.path.join(workdir, name)
  problems = []
  config_path = os.path.join(folder, CONFIG_FILE)
  if os.path.isfile(config_path):
    problems += _diff(results_lib.read_json(config_path), _config_dict(plan[name].config))
  inputs_path = os.path.join(folder, INPUTS_FILE)
  if os.path.isfile(inputs_path):
    old = results_lib.read_json(inputs_path)
    problems += [f'input stage {d!r} changed' for d in sorted(set(old) | set(plan[name].deps))
                 if old.get(d) != keys.get(d)]
  if problems:
    stale = [os.path.join(workdir, s) for s in _later_stages(plan, name)
             if os.path.isdir(os.path.join(workdir, s))]
    raise StageMismatchError(
        f'stage {name!r} in {folder} was made with another config or inputs:\n  ' +
        '\n  '.join(problems[:20]) + ('\n  ...' if len(problems) > 20 else '') +
        '\nUse a new --workdir, or delete that stage and the stages after it: rm -r ' +
        ' '.join(stale))
  if os.path.isfile(os.path.join(folder, DONE_FILE)):
    return 'done'
  return 'resume' if os.path.isfile(config_path) else 'new'


def _run_stage(s: registry.Stage, keys: dict[str, str], plan: registry.Plan) -> None:
  folder = plan.folder(s.name)
  os.makedirs(folder, exist_ok=True)
  io_utils.write_text(os.path.join(folder, CONFIG_FILE), s.config.to_json_best_effort(indent=2))
  io_utils.write_json(os.path.join(folder, INPUTS_FILE), {d: keys[d] for d in s.deps})
  start = time.perf_counter()
  outputs = s.run(s.config, folder, plan)
  seconds = time.perf_counter() - start
  io_utils.write_json(os.path.join(folder, DONE_FILE), {
      'stage': s.name, 'key': keys[s.name],
      'finished_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'seconds': round(seconds, 3), 'outputs': outputs})
  console.info('stage %s: done in %.0f s', s.name, seconds)


def run(config: ml_collections.ConfigDict, workdir: str) -> PipelineResult:
  """Runs every unfinished registered stage into `workdir`; writes and returns the results table."""
  plan = registry.REGISTRY.plan(config, workdir)
  keys = stage_keys(plan.stages)
  # Every folder is checked before any work, so a mismatch costs nothing.
  states = {name: check_stage(plan.stages, keys, name, workdir) for name in plan.stages}
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  status = {}
  for i, (name, s) in enumerate(plan.stages.items(), 1):
    step = f'{i}/{len(plan.stages)}'
    if states[name] == 'done':
      console.info('stage %s %s: skipped (finished earlier)', step, name)
      status[name] = 'skipped'
      continue
    console.info('stage %s %s: %s', step, name,
                 'resuming' if states[name] == 'resume' else 'starting')
    _run_stage(s, keys, plan)
    status[name] = 'resumed' if states[name] == 'resume' else 'ran'
  seconds = {name: results_lib.read_json(os.path.join(plan.folder(name), DONE_FILE))['seconds']
             for name in plan.stages}
  results = results_lib.read_json(
      os.path.join(plan.folder(minionerec.EVALUATION), results_lib.RESULTS_FILE))
  markdown = results_lib.results_markdown(results)
  io_utils.write_text(os.path.join(workdir, 'results.md'), markdown)
  io_utils.write_json(os.path.join(workdir, results_lib.RESULTS_FILE), results)
  return PipelineResult(status=status, seconds=seconds, results=results, markdown=markdown)
