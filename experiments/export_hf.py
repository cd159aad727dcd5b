"""A trained SFT or GRPO workdir as a transformers-loadable folder (model, tokenizer, SIDs).

  python experiments/export_hf.py --workdir workdirs/sft_ind_S_ours_s0 --output exports/sft_S \
      [--overwrite]

Writes config.json + model.safetensors (Qwen2ForCausalLM or LlamaForCausalLM, float32), the
language model's tokenizer.json + tokenizer_config.json (a `backbone` policy only), and
sid_vocab.json, sid_catalogue.json, items.json, export_info.json (see
minirec_jax/serving/export.py). The folder appears whole or not at all; an existing non-empty
--output is refused (exit 2) unless --overwrite. Prints a JSON summary.
"""

import json
import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.loops import artifacts
from minirec_jax.serving import export

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained SFT or GRPO workdir.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to create.', required=True)
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace an existing non-empty --output.')


def main(argv):
  del argv
  try:
    export.check_output(_OUTPUT.value, _OVERWRITE.value)  # before the minutes of loading
    policy = artifacts.load_policy(_WORKDIR.value)
    summary = export.export_policy(policy, _OUTPUT.value, overwrite=_OVERWRITE.value,
                                   workdir=_WORKDIR.value)
  except (DataError, FileExistsError, ValueError) as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
