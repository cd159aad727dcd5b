"""Semantic IDs for a dataset's items: embeddings -> RQ-VAE / RQ-KMeans -> collision-free SIDs.

  python experiments/train_tokenizer.py --config configs/tokenizer.py:dataset=industrial \
      --workdir workdirs/tok_industrial
Then train with them: train_sft.py ... --config.sids.source=tokenizer
--config.sids.path=workdirs/tok_industrial
"""

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.infra import console
from minirec_jax.infra import host_memory
from minirec_jax.loops import artifacts
from minirec_jax.models import lm_embeddings
from minirec_jax.semantic_ids import report as report_lib
from minirec_jax.semantic_ids import stage

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Tokenizer config.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Output folder.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  host_memory.use_huge_pages(__file__)
  console.setup(_WORKDIR.value)
  del argv
  print(report_lib.report_markdown(stage.run(
      _CONFIG.value, _WORKDIR.value, load_table=artifacts.sasrec_item_embeddings,
      load_encoder=lm_embeddings.MeanPoolEncoder)))


if __name__ == '__main__':
  app.run(main)
