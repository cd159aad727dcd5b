"""Recommendations for a file of histories from a trained workdir (SFT, GRPO or train_sasrec).

  python experiments/recommend.py --workdir workdirs/sft_ind_S_ours_s0 \
      --input histories.jsonl --output recommendations.jsonl --top_k 10 [--skip_bad_rows]

Input rows: {"user_id": "u1", "history": [3, 8, 12]} (.jsonl) or user_id,history (.csv, the
history as "[3, 8, 12]"). Output rows: user_id, items, titles, scores, best first. A bad row
stops the run with one line naming file, line, field and value (exit 2), unless
--skip_bad_rows, which skips and counts it.
"""

import json
import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.infra import host_memory
from minirec_jax.serving import recommend

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained workdir.', required=True)
_INPUT = flags.DEFINE_string('input', None, 'Histories (.jsonl or .csv).', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Recommendations (.jsonl).', required=True)
_TOP_K = flags.DEFINE_integer('top_k', 10, 'Items per user.', lower_bound=1)
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Users per batch.', lower_bound=1)
_SKIP = flags.DEFINE_boolean('skip_bad_rows', False, 'Skip and count malformed rows.')


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  try:
    summary = recommend.recommend_file(_WORKDIR.value, _INPUT.value, _OUTPUT.value,
                                       top_k=_TOP_K.value, batch_size=_BATCH.value,
                                       skip_bad_rows=_SKIP.value)
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
