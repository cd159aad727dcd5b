"""A beam-search evaluation killed part way resumes from its partial file to identical results."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.data import sid_sequences
from minirec_jax.evaluation import generative
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.semantic_ids import catalogue as catalogue_lib
from minirec_jax.testing import hf_reference

_LEVELS, _CODES, _ITEMS, _PROMPT_ITEMS, _ROWS = 3, 8, 40, 4, 22


class _Killed(Exception):
  pass


@dataclasses.dataclass(eq=False)
class _DiesAfter(generative.Recommender):
  """A recommender whose `rank` raises after `calls_left` calls (a killed process)."""

  calls_left: int = -1

  def rank(self, params, prompts, k):
    if self.calls_left == 0:
      raise _Killed()
    self.calls_left -= 1
    return super().rank(params, prompts, k)


@pytest.fixture(scope='module')
def setup():
  codes = hf_reference.random_sids(_ITEMS, _LEVELS, _CODES)
  sids = catalogue_lib.SidCatalogue.from_codes(codes, _CODES)
  config = variants.decoder_config('tiny', sid_sequences.SidVocab(_LEVELS, _CODES).vocab_size)
  tokens = jnp.zeros((1, 1), jnp.int32)
  params = decoder_lib.Decoder(config).init(jax.random.key(0), tokens, tokens)['params']
  params = jax.tree.map(lambda x: 4.0 * x, params)  # scores far from ties
  history, lengths = hf_reference.random_histories(_ITEMS, _ROWS, _PROMPT_ITEMS, seed=1)
  rng = np.random.default_rng(2)
  rows = [{'user_id': f'u{i}'.encode(), 'history': history[i, :lengths[i]],
           'target': int(rng.integers(_ITEMS))} for i in range(_ROWS)]
  return config, sids, params, rows


def _evaluate(rec, params, rows, **kwargs):
  return generative.evaluate(rec, params, rows, beam_size=5, batch_size=4, ks=(1, 5),
                             split='test', keep_predictions=True, **kwargs)


def test_killed_evaluation_resumes_to_identical_results(setup, tmp_path):
  config, sids, params, rows = setup
  expected = _evaluate(_DiesAfter(config, sids, _PROMPT_ITEMS, np.zeros(_ITEMS)), params, rows)
  path = str(tmp_path / 'eval_test.partial.json')
  dying = _DiesAfter(config, sids, _PROMPT_ITEMS, np.zeros(_ITEMS), calls_left=3)
  with pytest.raises(_Killed):
    _evaluate(dying, params, rows, resume_file=path, save_every_s=0.0)
  assert os.path.isfile(path)  # 3 of the 6 batches saved

  counting = _DiesAfter(config, sids, _PROMPT_ITEMS, np.zeros(_ITEMS), calls_left=100)
  got = _evaluate(counting, params, rows, resume_file=path, save_every_s=0.0)
  assert counting.calls_left == 100 - 3  # only the batches after the saved ones ran
  assert got.metrics == expected.metrics
  assert got.predictions == expected.predictions
  assert not os.path.exists(path)  # removed once complete


def test_partial_file_of_other_parameters_is_refused(setup, tmp_path):
  config, sids, params, rows = setup
  path = str(tmp_path / 'eval_test.partial.json')
  dying = _DiesAfter(config, sids, _PROMPT_ITEMS, np.zeros(_ITEMS), calls_left=1)
  with pytest.raises(_Killed):
    _evaluate(dying, params, rows, resume_file=path, save_every_s=0.0)
  other = jax.tree.map(lambda x: x + 1.0, params)
  rec = generative.Recommender(config, sids, _PROMPT_ITEMS, np.zeros(_ITEMS))
  with pytest.raises(ValueError, match='eval_test.partial.json: a partial evaluation of another'):
    _evaluate(rec, other, rows, resume_file=path)
