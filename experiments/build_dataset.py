"""Builds a dataset (TFDS, array_record) and prints its statistics.

  python experiments/build_dataset.py --config configs/dataset.py:industrial \
      [--config.data.manual_dir=/path/to/official/layout] [--stats_json=out.json]
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.data import loading
from minirec_jax.data import stats as stats_lib
from minirec_jax.data.errors import DataError
from minirec_jax.infra import io_utils

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/dataset.py:ml100k',
                                          'Dataset config.', lock_config=True)
_STATS_JSON = flags.DEFINE_string('stats_json', None, 'Optional path for the statistics JSON.')


def main(argv):
  del argv
  try:
    dataset = loading.load(_CONFIG.value.data)
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  stats = stats_lib.dataset_statistics(dataset)
  print(stats_lib.format_statistics(stats))
  if _STATS_JSON.value:
    io_utils.write_json(_STATS_JSON.value, stats)


if __name__ == '__main__':
  app.run(main)
