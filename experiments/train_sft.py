"""SFT of the generative recommender; resumes from the workdir's latest checkpoint.

  python experiments/train_sft.py --config configs/sft.py:dataset=industrial,variant=S \
      --workdir workdirs/sft_industrial [--config.optim.lr=3e-4 ...]
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import host_memory
from minirec_jax.loops import sft as sft_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'SFT config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (checkpoints, metrics).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  sft_loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
