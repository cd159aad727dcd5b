"""Copies a predictions file (e.g. into docs/runs/) gzipped, scores rounded, rows validated.

  python experiments/export_predictions.py --predictions=workdirs/sft/predictions_test.jsonl \
      --output=docs/runs/sft_test.jsonl.gz [--decimals=4]

Every metric is recomputable from the copy (`compute_metrics.py --predictions=<copy>`): the
ranked items are unchanged, the scores only rounded.
"""

import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import predictions

_PREDICTIONS = flags.DEFINE_string('predictions', None, 'Predictions JSONL file.',
                                   required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Output .jsonl.gz (or .jsonl).', required=True)
_DECIMALS = flags.DEFINE_integer('decimals', 4, 'Decimals kept of each score.', lower_bound=0)


def main(argv):
  del argv
  try:
    rows = predictions.write(_OUTPUT.value, predictions.rounded(
        predictions.read(_PREDICTIONS.value), _DECIMALS.value))
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(1)
  print(f'{rows} rows -> {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
