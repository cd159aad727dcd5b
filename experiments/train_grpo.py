"""GRPO fine-tuning of an SFT checkpoint.

  python experiments/train_grpo.py --config configs/grpo.py \
      --config.init_from=workdirs/sft_industrial \
      --config.grpo.reward_model=workdirs/sasrec_industrial_recbole \
      --workdir workdirs/grpo_industrial

The default recipe's collaborative reward needs a train_sasrec workdir (`grpo.reward_model`);
`--config.grpo.rewards.collab=0 --config.optim.lr=1e-5` is the official recipe without it.
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import host_memory
from minirec_jax.loops import grpo as grpo_loop

_CONFIG = config_flags.DEFINE_config_file('config', None, 'GRPO config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  grpo_loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
