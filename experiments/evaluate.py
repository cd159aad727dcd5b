"""Evaluates an SFT or GRPO workdir on valid and test (beam search): the checkpoint it reports.

  python experiments/evaluate.py --workdir workdirs/sft_industrial \
      [--config configs/sft.py:dataset=industrial --config.eval.beam_size=20]
The evaluation settings (`eval`) default to the workdir's own (config.json); the model, SIDs
and data always come from the workdir. Writes predictions_{valid,test}.jsonl and
eval_results.json into the workdir.
"""

import os

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.loops import artifacts
from minirec_jax.loops import sft as sft_loop

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config whose eval section to use (default: the workdir\'s).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A train_sft or train_grpo workdir.',
                               required=True)


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  policy = artifacts.load_policy(_WORKDIR.value)
  config = _CONFIG.value or policy.config
  results = sft_loop.report(config, _WORKDIR.value, policy.setup, policy.params, policy.name)
  io_utils.write_json(os.path.join(_WORKDIR.value, 'eval_results.json'), results)


if __name__ == '__main__':
  app.run(main)
