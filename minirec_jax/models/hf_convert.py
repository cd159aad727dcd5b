"""Hugging Face Qwen2/Llama state dicts to and from the decoder's parameter tree.

The decoder names its parameters after the HF tensors (embed_tokens, layers_i/self_attn/
{q,k,v,o}_proj, mlp/{gate,up,down}_proj, input_layernorm, post_attention_layernorm, norm,
lm_head), so a pretrained checkpoint of the family loads without touching the module: this
module only maps names, transposes Linear weights and checks shapes. Qwen2 and Llama share these
names (Llama simply has no q/k/v biases: `qkv_bias=False`). Dense MLPs only. Reading the
checkpoint files themselves is checkpoints.py's job.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from minirec_jax.data.errors import DataError
from minirec_jax.models import decoder as decoder_lib


def _hf_layout(config: decoder_lib.DecoderConfig) -> list[tuple[str, tuple[str, ...], bool]]:
  """(HF tensor name, parameter path, transposed?) for every parameter of the config.

  HF Linear weights are `[out, in]`; linen Dense kernels are `[in, out]`.
  """
  if config.num_experts:
    raise ValueError(f'HF conversion covers dense MLPs only, got num_experts='
                     f'{config.num_experts}')
  layout = [('model.embed_tokens.weight', ('embed_tokens', 'embedding'), False),
            ('model.norm.weight', ('norm', 'weight'), False)]
  for i in range(config.depth):
    hf, ours = f'model.layers.{i}.', f'layers_{i}'
    for proj in ('q_proj', 'k_proj', 'v_proj', 'o_proj'):
      layout.append((f'{hf}self_attn.{proj}.weight', (ours, 'self_attn', proj, 'kernel'), True))
      if config.qkv_bias and proj != 'o_proj':
        layout.append((f'{hf}self_attn.{proj}.bias', (ours, 'self_attn', proj, 'bias'), False))
    for proj in ('gate_proj', 'up_proj', 'down_proj'):
      layout.append((f'{hf}mlp.{proj}.weight', (ours, 'mlp', proj, 'kernel'), True))
    for norm in ('input_layernorm', 'post_attention_layernorm'):
      layout.append((f'{hf}{norm}.weight', (ours, norm, 'weight'), False))
  if not config.tie_embeddings:
    layout.append(('lm_head.weight', ('lm_head', 'kernel'), True))
  return layout


def _lookup(tree: decoder_lib.Params, path: tuple[str, ...]):
  for key in path:
    tree = tree[key]
  return tree


def params_from_hf_state_dict(state_dict: dict[str, Any], config: decoder_lib.DecoderConfig,
                              source: str | None = None) -> decoder_lib.Params:
  """HF `Qwen2ForCausalLM` / `LlamaForCausalLM` tensors -> decoder params (float32 numpy).

  Args:
    state_dict: tensor name (e.g. 'model.layers.0.self_attn.q_proj.weight') -> array-like
      (numpy, including ml_dtypes bfloat16). RoPE `inv_freq` buffers are ignored; with tied
      embeddings an 'lm_head.weight' equal to the embedding is accepted and dropped.
    config: the config the checkpoint was made for.
    source: the file or folder the tensors came from, named in errors.
  Returns:
    The parameter tree of `Decoder(config)`.
  Raises:
    DataError (a ValueError): a tensor is missing, has the wrong shape, or is not part of the
      config; the error names `source` and the tensor.
  """
  shapes = decoder_lib.abstract_params(config)
  params: decoder_lib.Params = {}
  for name, path, transpose in _hf_layout(config):
    if name not in state_dict:
      raise DataError(f'HF state dict has no tensor {name!r}', path=source, field=name)
    value = np.asarray(state_dict[name], np.float32)
    if transpose:
      value = value.T
    expected = _lookup(shapes, path).shape
    if value.shape != expected:
      raise DataError(f'HF tensor {name!r} has shape {value.shape} (after transposing: '
                      f'{transpose}), expected {expected} for this config', path=source,
                      field=name, value=value.shape)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  known = {name for name, _, _ in _hf_layout(config)}
  for name in state_dict:
    if name in known or name.endswith('rotary_emb.inv_freq'):
      continue
    if (name == 'lm_head.weight' and config.tie_embeddings and np.array_equal(
        np.asarray(state_dict[name], np.float32), params['embed_tokens']['embedding'])):
      continue
    raise DataError(f'HF tensor {name!r} has no place in this config (untied lm_head, '
                    'qkv_bias or depth mismatch?)', path=source, field=name)
  return params


def params_to_hf_state_dict(params: decoder_lib.Params,
                            config: decoder_lib.DecoderConfig) -> dict[str, np.ndarray]:
  """Inverse of `params_from_hf_state_dict`: HF tensor name -> numpy array (`[out, in]`).

  Arrays are C-contiguous: `safetensors.numpy.save_file` writes a transposed view's memory as
  it lies, i.e. silently transposed.
  """
  out = {}
  for name, path, transpose in _hf_layout(config):
    value = np.asarray(_lookup(params, path))
    out[name] = np.ascontiguousarray(value.T if transpose else value)
  return out
