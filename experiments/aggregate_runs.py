"""Mean and spread of runs' metrics (e.g. seeds of one config) from their results.json.

  python experiments/aggregate_runs.py --runs=workdirs/sft_s0,workdirs/sft_s1,workdirs/sft_s2 \
      [--split=test] [--ks=3,5,10] [--output=summary.json]
  python experiments/aggregate_runs.py --runs=docs/runs/sft_ind_S_letter_s0_test.jsonl.gz,...

A run is a workdir (its results.json) or a predictions file (.jsonl / .jsonl.gz, e.g. the
committed copies under docs/runs/: its item-level metrics are recomputed from the rows).

Prints mean +- sample standard deviation over the runs of each metric at item level, and at
SID level when the runs report it (generative runs: 'sid_' keys), then the standard error of
one run's item-level metric over its rows (from predictions_<split>.jsonl, the mean over the
runs): the yardstick for "within one standard error of a peer".
"""

import json
import os

from absl import app
from absl import flags

from minirec_jax.evaluation import compare
from minirec_jax.evaluation import item_lists
from minirec_jax.infra import io_utils

_RUNS = flags.DEFINE_list('runs', None, 'Workdirs with a results.json.', required=True)
_SPLIT = flags.DEFINE_string('split', 'test', 'Split in results.json.')
_KS = flags.DEFINE_list('ks', ['3', '5', '10'], 'Cut-offs K.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  del argv
  ks = [int(k) for k in _KS.value]
  metrics = []
  for run in _RUNS.value:
    if compare.is_predictions_file(run):
      metrics.append(compare.file_metrics(run, ks))
      continue
    with open(os.path.join(run, 'results.json'), encoding='utf-8') as f:
      metrics.append(json.load(f)[_SPLIT.value])
  summary = compare.mean_and_spread(metrics)
  wanted = [f'{m}@{k}' for k in _KS.value for m in ('hr', 'ndcg', 'mrr')]
  print(f'{len(metrics)} runs, {_SPLIT.value}')
  print('| level | ' + ' | '.join(wanted) + ' |')
  print('|---|' + '---|' * len(wanted))
  for level, prefix in (('item', ''), ('SID', item_lists.SID_PREFIX)):
    if all(prefix + m in summary for m in wanted):
      print(f'| {level} | ' + ' | '.join(
          f'{summary[prefix + m][0]:.4f} +- {summary[prefix + m][1]:.4f}' for m in wanted) + ' |')
  stderr = compare.row_standard_errors(
      [compare.predictions_file(run, _SPLIT.value) for run in _RUNS.value], ks)
  print('| item, s.e. over rows | ' + ' | '.join(f'{stderr[m]:.4f}' for m in wanted) + ' |')
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, {'runs': _RUNS.value, 'split': _SPLIT.value,
                                        'mean_std': summary, 'row_standard_error': stderr})


if __name__ == '__main__':
  app.run(main)
