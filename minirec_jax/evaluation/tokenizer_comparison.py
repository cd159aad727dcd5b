"""Tokenizers compared by what they are for: the SFT trained on their SIDs, scored on valid.

One row per SFT workdir: its tokenizer's collisions before resolution, code use per level,
reconstruction error and fit time (from the tokenizer workdir's report.json; for the official
SIDs, computed from the table the run trained on, whose collisions stay unresolved), then the
run's item-level metrics on a split and the paired difference against a baseline row (the same
rows, `compare.paired_differences`). Tokenizers are chosen on valid; test is read once, for the
chosen one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Callable, Sequence

import ml_collections

from minirec_jax.data import loading
from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import compare
from minirec_jax.semantic_ids import catalogue
from minirec_jax.semantic_ids import report as report_lib

REPORT_FILE = 'report.json'  # written by semantic_ids/stage.py


@dataclasses.dataclass(frozen=True)
class Row:
  """A compared tokenizer: `tokenizer` holds report.json's 'before' statistics (items,
  collisions, per-level code use) plus 'method', 'recon_error' and 'fit_s' (None when not
  known); `metrics` the SFT run's item-level metrics; `paired` its differences from the
  baseline row (None for the baseline itself)."""

  name: str
  workdir: str
  tokenizer: dict
  metrics: dict[str, float]
  paired: list[compare.PairedDifference] | None


def tokenizer_summary(config: ml_collections.ConfigDict) -> dict:
  """The statistics of the SIDs an SFT config trained on (see Row.tokenizer)."""
  sids = config.sids
  if sids.source == 'tokenizer':
    path = os.path.join(sids.path, REPORT_FILE)
    if not os.path.isfile(path):
      raise DataError('missing tokenizer report (the SFT config names this tokenizer workdir)',
                      path=path)
    with open(path, encoding='utf-8') as f:
      report = json.load(f)
    return {**report['before'], 'method': report.get('method', ''),
            'recon_error': report.get('recon_error'),
            'fit_s': report.get('timing_s', {}).get('fit')}
  table = catalogue.load_sids(sids, loading.load(config.data))
  stats = report_lib.tokenizer_report(table.codes, table.codes, table.codebook_size)
  return {**stats['before'], 'method': sids.source, 'recon_error': None, 'fit_s': None}


def compare_tokenizers(runs: dict[str, str], baseline: str,
                       read_config: Callable[[str], ml_collections.ConfigDict], *,
                       split: str = 'valid', ks: Sequence[int] = (10,)) -> list[Row]:
  """`runs` name -> SFT workdir (each with predictions_<split>.jsonl), in table order;
  `baseline` one of the names; `read_config` reads a workdir's config.json
  (`loops.artifacts.workdir_config`, passed in: loops sit above this layer)."""
  if baseline not in runs:
    raise ValueError(f'baseline {baseline!r} is not one of the runs {list(runs)}')
  files = {name: compare.predictions_file(workdir, split) for name, workdir in runs.items()}
  rows = []
  for name, workdir in runs.items():
    paired = (None if name == baseline
              else compare.paired_differences(files[baseline], files[name], ks))
    rows.append(Row(name, workdir, tokenizer_summary(read_config(workdir)),
                    compare.file_metrics(files[name], ks), paired))
  return rows


def comparison_markdown(rows: Sequence[Row], ks: Sequence[int], split: str = 'valid') -> str:
  """The rows as one Markdown table: tokenizer statistics, then each metric@K with its paired
  difference from the baseline (+- standard error)."""
  metrics = [f'{m}@{k}' for k in ks for m in ('hr', 'ndcg')]
  lines = ['| tokenizer | method | collisions before (items / groups / max) | codes used per '
           'level | entropy / log K | recon MSE | fit s | ' +
           ' | '.join(f'{split} {m}' for m in metrics) + ' |',
           '|---|---|---|---|---|---|---|' + '---|' * len(metrics)]
  for row in rows:
    t = row.tokenizer
    levels = t['levels']
    cells = [row.name, t['method'],
             f"{t['collided_items']} / {t['collision_groups']} / {t['max_group']}",
             ' / '.join(str(level['codes_used']) for level in levels),
             ' / '.join(f"{level['entropy']:.3f}" for level in levels),
             '-' if t['recon_error'] is None else f"{t['recon_error']:.2e}",
             '-' if t['fit_s'] is None else f"{t['fit_s']:.0f}"]
    diffs = {d.metric: d for d in row.paired or ()}
    for m in metrics:
      cell = f'{row.metrics[m]:.4f}'
      if m in diffs:
        cell += f' ({diffs[m].diff:+.4f} +- {diffs[m].stderr:.4f})'
      cells.append(cell)
    lines.append('| ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'
