"""The end-to-end pipeline: every stage of MiniOneRec in one workdir, resumable.

Stages, in order, each in `<workdir>/<stage>/`:

  dataset       build/open the TFDS dataset; statistics (stats.json)
  embeddings    item text embeddings (MiniLM, or a user .npy) -> embeddings.npy
  semantic_ids  RQ-VAE / RQ-KMeans codes -> collision-free SIDs (semantic_ids/stage.py)
  sft           generative recommender on those SIDs (loops/sft.py)
  sasrec        the SASRec baseline, also the collaborative reward model (loops/sasrec.py)
  grpo          GRPO from the best SFT checkpoint (loops/grpo.py)
  evaluation    test metrics of SFT, GRPO and SASRec on the same test rows, from their
                predictions files; the Table-1 layout in `<workdir>/results.{md,json}`

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
from typing import Callable

from absl import logging
import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data import stats as stats_lib
from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import io_utils
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import sasrec as sasrec_train
from minirec_jax.loops import sft as sft_loop
from minirec_jax.semantic_ids import catalogue
from minirec_jax.semantic_ids import stage as sid_stage

STAGES = ('dataset', 'embeddings', 'semantic_ids', 'sft', 'sasrec', 'grpo', 'evaluation')
DONE_FILE = 'DONE.json'
CONFIG_FILE = 'config.json'
INPUTS_FILE = 'inputs.json'
EMBEDDINGS_FILE = 'embeddings.npy'
RESULTS_FILE = 'results.json'
# The stages whose test predictions make the table's rows, in the table's order.
METHODS = ('sasrec', 'sft', 'grpo')


class StageMismatchError(ValueError):
  """A stage folder was made with another config or from other inputs than the current ones."""


@dataclasses.dataclass(frozen=True)
class Stage:
  """One stage: its effective config, the stages it reads, and `run(config, folder) -> outputs`."""

  name: str
  config: ml_collections.ConfigDict
  deps: tuple[str, ...]
  run: Callable[[ml_collections.ConfigDict, str], dict]


@dataclasses.dataclass
class PipelineResult:
  """status: stage -> 'skipped' | 'ran' | 'resumed'; results: the evaluation's results.json."""

  status: dict[str, str]
  results: dict
  markdown: str


def _config_dict(config: ml_collections.ConfigDict) -> dict:
  """The config as saved in config.json (tuples become lists), for comparisons."""
  return json.loads(config.to_json_best_effort())


def _read_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


# ----------------------------------------------------------------------------------------------
# Stage bodies: (effective stage config, stage folder) -> outputs summary for DONE.json.


def _run_dataset(config, folder: str) -> dict:
  dataset = loading.load(config.data)
  stats = stats_lib.dataset_statistics(dataset)
  io_utils.write_json(os.path.join(folder, 'stats.json'), stats)
  print(stats_lib.format_statistics(stats))
  return {'name': dataset.name, 'data_dir': dataset.builder.data_dir, 'items': stats['items'],
          'rows': {name: s['rows'] for name, s in stats['splits'].items()}}


def _run_embeddings(config, folder: str) -> dict:
  vectors = sid_stage.item_vectors(config, loading.load(config.data))
  with io_utils.atomic_path(os.path.join(folder, EMBEDDINGS_FILE)) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, vectors)
  return {'file': EMBEDDINGS_FILE, 'shape': list(vectors.shape),
          'source': config.embeddings.source}


def _run_semantic_ids(config, folder: str) -> dict:
  return sid_stage.run(config, folder)


def _loop_summary(results: dict) -> dict:
  keep = ('best_step', 'report_step', 'epochs_run', 'best_epoch', 'model')
  return {**{k: results[k] for k in keep if k in results}, 'test': results['test'],
          'results': RESULTS_FILE, 'predictions': 'predictions_test.jsonl'}


def _run_sft(config, folder: str) -> dict:
  return _loop_summary(sft_loop.train_and_evaluate(config, folder))


def _run_sasrec(config, folder: str) -> dict:
  return _loop_summary(sasrec_train.train_sasrec(config, folder))


def _run_grpo(config, folder: str) -> dict:
  return _loop_summary(grpo_loop.train_and_evaluate(config, folder))


# ----------------------------------------------------------------------------------------------
# Evaluation: every method's test metrics on the test rows all of them ranked.


def _rows_by_index(path: str) -> dict[int, dict]:
  rows = {}
  for line, row in enumerate(predictions.read(path), 1):
    if 'sample_index' not in row:
      raise DataError('rows need a sample_index to be matched across methods', path=path,
                      line=line, field='sample_index')
    rows[row['sample_index']] = row
  return rows


def _metrics(rows: list[dict], ks, item_to_group) -> dict[str, float]:
  items, targets = predictions.ranked_arrays(rows)
  ranks = ranking.first_hit_rank(items, targets, item_to_group)
  return ranking.RankCounts.from_ranks(ranks, items.shape[1]).means(ks)


def _checkpoint(stage_results: dict) -> str:
  """Which checkpoint a loop's results.json reports: 'step N', 'epoch N' or ''."""
  for key, unit in (('report_step', 'step'), ('best_step', 'step'), ('best_epoch', 'epoch')):
    if stage_results.get(key) is not None:
      return f'{unit} {stage_results[key]}'
  return ''


def evaluate_methods(method_dirs: dict[str, str], ks, item_groups: dict[str, np.ndarray | None],
                     split: str = 'test') -> dict:
  """Metrics of each method's `predictions_<split>.jsonl` on the rows every method ranked.

  Args:
    method_dirs: method name -> workdir holding its predictions file and results.json.
    ks: cut-offs (K longer than a method's lists are dropped for it).
    item_groups: method name -> item -> SID group (same-SID items count as one), or None.
    split: the split name in the file names.

  Returns:
    {'split', 'rows' (the common rows), 'methods': {name: {'metrics', 'rows_ranked' (rows in
    its file), 'checkpoint' (e.g. 'step 70', from its results.json), 'predictions'}}}.
  """
  ranked = {name: _rows_by_index(os.path.join(d, f'predictions_{split}.jsonl'))
            for name, d in method_dirs.items()}
  common = sorted(set.intersection(*(set(rows) for rows in ranked.values())))
  if not common:
    raise ValueError(f'the {split} predictions of {sorted(method_dirs)} share no sample')
  methods = {}
  for name, rows in ranked.items():
    stage_results = _read_json(os.path.join(method_dirs[name], RESULTS_FILE))
    methods[name] = {
        'metrics': _metrics([rows[i] for i in common], ks, item_groups[name]),
        'rows_ranked': len(rows),
        'checkpoint': _checkpoint(stage_results),
        'predictions': os.path.join(method_dirs[name], f'predictions_{split}.jsonl')}
  return {'split': split, 'rows': len(common), 'methods': methods}


def results_markdown(results: dict) -> str:
  """The results as Markdown: the Table-1 layout, then every K per method."""
  split, n = results['split'], results['rows']
  lines = [f"# Pipeline results: {results['dataset']}", '',
           f'{split.capitalize()} split, the {n:,} rows ranked by every method '
           f"({results['split_rows']:,} in the split). SFT and SFT+GRPO: constrained beam "
           'search (GRPO starts from the SFT model, its step 0); SASRec: full ranking over all '
           'items.', '',
           ranking.table1({name: m['metrics'] for name, m in results['methods'].items()}), '']
  for name, m in results['methods'].items():
    checkpoint = f", checkpoint of {m['checkpoint']}" if m['checkpoint'] else ''
    lines += [f'## {name}', '', f"{m['rows_ranked']:,} rows ranked{checkpoint}; "
              f"predictions: `{m['predictions']}`", '', ranking.full_table(m['metrics']), '']
  return '\n'.join(lines)


def _evaluation_runner(sft_config, folders: dict[str, str]):
  """The evaluation stage body; the SFT config gives the generative methods' SID groups."""

  def run(config, folder: str) -> dict:
    dataset = loading.load(sft_config.data)
    groups = catalogue.load_sids(sft_config.sids, dataset).item_to_group
    names = {stage: _method_name(stage, sft_config) for stage in METHODS}
    results = evaluate_methods({names[s]: folders[s] for s in METHODS}, config.ks,
                               {names[s]: None if s == 'sasrec' else groups for s in METHODS},
                               split=config.split)
    results.update(dataset=dataset.name, split_rows=len(dataset.split(config.split)))
    io_utils.write_json(os.path.join(folder, RESULTS_FILE), results)
    return {'results': RESULTS_FILE, 'rows': results['rows'],
            'metrics': {name: m['metrics'] for name, m in results['methods'].items()}}

  return run


def _method_name(stage: str, sft_config) -> str:
  if stage == 'sasrec':
    return 'SASRec'
  name = 'SFT' if stage == 'sft' else 'SFT+GRPO'
  return f'minirec-jax {name} ({sft_config.model.variant})'


# ----------------------------------------------------------------------------------------------
# Plan, checks, run.


def _copy(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  return config.copy_and_resolve_references()


def stages(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Stage]:
  """The stages with their effective configs: empty paths point at this workdir's stages."""
  folders = {name: os.path.join(workdir, name) for name in STAGES}
  embeddings = ml_collections.ConfigDict({'data': _copy(config.dataset.data),
                                          'embeddings': _copy(config.tokenizer.embeddings)})
  tokenizer = _copy(config.tokenizer)
  tokenizer.embeddings = ml_collections.ConfigDict(
      {'source': 'npy', 'path': os.path.join(folders['embeddings'], EMBEDDINGS_FILE),
       'cache_dir': ''})
  sft = _copy(config.sft)
  sft_deps = ('dataset',)
  if sft.sids.source == 'tokenizer' and not sft.sids.path:
    sft.sids.path, sft_deps = folders['semantic_ids'], ('semantic_ids',)
  grpo = _copy(config.grpo)
  grpo.init_from = grpo.init_from or folders['sft']
  grpo_deps = ('sft',)
  if grpo.grpo.rewards.collab and not grpo.grpo.reward_model:
    grpo.grpo.reward_model, grpo_deps = folders['sasrec'], ('sft', 'sasrec')
  table = (
      Stage('dataset', _copy(config.dataset), (), _run_dataset),
      Stage('embeddings', embeddings, ('dataset',), _run_embeddings),
      Stage('semantic_ids', tokenizer, ('embeddings',), _run_semantic_ids),
      Stage('sft', sft, sft_deps, _run_sft),
      Stage('sasrec', _copy(config.sasrec), ('dataset',), _run_sasrec),
      Stage('grpo', grpo, grpo_deps, _run_grpo),
      Stage('evaluation', _copy(config.evaluation), METHODS,
            _evaluation_runner(sft, folders)),
  )
  return {s.name: s for s in table}


def stage_keys(plan: dict[str, Stage]) -> dict[str, str]:
  """A stage's key: a hash of its config and the keys of the stages it reads."""
  keys = {}
  for name in STAGES:
    s = plan[name]
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


def _later_stages(plan: dict[str, Stage], name: str) -> list[str]:
  """`name` and every stage that reads it, directly or not, in pipeline order."""
  affected = {name}
  for s in STAGES:
    if affected & set(plan[s].deps):
      affected.add(s)
  return [s for s in STAGES if s in affected]


def check_stage(plan: dict[str, Stage], keys: dict[str, str], name: str,
                workdir: str) -> str:
  """'done' (DONE marker), 'resume' (started) or 'new'; raises StageMismatchError."""
  folder = os.path.join(workdir, name)
  problems = []
  config_path = os.path.join(folder, CONFIG_FILE)
  if os.path.isfile(config_path):
    problems += _diff(_read_json(config_path), _config_dict(plan[name].config))
  inputs_path = os.path.join(folder, INPUTS_FILE)
  if os.path.isfile(inputs_path):
    old = _read_json(inputs_path)
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


def _run_stage(s: Stage, keys: dict[str, str], workdir: str) -> None:
  folder = os.path.join(workdir, s.name)
  os.makedirs(folder, exist_ok=True)
  io_utils.write_text(os.path.join(folder, CONFIG_FILE), s.config.to_json_best_effort(indent=2))
  io_utils.write_json(os.path.join(folder, INPUTS_FILE), {d: keys[d] for d in s.deps})
  start = time.perf_counter()
  outputs = s.run(s.config, folder)
  io_utils.write_json(os.path.join(folder, DONE_FILE), {
      'stage': s.name, 'key': keys[s.name],
      'finished_at': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'seconds': round(time.perf_counter() - start, 3), 'outputs': outputs})


def run(config: ml_collections.ConfigDict, workdir: str) -> PipelineResult:
  """Runs every unfinished stage into `workdir`; writes and returns the results table."""
  plan = stages(config, workdir)
  keys = stage_keys(plan)
  # Every folder is checked before any work, so a mismatch costs nothing.
  states = {name: check_stage(plan, keys, name, workdir) for name in STAGES}
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, CONFIG_FILE), config.to_json_best_effort(indent=2))
  status = {}
  for name in STAGES:
    if states[name] == 'done':
      logging.info('stage %s: skipped (finished earlier)', name)
      status[name] = 'skipped'
      continue
    logging.info('stage %s: %s', name, 'resuming' if states[name] == 'resume' else 'starting')
    _run_stage(plan[name], keys, workdir)
    status[name] = 'resumed' if states[name] == 'resume' else 'ran'
  results = _read_json(os.path.join(workdir, 'evaluation', RESULTS_FILE))
  markdown = results_markdown(results)
  io_utils.write_text(os.path.join(workdir, 'results.md'), markdown)
  io_utils.write_json(os.path.join(workdir, RESULTS_FILE), results)
  return PipelineResult(status=status, results=results, markdown=markdown)
