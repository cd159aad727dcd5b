"""The results table: every method's metrics on the rows all of them ranked, and its Markdown."""

from __future__ import annotations

import json
import os

import numpy as np

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking

RESULTS_FILE = 'results.json'


def read_json(path: str):
  with open(path, encoding='utf-8') as f:
    return json.load(f)


def _rows_by_index(path: str) -> dict[int, dict]:
  rows = {}
  for line, row in enumerate(predictions.read(path), 1):
    if 'sample_index' not in row:
      raise DataError('rows need a sample_index to be matched across methods', path=path,
                      line=line, field='sample_index')
    rows[row['sample_index']] = row
  return rows


def _metrics(rows: list[dict], ks, item_to_group) -> dict[str, float]:
  """Item-level metrics, plus the SID level ('sid_' keys) when the SID groups are known."""
  items, targets = predictions.ranked_arrays(rows)
  counts = item_lists.level_counts(items, targets, item_to_group)
  return counts['item'].means(ks) if item_to_group is None else item_lists.level_means(counts,
                                                                                       ks)


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
    item_groups: method name -> item -> SID group, for its SID-level metrics (items sharing a
      SID count as one), or None (item level only).
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
    stage_results = read_json(os.path.join(method_dirs[name], RESULTS_FILE))
    methods[name] = {
        'metrics': _metrics([rows[i] for i in common], ks, item_groups[name]),
        'rows_ranked': len(rows),
        'checkpoint': _checkpoint(stage_results),
        'predictions': os.path.join(method_dirs[name], f'predictions_{split}.jsonl')}
  return {'split': split, 'rows': len(common), 'methods': methods}


def results_markdown(results: dict) -> str:
  """The results as Markdown: the Table-1 layout at item level and at SID level, then every K
  per method."""
  split, n = results['split'], results['rows']
  methods = results['methods']
  sid = {name: item_lists.sid_level(m['metrics']) for name, m in methods.items()}
  lines = [f"# Pipeline results: {results['dataset']}", '',
           f'{split.capitalize()} split, the {n:,} rows ranked by every method '
           f"({results['split_rows']:,} in the split). SFT and SFT+GRPO: constrained beam "
           'search (GRPO starts from the SFT model, its step 0); SASRec: full ranking over all '
           'items.', '',
           'Item level (primary): each generated SID stands for its items, most popular first.',
           '', ranking.table1({name: m['metrics'] for name, m in methods.items()}), '',
           "SID level (the paper's metric): a generated SID hits every item that shares it; "
           "an item ranker's items are read as their SIDs.", '',
           ranking.table1({name: s for name, s in sid.items() if s}), '']
  for name, m in methods.items():
    checkpoint = f", checkpoint of {m['checkpoint']}" if m['checkpoint'] else ''
    lines += [f'## {name}', '', f"{m['rows_ranked']:,} rows ranked{checkpoint}; "
              f"predictions: `{m['predictions']}`", '', 'Item level:', '',
              ranking.full_table(m['metrics']), '']
    if sid[name]:
      lines += ['SID level:', '', ranking.full_table(sid[name]), '']
  return '\n'.join(lines)
