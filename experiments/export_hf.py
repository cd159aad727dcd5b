"""A trained SFT or GRPO workdir as a transformers-loadable folder (model, tokenizer, SIDs).

  python experiments/export_hf.py --workdir workdirs/sft_ind_S_ours_s0 --output exports/sft_S \
      [--overwrite]

Writes config.json + model.safetensors (Qwen2ForCausalLM or LlamaForCausalLM, float32), the
language model's tokenizer.json + tokenizer_config.json (a `backbone` policy only), and
sid_vocab.json, sid_catalogue.json, items.json, export_info.json (see
minirec_jax/serving/export.py). The folder appears whole or not at all; an existing non-empty
--output is refused (exit 2) unless --overwrite. Prints a JSON summary.

With --verify_users=N (needs the bench extra: torch, transformers) the folder is then loaded
with `transformers.AutoModelForCausalLM.from_pretrained` and checked against the workdir's own
model on the first N test users' prompts: logits at every real prompt position (max abs
difference, top-5 agreement) and, for our SID-only decoder, transformers' beam-50 search under
the exported catalogue's SID prefixes against `Recommender.recommend` (top-10 items); the
record goes into the summary (and --verify_output, JSON with the machine record).
"""

import json
import sys

from absl import app
from absl import flags
import numpy as np

from minirec_jax.data import pipeline
from minirec_jax.data.errors import DataError
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing
from minirec_jax.loops import artifacts
from minirec_jax.serving import export
from minirec_jax.testing import hf_reference

_WORKDIR = flags.DEFINE_string('workdir', None, 'A trained SFT or GRPO workdir.', required=True)
_OUTPUT = flags.DEFINE_string('output', None, 'Folder to create.', required=True)
_OVERWRITE = flags.DEFINE_boolean('overwrite', False, 'Replace an existing non-empty --output.')
_VERIFY = flags.DEFINE_integer('verify_users', 0, 'Test users to check transformers against '
                               'our model on (0: no check; needs torch and transformers).')
_VERIFY_OUTPUT = flags.DEFINE_string('verify_output', None, 'JSON record of the check.')


def verify(policy, folder: str, users: int) -> dict:
  """transformers on the exported folder vs our model (see the module docstring)."""
  import transformers  # pylint: disable=g-import-not-at-top

  model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  rec = policy.setup.recommender
  test = policy.setup.dataset.split('test')
  batch = next(iter(pipeline.batched(test, pipeline.BatchSpec(
      users, max_history=rec.prompt_items, drop_remainder=False))))
  history, lengths = batch['history'], batch['history_len']
  prompts = rec.prompts(history, lengths)
  record = {'users': users, 'model_class': type(model).__name__,
            **hf_reference.logits_parity(policy.setup.model_config, policy.params, model,
                                         prompts, k=5, tol=1e-4)}
  if policy.setup.language_model is None:
    with open(f'{folder}/{export.CATALOGUE_FILE}', encoding='utf-8') as f:
      catalogue = json.load(f)
    beam, k = 50, 10
    ours, our_scores = rec.recommend(policy.params, history, lengths, beam)
    tokens, scores = hf_reference.hf_beam_search(
        model, prompts, hf_reference.prefix_table(np.asarray(catalogue['item_tokens'])),
        beam=beam, num_levels=catalogue['num_levels'])
    theirs, their_scores = hf_reference.catalogue_items(catalogue, tokens, scores, k + 1)
    strict, ties_aside = hf_reference.ranked_agreement(
        ours[:, :k + 1], our_scores[:, :k + 1], theirs, their_scores, k, tol=1e-4)
    record.update({'beam': beam, 'top10_items_equal_rate': float(strict.mean()),
                   'top10_items_agree_ties_aside_rate': float(ties_aside.mean())})
  return record


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
  if _VERIFY.value:
    summary['verify'] = verify(policy, _OUTPUT.value, _VERIFY.value)
    if _VERIFY_OUTPUT.value:
      io_utils.write_json(_VERIFY_OUTPUT.value, {**timing.machine_record(),
                                                 'workdir': _WORKDIR.value,
                                                 **summary['verify']})
  print(json.dumps(summary, indent=2))


if __name__ == '__main__':
  app.run(main)
