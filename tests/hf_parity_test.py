"""Our decoder against transformers' Qwen2ForCausalLM with the same weights (bench extra only).

Skipped when torch or transformers is not installed (CI installs neither). Exercises the
helpers of minirec_jax.testing.hf_reference (shared with experiments/bench_hf.py) on a tiny
model: logits, top-k next tokens, and the top-k items of constrained beam search with the
official prefix_allowed_tokens_fn style.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip('torch')
pytest.importorskip('transformers')

from minirec_jax.data import sid_sequences  # noqa: E402
from minirec_jax.evaluation import generative  # noqa: E402
from minirec_jax.models import decoder as decoder_lib  # noqa: E402
from minirec_jax.models import variants  # noqa: E402
from minirec_jax.semantic_ids import catalogue as catalogue_lib  # noqa: E402
from minirec_jax.testing import hf_reference  # noqa: E402

_LEVELS, _CODES, _ITEMS, _PROMPT_ITEMS = 3, 8, 60, 4


@pytest.fixture(scope='module')
def setup():
  codes = hf_reference.random_sids(_ITEMS, _LEVELS, _CODES)
  codes[-1] = codes[3]  # a collided item: decoding must name its group's first item
  sids = catalogue_lib.SidCatalogue.from_codes(codes, _CODES)
  vocab = sid_sequences.SidVocab(_LEVELS, _CODES)
  rec = generative.Recommender(variants.decoder_config('tiny', vocab.vocab_size), sids,
                               _PROMPT_ITEMS, np.zeros(_ITEMS))
  tokens = jnp.zeros((1, 1), jnp.int32)

  @jax.jit
  def init(key):
    params = decoder_lib.Decoder(rec.config).init(key, tokens, tokens)['params']
    # Sharper than the 0.02 init, so that beam scores are far from ties.
    return jax.tree.map(lambda x: 4.0 * x, params)

  params = init(jax.random.key(1))
  history, lengths = hf_reference.random_histories(_ITEMS, 6, _PROMPT_ITEMS, seed=2)
  return rec, params, hf_reference.hf_model(rec.config, params), history, lengths


def test_logits_and_top_tokens_agree(setup):
  rec, params, model, history, lengths = setup
  assert lengths.min() < _PROMPT_ITEMS  # some prompts are left-padded
  parity = hf_reference.logits_parity(rec.config, params, model,
                                      rec.prompts(history, lengths), k=5, tol=1e-4)
  assert parity['positions'] == int(lengths.sum()) * _LEVELS
  assert parity['logits_max_abs_diff'] <= 1e-4
  assert parity['top5_tokens_equal_rate'] == 1.0


def test_constrained_beam_search_agrees(setup):
  rec, params, model, history, lengths = setup
  beam, k = 10, 5
  ours, our_scores = rec.rank(params, rec.prompts(history, lengths), beam)  # SIDs, as HF
  table = hf_reference.prefix_table(rec.item_tokens)
  tokens, scores = hf_reference.hf_beam_search(model, rec.prompts(history, lengths), table,
                                               beam=beam, num_levels=_LEVELS)
  theirs = hf_reference.tokens_to_items(rec, tokens)
  assert theirs.shape == ours.shape == (len(lengths), beam)
  assert np.all(theirs[:, :k] >= 0)  # every returned SID is in the catalogue
  assert _ITEMS - 1 not in theirs  # the collided item is named by its group's first item
  np.testing.assert_array_equal(theirs[:, :k], ours[:, :k])
  np.testing.assert_allclose(scores[:, :k], our_scores[:, :k], atol=1e-4)


def test_prefix_table():
  item_tokens = np.array([[1, 9, 17], [1, 9, 18], [2, 10, 17]])
  table = hf_reference.prefix_table(item_tokens)
  assert table[()] == [1, 2]
  assert table[(1,)] == [9]
  assert table[(1, 9)] == [17, 18]
  assert table[(2, 10)] == [17]
  assert (2, 9) not in table
  allowed = hf_reference.allowed_tokens_fn(table, prompt_len=2)
  assert allowed(0, torch.tensor([5, 6, 1, 9])) == [17, 18]
  assert allowed(0, torch.tensor([5, 6, 2, 9])) == [sid_sequences.PAD_TOKEN]


def test_ranked_agreement_allows_only_near_ties():
  scores = np.array([[-1.0, -2.0, -2.00001, -3.0]] * 3)
  ids_a = np.array([[7, 8, 9, 4]] * 3)
  ids_b = np.array([[7, 8, 9, 4], [7, 9, 8, 4], [8, 7, 9, 4]])
  strict, ties_aside = hf_reference.ranked_agreement(ids_a, scores, ids_b, scores, k=3, tol=1e-4)
  np.testing.assert_array_equal(strict, [True, False, False])
  np.testing.assert_array_equal(ties_aside, [True, True, False])
  shifted = scores + np.array([0.0, 0.0, 1e-3, 0.0])
  _, ties_aside = hf_reference.ranked_agreement(ids_a, scores, ids_a, shifted, k=3, tol=1e-4)
  assert not ties_aside.any()
