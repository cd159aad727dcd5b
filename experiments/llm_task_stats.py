"""Token counts of the LLM SFT tasks and RL prompts for one dataset and SmolLM2's tokenizer.

  python experiments/llm_task_stats.py --config configs/dataset.py:industrial \
      [--gguf=PATH] [--cutoff_len=512] [--seq_len=512] [--output=stats.json]

Prints, for the official wording, the short wording and the short wording with chained next-SID
rows: examples, tokens, response tokens and truncations per task and per epoch of the train
split, the sequences that first-fit packing makes of one epoch, and the RL prompts' tokens.
The SID strings of the item table are added to the tokenizer as plain added tokens.
"""

import dataclasses
import sys

from absl import app
from absl import flags
from ml_collections import config_flags
import tokenizers

from minirec_jax.data import llm_tasks
from minirec_jax.data import loading
from minirec_jax.data.errors import DataError
from minirec_jax.data.text_tokenizer import TextTokenizer
from minirec_jax.infra import io_utils
from minirec_jax.models import checkpoints

_CONFIG = config_flags.DEFINE_config_file('config', 'configs/dataset.py:industrial',
                                          'Dataset config.', lock_config=True)
_GGUF = flags.DEFINE_string('gguf', None, 'The SmolLM2 .gguf; default: '
                            'checkpoints.smollm2_gguf_path().')
_CUTOFF = flags.DEFINE_integer('cutoff_len', 512, 'Left-truncation length of an example.')
_SEQ_LEN = flags.DEFINE_integer('seq_len', 512, 'Packed sequence length.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON path for the counts.')

SETTINGS = {
    'official': llm_tasks.TaskMixture(wording='official'),
    'short': llm_tasks.TaskMixture(wording='short'),
    'short_chained': llm_tasks.TaskMixture(wording='short', chain_next_sid=True),
}


def _table(counts: dict) -> str:
  lines = [f"{'task':<22}{'examples':>10}{'tokens':>12}{'response':>11}{'tok/ex':>8}"
           f"{'cut':>6}"]
  for task, c in counts.items():
    lines.append(f"{task:<22}{c['examples']:>10,}{c['tokens']:>12,}{c['response_tokens']:>11,}"
                 f"{c['tokens'] / max(1, c['examples']):>8.1f}{c['truncated_examples']:>6}")
  return '\n'.join(lines)


def _rl_counts(rows, items, wording: str, tokenizer: TextTokenizer) -> dict:
  out = {}
  for source in llm_tasks.RL_SOURCES:
    prompts = llm_tasks.rl_prompts(rows, items, sources=[source], wording=wording)
    ids, cut = llm_tasks.tokenize_rl_prompts(prompts, tokenizer)
    out[source] = {'prompts': len(prompts), 'tokens': sum(len(i) for i in ids), 'cut': cut}
  return out


def main(argv):
  del argv
  cfg = _CONFIG.value.data
  try:
    dataset = loading.load(cfg)
    tokenizer = TextTokenizer.from_gguf(_GGUF.value or checkpoints.smollm2_gguf_path())
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  sid_tokens = llm_tasks.sid_token_names(dataset.items.sid)
  tokenizer.tokenizer.add_tokens([tokenizers.AddedToken(t, normalized=False)
                                  for t in sid_tokens])
  tokenizer.require_tokens(sid_tokens, 'the SID strings')
  train = dataset.split('train')
  rows = train.__getitems__(list(range(len(train))))
  phrase = llm_tasks.category_phrase(cfg.category)
  print(f'{dataset.name}: {len(rows):,} train rows, {dataset.num_items:,} items, '
        f'{len(sid_tokens)} SID tokens added; tokenizer {tokenizer.source} (eos '
        f'{tokenizer.eos_token!r}); cutoff_len {_CUTOFF.value}, seq_len {_SEQ_LEN.value}')
  record, rl_by_wording = {}, {}
  for name, mixture in SETTINGS.items():
    examples = llm_tasks.mixture_examples(rows, dataset.items, mixture, phrase=phrase,
                                          where=f'{dataset.name} train split')
    tokenized = llm_tasks.tokenize_examples(examples, tokenizer, _CUTOFF.value)
    counts = llm_tasks.token_counts(tokenized)
    _, pack = llm_tasks.pack_examples(tokenized, _SEQ_LEN.value)
    if mixture.wording not in rl_by_wording:
      rl_by_wording[mixture.wording] = _rl_counts(rows, dataset.items, mixture.wording, tokenizer)
    rl = rl_by_wording[mixture.wording]
    record[name] = {'counts': counts, 'packing': dataclasses.asdict(pack), 'rl_prompts': rl}
    print(f'\n== {name} ==\n{_table(counts)}')
    print(f'packed: {pack.sequences:,} sequences of {_SEQ_LEN.value} ({pack.occupancy:.1%} '
          f'occupied)')
    print('RL prompts: ' + ', '.join(f"{s} {r['prompts']:,} ({r['tokens']:,} tokens, {r['cut']} "
                                     'cut)' for s, r in rl.items()))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, record)


if __name__ == '__main__':
  app.run(main)
