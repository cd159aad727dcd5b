"""Paired comparison of runs against a baseline on the same split (e.g. GRPO vs its SFT start).

  python experiments/compare_runs.py --baseline=workdirs/sft \
      --runs=workdirs/grpo_a,workdirs/grpo_b [--split=test] [--ks=3,5,10] [--level=item|sid] \
      [--output=compare.json]

Reads `<workdir>/predictions_<split>.jsonl` of each run (or a .jsonl / .jsonl.gz file given
directly, e.g. from docs/runs/) and prints, per metric, the baseline value, the run's value and
the paired difference +- its standard error over the shared rows. `--level=item` (default)
compares the ranked item lists; `--level=sid` the ranked SIDs (the official metric: items
sharing a SID count as one), which needs the baseline workdir's item_groups.npy (written by the
generative loops) or --item_groups.
`--baseline=a0,a1,a2 --runs=b0,b1,b2` (one baseline per run, e.g. a variant and the default at
3 seeds) compares each run with its own baseline and adds a last row, the difference averaged
over the pairs (each row's metric averaged over the pairs first; its standard error counts
that all pairs score the same users): the number a "paired valid win averaged over 3 seeds"
rule reads.
`--train_metrics=zero_advantage_groups,kl,entropy` adds a table of training metrics from each
run's metrics.jsonl: the mean over logged steps, and the last value.
"""

import os
import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import compare
from minirec_jax.evaluation import predictions
from minirec_jax.infra import io_utils

_BASELINE = flags.DEFINE_list('baseline', None, 'Baseline workdir or predictions file, or one '
                              'per run (then also their average).', required=True)
_RUNS = flags.DEFINE_list('runs', None, 'Workdirs or predictions files to compare.',
                          required=True)
_SPLIT = flags.DEFINE_string('split', 'test', 'Split whose predictions are compared.')
_KS = flags.DEFINE_list('ks', ['3', '5', '10'], 'Cut-offs K.')
_METRICS = flags.DEFINE_list('metrics', ['hr', 'ndcg'], 'Metric families to print.')
_ITEM_GROUPS = flags.DEFINE_string(
    'item_groups', None, 'Item -> group .npy (items sharing a SID count as one); default: the '
    "baseline workdir's item_groups.npy if present.")
_LEVEL = flags.DEFINE_enum('level', 'item', ['item', 'sid'],
                           'Item-level or SID-level metrics (see evaluation/item_lists.py).')
_TRAIN_METRICS = flags.DEFINE_list(
    'train_metrics', [], "Training metrics (names after 'train/') to summarise per run.")
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  wanted = [f'{m}@{k}' for k in ks for m in _METRICS.value]
  baselines = _BASELINE.value
  if len(baselines) not in (1, len(_RUNS.value)):
    print(f'error: --baseline names {len(baselines)} runs; give one, or one per --runs entry '
          f'({len(_RUNS.value)})', file=sys.stderr)
    sys.exit(1)
  pairs = list(zip(baselines * len(_RUNS.value) if len(baselines) == 1 else baselines,
                   _RUNS.value))
  print('| run | ' + ' | '.join(wanted) + ' |')
  print('|---|' + '---|' * len(wanted))
  results = {}

  def print_row(name, differences):
    diffs = {d.metric: d for d in differences}
    results[name] = {m: vars(diffs[m]) for m in wanted}
    cells = ' | '.join(f'{diffs[m].b:.4f} ({diffs[m].diff:+.4f} +- {diffs[m].stderr:.4f})'
                       for m in wanted)
    print(f'| {name} | {cells} |')

  groups_path = _ITEM_GROUPS.value or os.path.join(baselines[0], predictions.ITEM_GROUPS_FILE)
  try:
    groups = (predictions.load_item_groups(groups_path)
              if _ITEM_GROUPS.value or os.path.exists(groups_path) else None)
    if _LEVEL.value == 'sid' and groups is None:
      raise DataError('--level=sid needs item groups: none next to the baseline, and no '
                      '--item_groups', path=groups_path)
    files = [(compare.predictions_file(a, _SPLIT.value), compare.predictions_file(b, _SPLIT.value))
             for a, b in pairs]
    for (_, run), (file_a, file_b) in zip(pairs, files):
      print_row(run, compare.paired_differences(file_a, file_b, ks, groups, _LEVEL.value))
    if len(baselines) > 1:
      print_row(f'mean of the {len(pairs)} pairs', compare.averaged_paired_differences(
          files, ks, groups, _LEVEL.value))
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(1)
  for baseline in dict.fromkeys(baselines):
    base = results[next(run for a, run in pairs if a == baseline)]
    cells = ' | '.join(f'{base[m]["a"]:.4f}' for m in wanted)
    print(f'| baseline {baseline} | {cells} |')
  train = {}
  if _TRAIN_METRICS.value:
    print('\n| run | ' + ' | '.join(f'{n} (mean / last)' for n in _TRAIN_METRICS.value) + ' |')
    print('|---|' + '---|' * len(_TRAIN_METRICS.value))
    for run in _RUNS.value:
      train[run] = compare.train_summary(run, _TRAIN_METRICS.value)
      print(f'| {run} | ' + ' | '.join(f'{v["mean"]:.4g} / {v["last"]:.4g}'
                                        for v in train[run].values()) + ' |')
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, {'baseline': ','.join(baselines), 'split': _SPLIT.value,
                                        'level': _LEVEL.value,
                                        'runs': results, 'train': train})


if __name__ == '__main__':
  app.run(main)
