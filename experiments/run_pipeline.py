"""Every stage, dataset to evaluation, into one workdir; a re-run skips finished stages.

  python experiments/run_pipeline.py --workdir workdirs/pipeline_ml100k
  python experiments/run_pipeline.py --config configs/pipeline.py:dataset=industrial \
      --workdir workdirs/pipeline_industrial [--config.sft.train.epochs=10 ...]

Stages (one folder each, registered in minirec_jax/pipeline/minionerec.py): dataset,
embeddings, semantic_ids, sft, sasrec, grpo, evaluation. Prints the test metrics of SFT,
SFT+GRPO and SASRec in the paper's Table-1 layout and writes them to <workdir>/results.md and
results.json, then each stage's wall time.
"""

import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax import pipeline
from minirec_jax.data.errors import DataError
from minirec_jax.infra import console
from minirec_jax.infra import host_memory

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/pipeline.py',
                                          'Pipeline config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder (one sub-folder per stage).',
                               required=True)


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  try:
    with console.stdout_to_log():  # the stages' own tables: the summary below has them
      result = pipeline.run(_CONFIG.value, _WORKDIR.value)
  except (DataError, pipeline.StageMismatchError) as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  print(result.markdown)
  print('Stage wall times (a skipped stage: the run that finished it):')
  print(result.timings_markdown())


if __name__ == '__main__':
  app.run(main)
