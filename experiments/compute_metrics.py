"""Recomputes the metrics table from a predictions file.

  python experiments/compute_metrics.py --predictions=workdir/predictions_test.jsonl \
      [--ks=1,3,5,10,20,50] [--item_groups=groups.npy] [--output=metrics.json]
"""

import sys

from absl import app
from absl import flags
import numpy as np

from minirec_jax import io_utils
from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import metrics as metrics_lib
from minirec_jax.evaluation import predictions

_PREDICTIONS = flags.DEFINE_string('predictions', None, 'Predictions JSONL file.', required=True)
_KS = flags.DEFINE_list('ks', [str(k) for k in metrics_lib.DEFAULT_KS], 'Cut-offs K.')
_GROUPS = flags.DEFINE_string('item_groups', None,
                              'Optional .npy int array item -> group (items sharing a SID).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  del argv
  try:
    rows = list(predictions.read(_PREDICTIONS.value))
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  if not rows:
    print(f'error: {_PREDICTIONS.value} has no predictions', file=sys.stderr)
    sys.exit(2)
  items, targets = predictions.ranked_arrays(rows)
  groups = np.load(_GROUPS.value) if _GROUPS.value else None
  result = metrics_lib.compute_metrics(items, targets, [int(k) for k in _KS.value], groups)
  print(f'{len(rows)} samples from {_PREDICTIONS.value}')
  print(metrics_lib.full_table(result))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, {'samples': len(rows), **result})


if __name__ == '__main__':
  app.run(main)
