"""MiniLM in JAX agrees with sentence-transformers; item text; embedding cache and loader."""

import os

import numpy as np
import pytest

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
  ours = embeddings.embed_texts(sentences, encoder, batch_size=8)
  cosine = np.sum(ours * reference, 1) / (np.linalg.norm(ours, axis=1) *
                                          np.linalg.norm(reference, axis=1))
  assert cosine.min() >= 0.999, cosine
  np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)


def test_padding_does_not_change_an_embedding(encoder):
  ids = encoder.tokenize(['a portable camping lantern'])[0]
  short = np.array([ids]), np.ones((1, len(ids)), bool)
  padded_ids = np.zeros((1, len(ids) + 9), np.int32)
  padded_ids[0, :len(ids)] = ids
  padded_mask = padded_ids > 0
  np.testing.assert_allclose(np.asarray(encoder.encode_batch(*short)),
                             np.asarray(encoder.encode_batch(padded_ids, padded_mask)), atol=1e-5)


def test_official_item_text_rule():
  assert item_text.clean_text('Hi &amp; <b>bye</b>...') == 'Hi & bye.'
  assert item_text.clean_text('say "x"\nnow\r') == 'say xnow.'
  assert item_text.clean_text('a' * 1999) == ''  # 2000 chars with the final '.'
  assert item_text.item_text('Glue', '') == 'Glue.'
  assert item_text.item_text('', '') == 'unknown item'
  assert item_text.item_text('Glue.', "['Strong.']") == "Glue. ['Strong.']."


class _CountingEncoder:
  name = 'counting'

  def __init__(self, inner):
    self.inner, self.config, self.calls = inner, inner.config, 0

  def tokenize(self, texts):
    return self.inner.tokenize(texts)

  def encode_batch(self, ids, mask):
    self.calls += 1
    return self.inner.encode_batch(ids, mask)


def test_cache_hit_and_miss(encoder, tmp_path):
  items = ItemTable(title=['Glue', 'Tape', 'Saw'], description=['', '', ''], sid=['', '', ''])
  counting = _CountingEncoder(encoder)
  first = embeddings.item_embeddings(items, 'toy/1.0', str(tmp_path), counting)
  assert counting.calls == 1 and first.shape == (3, 384)
  again = embeddings.item_embeddings(items, 'toy/1.0', str(tmp_path), counting)
  assert counting.calls == 1
  np.testing.assert_array_equal(first, again)
  changed = ItemTable(title=['Glue', 'Tape', 'Drill'], description=['', '', ''],
                      sid=['', '', ''])
  embeddings.item_embeddings(changed, 'toy/1.0', str(tmp_path), counting)
  assert counting.calls == 2 and len(os.listdir(tmp_path)) == 2


def test_user_embeddings_loader(tmp_path):
  good = tmp_path / 'e.npy'
  np.save(good, np.ones((4, 8)))
  assert embeddings.load_user_embeddings(str(good), 4).shape == (4, 8)
  with pytest.raises(DataError, match=r'expected shape \[5, d\]'):
    embeddings.load_user_embeddings(str(good), 5)
  bad = np.ones((4, 8))
  bad[2, 3] = np.nan
  np.save(tmp_path / 'bad.npy', bad)
  with pytest.raises(DataError, match="field 'row 2'"):
    embeddings.load_user_embeddings(str(tmp_path / 'bad.npy'), 4)
