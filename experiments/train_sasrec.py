"""SASRec (official or RecBole configuration) and the classic baselines (pop, bpr).

  python experiments/train_sasrec.py --config configs/sasrec.py:dataset=industrial,variant=recbole \
      --workdir workdirs/sasrec_industrial_recbole [--config.train.batch_size=1024 ...]

variant=official|recbole|bpr|pop (see configs/sasrec.py). Resumes from the workdir's latest
checkpoint; writes config.json, model.json, metrics.jsonl, predictions_test.jsonl and
results.json (valid and test metrics of the best checkpoint by valid metric).
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import host_memory
from minirec_jax.loops import sasrec

_CONFIG = config_flags.DEFINE_config_file('config', None, 'SASRec/baseline config.',
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (checkpoints, metrics).')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  sasrec.train_sasrec(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
