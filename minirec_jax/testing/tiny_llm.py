"""Tiny random language-model checkpoints in the Hugging Face layout, written at test time.

`write_hf_directory` writes config.json (as transformers writes it for Llama or Qwen2) and
safetensors (one file or an indexed set of shards) from HF-named float32 tensors;
`byte_level_tokenizer` is a byte-level BPE over the 256 byte symbols (any text encodes) with
ChatML-style special tokens; `write_tiny_llama` puts a random model and that tokenizer in a
folder, the backbone `hf:<folder>` of a test-sized language-model pipeline.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
from safetensors.numpy import save_file
import tokenizers

from minirec_jax.models import checkpoints
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert

SPECIAL_TOKENS = ('<|endoftext|>', '<|im_start|>', '<|im_end|>')


def random_state(config: decoder_lib.DecoderConfig, seed: int = 0,
                 scale: float = 0.2) -> dict[str, np.ndarray]:
  """HF-named float32 tensors for every parameter (norm weights around 1)."""
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: rng.normal(0, scale, s.shape).astype(np.float32),
                        decoder_lib.abstract_params(config))
  state = hf_convert.params_to_hf_state_dict(params, config)
  return {k: v + 1 if k.endswith('norm.weight') else v for k, v in state.items()}


def hf_config_json(config: decoder_lib.DecoderConfig, arch: str) -> dict:
  """config.json as transformers 4 writes it: `checkpoints.config_to_hf` with RoPE as a
  top-level `rope_theta` only (the older form the loader must also read), plus fields the
  loader ignores. `arch` ('llama' or 'qwen2') must be the one the config's qkv_bias implies."""
  c = checkpoints.config_to_hf(config)
  if c['model_type'] != arch:
    raise ValueError(f'a config with qkv_bias={config.qkv_bias} is {c["model_type"]}, not '
                     f'{arch}')
  del c['rope_parameters'], c['dtype']
  c.update(rope_scaling=None, torch_dtype='float32', initializer_range=0.02)
  return c


def write_json(path: str, obj) -> None:
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f)


def write_hf_directory(folder: str, config: decoder_lib.DecoderConfig, arch: str,
                       state: dict[str, np.ndarray], shards: int = 1) -> None:
  """config.json and the tensors of `state` in `shards` safetensors files (with an index)."""
  os.makedirs(folder, exist_ok=True)
  write_json(os.path.join(folder, 'config.json'), hf_config_json(config, arch))
  if shards == 1:
    save_file(state, os.path.join(folder, 'model.safetensors'))
    return
  names = sorted(state)
  weight_map = {}
  for i in range(shards):
    shard = f'model-{i + 1:05d}-of-{shards:05d}.safetensors'
    part = names[i::shards]
    save_file({n: state[n] for n in part}, os.path.join(folder, shard))
    weight_map.update({n: shard for n in part})
  write_json(os.path.join(folder, 'model.safetensors.index.json'),
             {'metadata': {'total_size': 0}, 'weight_map': weight_map})


def byte_level_tokenizer(merges: tuple[tuple[str, str], ...] = (('Ġ', 't'), ('h', 'e'),
                                                                ('Ġt', 'he'))
                         ) -> tokenizers.Tokenizer:
  """Byte-level BPE: the special tokens (ids 0..2), the 256 byte symbols, then one token per
  merge, in that order."""
  alphabet = sorted(tokenizers.pre_tokenizers.ByteLevel.alphabet())
  vocab = {t: i for i, t in enumerate(list(SPECIAL_TOKENS) + alphabet
                                      + [a + b for a, b in merges])}
  tokenizer = tokenizers.Tokenizer(tokenizers.models.BPE(vocab, list(merges)))
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = tokenizers.decoders.ByteLevel()
  tokenizer.add_special_tokens([tokenizers.AddedToken(t, special=True, normalized=False)
                                for t in SPECIAL_TOKENS])
  return tokenizer


def write_tokenizer(folder: str, tokenizer: tokenizers.Tokenizer) -> None:
  """tokenizer.json plus tokenizer_config.json naming eos '<|im_end|>' and pad '<|endoftext|>'."""
  tokenizer.save(os.path.join(folder, 'tokenizer.json'))
  write_json(os.path.join(folder, 'tokenizer_config.json'), {
      'eos_token': SPECIAL_TOKENS[2], 'pad_token': SPECIAL_TOKENS[0], 'bos_token': None,
      'model_max_length': 131072, 'chat_template': '{{ messages }}'})


def write_tiny_llama(folder: str, *, width: int = 32, depth: int = 2, seed: int = 0) -> str:
  """A random Llama (tied embeddings, as SmolLM2) with the byte-level tokenizer; returns
  `folder`, loadable as the backbone 'hf:<folder>'."""
  tokenizer = byte_level_tokenizer()
  config = decoder_lib.DecoderConfig(
      vocab_size=tokenizer.get_vocab_size(), width=width, depth=depth, num_heads=4,
      num_kv_heads=2, mlp_dim=2 * width, rope_theta=1e4, rms_eps=1e-5, qkv_bias=False,
      tie_embeddings=True, max_len=2048)
  write_hf_directory(folder, config, 'llama', random_state(config, seed, scale=0.05))
  write_tokenizer(folder, tokenizer)
  return folder
