"""A language model's mean-pooled hidden states as item-text embeddings (tiny random Llama)."""

import functools
import os
import types

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from minirec_jax.data.schema import ItemTable
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import lm_embeddings
from minirec_jax.semantic_ids import embeddings
from minirec_jax.semantic_ids import item_text
from minirec_jax.semantic_ids import stage
from minirec_jax.testing import tiny_llm

TEXTS = ['the glue', 'a saw that cuts the wood' * 5, 'tape', 'hot glue gun. Strong, fast.']


@pytest.fixture(scope='module')
def llama_dir(tmp_path_factory):
  return tiny_llm.write_tiny_llama(str(tmp_path_factory.mktemp('tiny_llama') / 'tiny-llama'))


def _alone(encoder, text):
  """The embedding of one text by a forward pass over exactly its tokens (no padding)."""
  ids = jnp.asarray([encoder.tokenize([text])[0]], jnp.int32)
  positions = jnp.arange(ids.shape[1])[None]
  config, params = encoder._backbone.config, encoder._backbone.params
  hidden = jax.jit(functools.partial(decoder_lib.Decoder(config).apply, hidden_only=True))(
      {'params': params}, ids, positions)[0]
  pooled = np.asarray(hidden).mean(0)
  return pooled / np.linalg.norm(pooled)


def test_padded_batches_equal_each_text_encoded_alone(llama_dir):
  encoder = lm_embeddings.MeanPoolEncoder(f'hf:{llama_dir}', max_tokens=40)
  assert encoder.name == 'tiny-llama-mean'
  tokens = encoder.tokenize(TEXTS)
  assert len(tokens[1]) == 40 and len(tokens[2]) < 40  # the long text is cut
  out = embeddings.embed_texts(TEXTS, encoder, batch_size=8)
  assert out.shape == (len(TEXTS), encoder.hidden) and out.dtype == np.float32
  want = np.stack([_alone(encoder, t) for t in TEXTS])
  np.testing.assert_allclose(out, want, atol=2e-5)
  np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
  assert np.abs(out[0] - out[3]).max() > 1e-3  # different texts, different vectors


def test_hidden_states_are_what_the_head_reads(llama_dir):
  encoder = lm_embeddings.MeanPoolEncoder(f'hf:{llama_dir}')
  config, params = encoder._backbone.config, encoder._backbone.params
  ids = jnp.asarray([encoder.tokenize(['the glue gun'])[0]], jnp.int32)
  positions = jnp.arange(ids.shape[1])[None]
  model = decoder_lib.Decoder(config)
  hidden = model.apply({'params': params}, ids, positions, hidden_only=True)
  logits = model.apply({'params': params}, ids, positions)
  np.testing.assert_allclose(hidden @ params['embed_tokens']['embedding'].T, logits, atol=1e-5)
  with pytest.raises(ValueError, match='without a cache'):
    model.apply({'params': params}, ids, positions, jnp.ones((1, 3, 3), bool),
                cache=decoder_lib.init_cache(config, 1, 8), hidden_only=True)


def test_the_tokenizer_stage_embeds_with_a_backbone_and_caches(llama_dir, tmp_path):
  items = ItemTable(title=['Glue', 'Saw', 'Tape'], description=['Strong.', '', ''],
                    sid=['', '', ''])
  dataset = types.SimpleNamespace(items=items, name='toy/1.0', num_items=3)
  config = ml_collections.ConfigDict({'embeddings': {
      'source': f'hf:{llama_dir}', 'path': '', 'cache_dir': str(tmp_path)}})
  with pytest.raises(ValueError, match='needs an encoder loader'):
    stage.item_vectors(config, dataset)
  loaded = []

  def load(spec):
    loaded.append(lm_embeddings.MeanPoolEncoder(spec))
    return loaded[-1]

  first = stage.item_vectors(config, dataset, load)
  assert first.shape == (3, 32) and '_backbone' in vars(loaded[0])
  path = embeddings.cache_path(item_text.item_texts(items), 'toy/1.0', 'tiny-llama-mean',
                               str(tmp_path))
  assert os.path.isfile(path)
  again = stage.item_vectors(config, dataset, load)
  np.testing.assert_array_equal(first, again)
  assert '_backbone' not in vars(loaded[1])  # a cache hit never reads the model


def test_a_bad_spec_or_an_empty_text_is_refused(llama_dir):
  with pytest.raises(ValueError, match='unknown backbone'):
    lm_embeddings.MeanPoolEncoder('llama-7b')
  with pytest.raises(ValueError, match='text 1'):
    lm_embeddings.MeanPoolEncoder(f'hf:{llama_dir}').tokenize(['glue', ''])
