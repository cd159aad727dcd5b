"""Recomputes the ranking metrics of a predictions file and prints them as tables.

  python experiments/compute_metrics.py --predictions=workdirs/sft/predictions_test.jsonl \
      [--ks=1,3,5,10,20,50] [--item_groups=groups.npy] [--output=metrics.json]

The file format is documented in minirec_jax/evaluation/predictions.py. Metrics are item-level
(the ranked item lists as they are); `--item_groups` (an int .npy array item -> SID group, the
item_groups.npy a generative run writes) adds the SID level, where items sharing a SID count
as one (minirec_jax/evaluation/item_lists.py). K longer
than the longest ranked list is dropped, as in the official calc.py. Bad input prints one
error line naming file, line, field and value, and exits with status 1.
"""

import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import io_utils

_PREDICTIONS = flags.DEFINE_string('predictions', None, 'Predictions JSONL file.',
                                   required=True)
_KS = flags.DEFINE_list('ks', [str(k) for k in ranking.DEFAULT_KS], 'Cut-offs K, e.g. 1,5,10.')
_ITEM_GROUPS = flags.DEFINE_string('item_groups', None,
                                   'Optional .npy int array item -> group (items sharing a SID).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON file for the metrics.')

flags.register_validator('ks', lambda ks: all(k.strip().isdigit() and int(k) > 0 for k in ks),
                         message='--ks must be a comma-separated list of positive integers')


def main(argv):
  del argv
  try:
    groups = (predictions.load_item_groups(_ITEM_GROUPS.value) if _ITEM_GROUPS.value
              else None)
    result = predictions.file_metrics(_PREDICTIONS.value, [int(k) for k in _KS.value],
                                      item_to_group=groups)
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(1)
  print(f'{result.samples} samples, ranked lists of up to {result.list_length} items: '
        f'{result.path}')
  if result.dropped_ks:
    print(f'K > {result.list_length} dropped: {", ".join(map(str, result.dropped_ks))}')
  sid = item_lists.sid_level(result.metrics)
  print(ranking.table1({'item level': result.metrics, **({'SID level': sid} if sid else {})}))
  print()
  print(ranking.full_table(result.metrics))
  if sid:
    print('\nSID level:')
    print(ranking.full_table(sid))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result.to_json())


if __name__ == '__main__':
  app.run(main)
