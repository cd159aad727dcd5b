"""A pretrained language model's own tokenizer, and the chat prompt text its instruct model reads.

Owns `TextTokenizer`, byte-level BPE (GPT-2, SmolLM2, Qwen2) through the `tokenizers` library,
read from an HF tokenizer.json (`from_file`, `from_hf_directory`, which adds
tokenizer_config.json's bos/eos/pad names and chat template) or built from a GGUF file's
vocabulary (`from_gguf`: tokenizer.ggml.tokens, .merges, .token_type, .pre, bos/eos ids);
encode/decode, special tokens and added tokens (e.g. the SID tokens `<a_12>` of a MiniOneRec
checkpoint). `chatml` formats the ChatML text that SmolLM2-Instruct's and Qwen's chat templates
render (plain string formatting, no jinja). `open_gguf` / `gguf_field` read GGUF metadata, here
so that models/checkpoints.py shares them. Bad input raises DataError naming file, field, value.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Mapping, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

from minirec_jax.data.errors import DataError, require_file
from minirec_jax.infra import io_utils

# Default system prompts of the two chat templates (used when the first message is not one).
SMOLLM2_SYSTEM = 'You are a helpful AI assistant named SmolLM, trained by Hugging Face'
QWEN2_5_SYSTEM = 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.'
CHATML_TOKENS = ('<|im_start|>', '<|im_end|>')

# GGUF token types (llama.cpp's llama_token_type).
_CONTROL, _USER_DEFINED = 3, 4
# Pre-tokenizer split patterns of the Qwen2 and Llama 3 tokenizers (tokenizer.ggml.pre).
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
_LLAMA3_SPLIT = _QWEN2_SPLIT.replace(r'|\p{N}|', r'|\p{N}{1,3}|')
GGUF_PRE_TOKENIZERS = ('gpt-2', 'smollm', 'qwen2', 'llama-bpe')


def chatml(messages: Sequence[Mapping[str, str]], default_system: str | None = None,
           add_generation_prompt: bool = True) -> str:
  """The ChatML prompt text, as SmolLM2-Instruct's and Qwen2.5's chat templates render it.

  Args:
    messages: [{'role': 'system' | 'user' | 'assistant', 'content': text}, ...].
    default_system: a system message put first when the first message is not one
      (`SMOLLM2_SYSTEM`, `QWEN2_5_SYSTEM`); None adds none.
    add_generation_prompt: end with the opening of the assistant's turn.
  Returns:
    '<|im_start|>{role}\\n{content}<|im_end|>\\n' per message (+ '<|im_start|>assistant\\n').
  """
  parts = []
  if default_system is not None and messages and messages[0]['role'] != 'system':
    parts.append(f'<|im_start|>system\n{default_system}<|im_end|>\n')
  parts.extend(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
  if add_generation_prompt:
    parts.append('<|im_start|>assistant\n')
  return ''.join(parts)


def open_gguf(path: str):
  """`gguf.GGUFReader` over the file (memory-mapped); DataError if it is not a GGUF file."""
  import gguf  # pylint: disable=g-import-not-at-top
  require_file(path, 'GGUF file')
  try:
    return gguf.GGUFReader(path)
  except (ValueError, KeyError, IndexError) as exc:
    # The reader fails this way on a bad magic, a truncated file or an unknown type id.
    raise DataError(f'not a readable GGUF file ({exc})', path=path) from None


def gguf_field(reader, key: str, path: str, default=None, required: bool = True):
  """A metadata value (python scalar, str or list); DataError if it is absent, required and has
  no default."""
  field = reader.get_field(key)
  if field is None:
    if required and default is None:
      raise DataError('missing metadata key', path=path, field=key)
    return default
  return field.contents()


def _token_name(value) -> str | None:
  """tokenizer_config.json writes a token as a string or {'content': string, ...}."""
  return value.get('content') if isinstance(value, dict) else value


def _gguf_pre_tokenizer(pre: str, add_prefix_space: bool, path: str):
  byte_level = lambda use_regex: pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space,
                                                          use_regex=use_regex)
  if pre == 'gpt-2':
    return byte_level(True)
  if pre == 'smollm':  # digits one by one, then GPT-2's split
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                    byte_level(True)])
  if pre in ('qwen2', 'llama-bpe'):
    split = _QWEN2_SPLIT if pre == 'qwen2' else _LLAMA3_SPLIT
    return pre_tokenizers.Sequence([pre_tokenizers.Split(tokenizers.Regex(split), 'isolated'),
                                    byte_level(False)])
  raise DataError(f'unsupported pre-tokenizer; supported: {", ".join(GGUF_PRE_TOKENIZERS)}',
                  path=path, field='tokenizer.ggml.pre', value=pre)


@dataclasses.dataclass(eq=False)
class TextTokenizer:
  """A `tokenizers.Tokenizer` plus the model's bos/eos/pad names and chat template.

  Attributes:
    tokenizer: the `tokenizers.Tokenizer`.
    source: the file it was read from (named in errors).
    bos_token, eos_token, pad_token: token strings, or None.
    chat_template: the model's jinja chat template text, for reference (`chat_prompt`
      renders the ChatML form itself), or None.
    vocab_field: where `source` lists tokens ('added_tokens', 'tokenizer.ggml.tokens'), named
      when a token is missing.
  """

  tokenizer: tokenizers.Tokenizer
  source: str
  bos_token: str | None = None
  eos_token: str | None = None
  pad_token: str | None = None
  chat_template: str | None = None
  vocab_field: str = 'added_tokens'

  @classmethod
  def from_file(cls, path: str, **names) -> TextTokenizer:
    """An HF tokenizer.json; `names`: bos_token, eos_token, pad_token, chat_template."""
    require_file(path, 'tokenizer.json')
    try:
      tokenizer = tokenizers.Tokenizer.from_file(path)
    except Exception as exc:  # tokenizers raises a bare Exception on malformed files
      raise DataError(f'not a tokenizers tokenizer.json ({exc})', path=path) from None
    return cls(tokenizer, path, **names)

  @classmethod
  def from_hf_directory(cls, folder: str) -> TextTokenizer:
    """A model folder's tokenizer.json, with tokenizer_config.json's special-token names and
    chat template when that file is present."""
    names = {}
    config_path = os.path.join(folder, 'tokenizer_config.json')
    if os.path.isfile(config_path):
      try:
        with open(config_path, encoding='utf-8') as f:
          config = json.load(f)
      except json.JSONDecodeError as exc:
        raise DataError(f'invalid JSON ({exc.msg})', path=config_path, line=exc.lineno) from None
      names = {k: _token_name(config.get(k)) for k in ('bos_token', 'eos_token', 'pad_token')}
      names['chat_template'] = config.get('chat_template')
    tokenizer = cls.from_file(os.path.join(folder, 'tokenizer.json'), **names)
    for key in ('bos_token', 'eos_token', 'pad_token'):
      if names.get(key) is not None:
        tokenizer.require_tokens([names[key]], f'tokenizer_config.json {key}')
    return tokenizer

  @classmethod
  def from_gguf(cls, path: str) -> TextTokenizer:
    """Byte-level BPE from a GGUF file's vocabulary and merges (tokenizer.ggml.model 'gpt2').

    Control tokens (type 3) become special added tokens, user-defined ones (type 4) plain added
    tokens; `tokenizer.ggml.add_bos_token` adds the BOS token in front of every encoding.
    """
    reader = open_gguf(path)
    field = lambda key, default=None: gguf_field(reader, key, path, default,
                                                 required=default is None)
    model = field('tokenizer.ggml.model')
    if model != 'gpt2':
      raise DataError('only byte-level BPE tokenizers (gpt2) are supported', path=path,
                      field='tokenizer.ggml.model', value=model)
    tokens = field('tokenizer.ggml.tokens')
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
      seen = set()
      duplicate = next(t for t in tokens if t in seen or seen.add(t))
      raise DataError('duplicate token', path=path, field='tokenizer.ggml.tokens',
                      value=duplicate)
    merges = []
    for merge in field('tokenizer.ggml.merges'):
      pair = tuple(merge.split(' '))
      if len(pair) != 2:
        raise DataError("a merge must be two tokens separated by one space", path=path,
                        field='tokenizer.ggml.merges', value=merge)
      merges.append(pair)
    pre = field('tokenizer.ggml.pre', 'gpt-2')
    bpe = models.BPE(vocab, merges, ignore_merges=pre == 'llama-bpe')
    tokenizer = tokenizers.Tokenizer(bpe)
    if pre == 'qwen2':
      tokenizer.normalizer = normalizers.NFC()
    tokenizer.pre_tokenizer = _gguf_pre_tokenizer(
        pre, bool(field('tokenizer.ggml.add_space_prefix', False)), path)
    tokenizer.decoder = decoders.ByteLevel()
    types = field('tokenizer.ggml.token_type', [1] * len(tokens))
    added = [tokenizers.AddedToken(token, special=kind == _CONTROL, normalized=False)
             for token, kind in zip(tokens, types) if kind in (_CONTROL, _USER_DEFINED)]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])

    def name(key):
      token_id = field(key, -1)
      if token_id == -1:
        return None
      if not 0 <= token_id < len(tokens):
        raise DataError(f'no such token id (vocabulary of {len(tokens)})', path=path, field=key,
                        value=token_id)
      return tokens[token_id]

    bos = name('tokenizer.ggml.bos_token_id')
    if bos is not None and field('tokenizer.ggml.add_bos_token', False):
      tokenizer.post_processor = processors.TemplateProcessing(
          single=f'{bos} $A', pair=f'{bos} $A {bos} $B:1', special_tokens=[(bos, vocab[bos])])
    return cls(tokenizer, path, bos, name('tokenizer.ggml.eos_token_id'),
               name('tokenizer.ggml.padding_token_id'),
               gguf_field(reader, 'tokenizer.chat_template', path, required=False),
               'tokenizer.ggml.tokens')

  @property
  def vocab_size(self) -> int:
    """Token ids run over [0, vocab_size) (added tokens included)."""
    return self.tokenizer.get_vocab_size(with_added_tokens=True)

  @property
  def bos_id(self) -> int | None:
    return None if self.bos_token is None else self.tokenizer.token_to_id(self.bos_token)

  @property
  def eos_id(self) -> int | None:
    return None if self.eos_token is None else self.tokenizer.token_to_id(self.eos_token)

  @property
  def pad_id(self) -> int | None:
    return None if self.pad_token is None else self.tokenizer.token_to_id(self.pad_token)

  def added_tokens(self, special: bool | None = None) -> dict[str, int]:
    """Added token -> id, in id order; `special` True / False keeps only those kinds."""
    decoder = sorted(self.tokenizer.get_added_tokens_decoder().items())
    return {t.content: i for i, t in decoder if special is None or t.special == special}

  def token_to_id(self, token: str) -> int | None:
    return self.tokenizer.token_to_id(token)

  def id_to_token(self, token_id: int) -> str | None:
    return self.tokenizer.id_to_token(token_id)

  def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
    """Token ids; special and added tokens written in `text` map to their own ids.
    `add_special_tokens` adds what the post-processor adds (e.g. BOS), if anything."""
    return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

  def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = True
                   ) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts),
                                                       add_special_tokens=add_special_tokens)]

  def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
    return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

  def require_tokens(self, tokens: Sequence[str], what: str = 'the prompts') -> list[int]:
    """Ids of `tokens`, each of which must encode to exactly its own single id.

    Raises:
      DataError: naming the tokenizer file, its vocabulary field and the first token that is
        absent (or not an added token, so that text would split it).
    """
    ids = []
    for token in tokens:
      token_id = self.tokenizer.token_to_id(token)
      if token_id is None or self.encode(token, add_special_tokens=False) != [token_id]:
        problem = 'no such token' if token_id is None else 'token is not a single added token'
        raise DataError(f'{problem}; {what} need it', path=self.source, field=self.vocab_field,
                        value=token)
      ids.append(token_id)
    return ids

  def chat_prompt(self, messages: Sequence[Mapping[str, str]],
                  default_system: str | None = None, add_generation_prompt: bool = True) -> str:
    """`chatml(...)`, after checking that this tokenizer has the ChatML tokens."""
    self.require_tokens(CHATML_TOKENS, 'ChatML chat prompts')
    return chatml(messages, default_system, add_generation_prompt)

  def save(self, path: str) -> None:
    """Writes the tokenizer as an HF tokenizer.json (atomically)."""
    io_utils.write_text(path, self.tokenizer.to_str())
