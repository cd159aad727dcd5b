"""A trained generative recommender as a Hugging Face folder that transformers loads as it is.

`export_policy(policy, output)` writes the decoder of an SFT or GRPO workdir
(`loops.artifacts.load_policy`) and everything needed to decode items with it elsewhere:

  config.json, model.safetensors  the decoder (`checkpoints.save_hf_directory`):
                                  Qwen2ForCausalLM when it has q/k/v biases, else
                                  LlamaForCausalLM; float32 tensors, a tied LM head not stored.
                                  `checkpoints.load_hf_directory` reads back the same
                                  (config, params).
  tokenizer.json,                 a language-model policy only: its tokenizer with the SID
  tokenizer_config.json           tokens added (`AutoTokenizer.from_pretrained(folder)` and
                                  `TextTokenizer.from_hf_directory(folder)` both read them).
                                  Our SID-only decoder has no text tokenizer: sid_vocab.json is
                                  its whole vocabulary.
  sid_vocab.json                  token_ids `[L][K]`: the token id of (level, code), -1 where
                                  the vocabulary has none; token_names (the official text,
                                  '<a_12>'); terminator: the ids generated after a SID ([] for
                                  the SID-only decoder, e.g. '\\n' and eos for a language
                                  model); pad_token_id; vocab_size.
  sid_catalogue.json              the trie's contents: item_codes `[num_items][L]`,
                                  item_tokens (the same as token ids), item_group (the group
                                  id of each item: the first item with its SID), and groups:
                                  one per distinct SID (a leaf of the trie) with its codes,
                                  tokens and items in the order `recommend` lists them (most
                                  frequent training target first).
  items.json                      item id -> title and SID text.
  export_info.json                where it came from and how the recommender prompts.

The folder is written next to `output` under a temporary name and renamed into place, so a
failure leaves no partial export (and, with `overwrite`, the previous one untouched). An
existing non-empty `output` is refused unless `overwrite`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from typing import Any, Iterator

import jax
import numpy as np

from minirec_jax.data import llm_tasks
from minirec_jax.data import sid_sequences
from minirec_jax.infra import io_utils
from minirec_jax.loops import artifacts
from minirec_jax.models import checkpoints

EXPORT_FORMAT = 1
SID_VOCAB_FILE = 'sid_vocab.json'
CATALOGUE_FILE = 'sid_catalogue.json'
ITEMS_FILE = 'items.json'
INFO_FILE = 'export_info.json'
TOKENIZER_FILES = ('tokenizer.json', 'tokenizer_config.json')


def _empty_folder(path: str) -> bool:
  """An empty folder (not a link to one): a folder can be renamed onto it."""
  return os.path.isdir(path) and not os.path.islink(path) and not os.listdir(path)


def check_output(output: str, overwrite: bool = False) -> None:
  """Refuses an `output` that exists and is not an empty folder, unless `overwrite`.

  Raises:
    FileExistsError: naming `output` and the way to replace it.
  """
  if overwrite or not os.path.lexists(output) or _empty_folder(output):
    return
  raise FileExistsError(f'{output} exists and is not empty; pass --overwrite (overwrite=True) '
                        'to replace it')


def _refuse_source_inside(output: str, workdir: str | None) -> None:
  """Replacing `output` must never delete the workdir being exported."""
  if not workdir:
    return
  out, src = os.path.realpath(output), os.path.realpath(workdir)
  if src == out or src.startswith(out + os.sep):
    raise ValueError(f'--output {output} would replace the workdir {workdir} it exports')


def _fsync_tree(folder: str) -> None:
  for root, _, files in os.walk(folder):
    for name in files:
      fd = os.open(os.path.join(root, name), os.O_RDONLY)
      try:
        os.fsync(fd)
      finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_folder(output: str, overwrite: bool = False) -> Iterator[str]:
  """Yields an empty temporary folder next to `output`; renames it onto `output` on success.

  On an exception the temporary folder is removed and `output` is left as it was. With
  `overwrite`, a previous `output` is moved aside just before the rename and deleted after it
  (put back if the rename fails).
  """
  output = os.path.abspath(output)
  parent, name = os.path.split(output)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{name}.', suffix='.tmp')
  aside = f'{tmp}.old'
  try:
    yield tmp
    check_output(output, overwrite)  # again: something may have appeared meanwhile
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700; give it a plain mkdir's mode
    _fsync_tree(tmp)
    moved = os.path.lexists(output) and not _empty_folder(output)
    if moved:
      os.rename(output, aside)
    try:
      os.replace(tmp, output)  # onto nothing, or onto an empty folder
    except OSError:
      if moved:
        os.rename(aside, output)
      raise
    if moved:
      if os.path.isdir(aside) and not os.path.islink(aside):
        shutil.rmtree(aside)
      else:
        os.remove(aside)
  finally:
    if os.path.exists(tmp):
      shutil.rmtree(tmp)


def _int_list(array) -> list:
  return np.asarray(array).astype(np.int64).tolist()


def sid_vocab_json(policy: artifacts.Policy) -> dict[str, Any]:
  """The SID tokens of the policy's vocabulary (sid_vocab.json)."""
  s = policy.setup
  token_map = s.recommender.token_map
  table = np.asarray(token_map.table)
  names = [[sid_sequences.sid_token_name(level, code) for code in range(table.shape[1])]
           for level in range(table.shape[0])]
  lm = s.language_model
  vocab = {
      'decoder': 'sid_only' if lm is None else 'language_model',
      'num_levels': int(table.shape[0]), 'codebook_size': int(table.shape[1]),
      'vocab_size': int(s.model_config.vocab_size),
      'pad_token_id': sid_sequences.PAD_TOKEN if lm is None else lm.tokenizer.pad_id,
      'terminator': [int(t) for t in token_map.terminator],
      'token_ids': _int_list(table), 'token_names': names,
  }
  if lm is None:
    # Our layout (sid_sequences.SidVocab): PAD 0, then level-major SID tokens, nothing else.
    vocab['layout'] = 'id = 1 + level * codebook_size + code; 0 is PAD'
  else:
    vocab['terminator_text'] = [lm.tokenizer.id_to_token(t) for t in token_map.terminator]
  return vocab


def catalogue_json(policy: artifacts.Policy) -> dict[str, Any]:
  """The SID of every item and the items of every SID (sid_catalogue.json)."""
  rec = policy.setup.recommender
  sids = policy.setup.sids
  members = np.asarray(rec.members)
  groups = [{'group': int(g), 'codes': _int_list(sids.codes[g]),
             'tokens': _int_list(rec.item_tokens[g]),
             'items': _int_list(members[g][members[g] >= 0])}
            for g in np.asarray(rec.group_items)]
  return {'num_items': int(sids.num_items), 'num_levels': int(sids.num_levels),
          'codebook_size': int(sids.codebook_size), 'item_codes': _int_list(sids.codes),
          'item_tokens': _int_list(rec.item_tokens),
          'item_group': _int_list(sids.item_to_group), 'groups': groups}


def items_json(policy: artifacts.Policy) -> dict[str, Any]:
  """Item id -> title and SID text (items.json)."""
  titles = list(policy.setup.dataset.items.title)
  sid_text = llm_tasks.sid_strings(policy.setup.sids.codes)
  return {'num_items': len(titles),
          'items': [{'item_id': i, 'title': str(t), 'sid': str(sid)}
                    for i, (t, sid) in enumerate(zip(titles, sid_text))]}


def info_json(policy: artifacts.Policy, workdir: str | None, hf_config: dict) -> dict[str, Any]:
  """Provenance and the prompt the recommender decodes from (export_info.json)."""
  s = policy.setup
  if s.language_model is None:
    prompt = {'kind': 'sid_history', 'max_items': int(s.recommender.prompt_items),
              'text': "the last max_items items' SID tokens, oldest first; left-padded with "
                      'pad_token_id, positions counted from 0 at the first real token'}
  else:
    llm = policy.sft_config.llm
    prompt = {'kind': 'next_sid', 'max_items': int(s.recommender.prompt_items),
              'wording': llm.get('eval_wording') or llm.wording,
              'text': 'llm_tasks.NextSidPrompts: the training prompt of task next_sid; '
                      'left-padded, positions counted from 0 at the first real token'}
  return {'format': EXPORT_FORMAT, 'policy': policy.name,
          'source_workdir': os.path.abspath(workdir) if workdir else None,
          'backbone': policy.sft_config.model.get('backbone') or None,
          'architecture': hf_config['architectures'][0],
          'max_history': int(policy.sft_config.data.max_history), 'prompt': prompt,
          'decoding': 'beam search constrained to the SIDs of sid_catalogue.json groups; each '
                      "SID stands for its group's items, in that order"}


def _write_tokenizer(folder: str, policy: artifacts.Policy) -> None:
  """tokenizer.json and a tokenizer_config.json that AutoTokenizer reads as a fast tokenizer."""
  tokenizer = policy.setup.language_model.tokenizer
  tokenizer.save(os.path.join(folder, TOKENIZER_FILES[0]))
  config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': tokenizer.bos_token,
            'eos_token': tokenizer.eos_token, 'pad_token': tokenizer.pad_token,
            'model_max_length': int(policy.setup.model_config.max_len),
            'clean_up_tokenization_spaces': False}
  if tokenizer.chat_template is not None:
    config['chat_template'] = tokenizer.chat_template
  io_utils.write_json(os.path.join(folder, TOKENIZER_FILES[1]), config)


def _token_ids(policy: artifacts.Policy) -> dict[str, int | None]:
  lm = policy.setup.language_model
  if lm is None:
    return {'bos_token_id': None, 'eos_token_id': None, 'pad_token_id': sid_sequences.PAD_TOKEN}
  t = lm.tokenizer
  return {'bos_token_id': t.bos_id, 'eos_token_id': t.eos_id, 'pad_token_id': t.pad_id}


def export_policy(policy: artifacts.Policy, output: str, *, overwrite: bool = False,
                  workdir: str | None = None) -> dict[str, Any]:
  """Writes the policy's decoder, tokenizer (language models) and SID files into `output`.

  Args:
    policy: `artifacts.load_policy(workdir)` (SFT or GRPO).
    output: the folder to create (see the module docstring for its files).
    overwrite: replace an existing non-empty `output`.
    workdir: the workdir `policy` came from, recorded in export_info.json; `output` may not
      be it or a folder above it.
  Returns:
    A summary: output, architecture, decoder kind, vocab_size, num_items, parameters, files.
  Raises:
    FileExistsError: `output` exists and is not empty, without `overwrite`.
    ValueError: a decoder config.json cannot express (mixture-of-experts), or `output` would
      replace `workdir`.
  """
  check_output(output, overwrite)
  _refuse_source_inside(output, workdir)
  config = policy.setup.model_config
  token_ids = _token_ids(policy)
  hf_config = checkpoints.config_to_hf(config, **token_ids)  # refuses before writing anything
  params = jax.device_get(policy.params)
  with atomic_folder(output, overwrite) as tmp:
    checkpoints.save_hf_directory(tmp, config, params, **token_ids)
    if policy.setup.language_model is not None:
      _write_tokenizer(tmp, policy)
    io_utils.write_json(os.path.join(tmp, SID_VOCAB_FILE), sid_vocab_json(policy))
    io_utils.write_json(os.path.join(tmp, CATALOGUE_FILE), catalogue_json(policy), indent=None)
    io_utils.write_json(os.path.join(tmp, ITEMS_FILE), items_json(policy), indent=None)
    io_utils.write_json(os.path.join(tmp, INFO_FILE), info_json(policy, workdir, hf_config))
    files = sorted(os.listdir(tmp))
  return {'output': os.path.abspath(output), 'architecture': hf_config['architectures'][0],
          'decoder': 'sid_only' if policy.setup.language_model is None else 'language_model',
          'vocab_size': config.vocab_size, 'num_items': int(policy.setup.sids.num_items),
          'parameters': int(sum(np.size(x) for x in jax.tree.leaves(params))), 'files': files}
