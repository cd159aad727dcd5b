"""TIGER through the SFT loop (`configs/sft.py:...,arch=tiger`): trains, evaluates with the same
trie and metrics, reloads, and is refused where it does not fit (GRPO, a backbone)."""

import json
import os

import numpy as np
import pytest

from minirec_jax.data import synthetic
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import encoder_decoder
from minirec_jax.testing import write_synthetic_layout


def _config(root, **model):
  config = load_config('configs/sft.py:dataset=industrial,arch=tiger,tiny')
  config.data.category = 'Toy'
  config.data.manual_dir = write_synthetic_layout(str(root / 'data'), synthetic.SyntheticParams(
      num_items=60, num_clusters=6, num_users=80, seed=0))
  config.data.data_dir = str(root / 'tfds')
  config.mesh.num_devices = 1
  config.model.update(model)
  return config


def test_tiger_trains_evaluates_and_reloads(tmp_path):
  config = _config(tmp_path)
  workdir = str(tmp_path / 'tiger')
  results = sft_loop.train_and_evaluate(config, workdir)
  assert results['test']['examples'] > 0 and 0 <= results['test']['hr@10'] <= 1
  policy = artifacts.load_policy(workdir)
  assert policy.name == 'TIGER (tiny)'
  assert isinstance(policy.setup.model_config, encoder_decoder.EncoderDecoderConfig)
  items, scores = policy.setup.recommender.recommend(policy.params, np.array([[0, 1, 2]]),
                                                     np.array([3]), k=5)
  assert items.shape == (1, 5) and np.all(np.diff(scores[0]) <= 1e-6)
  # The epoch's training FLOPs the loop logs are epoch_cost's: every example of a full batch.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    model = next(r for r in map(json.loads, f) if 'model/train_flops_per_epoch' in r)
  cost = sft_loop.epoch_cost(config)
  assert model['model/train_flops_per_epoch'] == cost['train_flops_per_epoch'] > 0
  assert cost['train_flops_per_epoch'] == (model['model/train_flops_per_example'] *
                                           cost['steps_per_epoch'] * config.train.batch_size)
  grpo = load_config('configs/grpo.py:tiny')
  grpo.init_from = workdir
  with pytest.raises(ValueError, match='TIGER'):
    grpo_loop.train_and_evaluate(grpo, str(tmp_path / 'grpo'))


def test_user_tokens_lead_the_encoder_input(tmp_path):
  config = _config(tmp_path, num_user_buckets=8)
  rec = sft_loop.setup(config).recommender
  prompts = rec.prompts(np.array([[0, 1, -1], [2, -1, -1]]), np.array([2, 1]),
                        users=[b'A1', b'A2'])
  vocab = rec.config.vocab_size
  for row, n in enumerate([2, 1]):
    real = prompts['enc_tokens'][row][prompts['enc_mask'][row]]
    assert len(real) == 1 + 3 * n and vocab <= real[0] < vocab + 8
    np.testing.assert_array_equal(real[1:], rec.item_tokens[[0, 1] if n == 2 else [2]].ravel())


def test_tiger_with_a_backbone_is_refused(tmp_path):
  config = _config(tmp_path)
  config.model.backbone = 'smollm2-135m'
  with pytest.raises(ValueError, match='unset model.backbone'):
    sft_loop.setup(config)
