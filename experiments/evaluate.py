"""Evaluates the best checkpoint of an SFT workdir on valid and test (beam search).

  python experiments/evaluate.py --workdir workdirs/sft_industrial [--config.eval.beam_size=20]
The config defaults to the one the workdir was trained with (config.json).
"""

import json
import os

from absl import app
from absl import flags
import ml_collections
from ml_collections import config_flags

from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.loops import sft as sft_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config (default: the workdir\'s).',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A train_sft workdir.', required=True)


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  config = _CONFIG.value
  if config is None:
    with open(os.path.join(_WORKDIR.value, 'config.json')) as f:
      config = ml_collections.ConfigDict(json.load(f))
  setup = sft_loop.setup(config)
  params = sft_loop.restore_best_params(config, _WORKDIR.value, setup)
  results = sft_loop.report(config, _WORKDIR.value, setup, params)
  io_utils.write_json(os.path.join(_WORKDIR.value, 'eval_results.json'), results)


if __name__ == '__main__':
  app.run(main)
