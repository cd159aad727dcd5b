"""GRPO host loop end to end at tiny scale, from a tiny SFT workdir."""

import json
import os

import pytest

from minirec_jax.data import synthetic
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import sft as sft_loop
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def sft_workdir(tmp_path_factory):
  root = tmp_path_factory.mktemp('grpo_loop')
  data_root = write_synthetic_layout(str(root / 'data'), synthetic.SyntheticParams(
      num_items=40, num_clusters=4, num_users=50, seed=1))
  config = load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny')
  config.data.category = 'Toy'
  config.data.manual_dir = data_root
  config.data.data_dir = str(root / 'tfds')
  config.train.epochs = 2
  workdir = str(root / 'sft')
  sft_loop.train_and_evaluate(config, workdir)
  return workdir


def test_grpo_runs_from_sft_and_reports_the_last_step(sft_workdir, tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.eval.report = 'last'
  config.grpo.sft_weight = 0.1
  results = grpo_loop.train_and_evaluate(config, str(tmp_path))
  assert results['report_step'] == config.train.steps
  assert results['test']['examples'] > 0 and 0.0 <= results['test']['hr@10'] <= 1.0
  assert os.path.exists(tmp_path / 'predictions_test.jsonl')
  with open(tmp_path / 'metrics.jsonl') as f:
    train_rows = [r for r in map(json.loads, f) if 'train/zero_advantage_groups' in r]
  assert len(train_rows) == config.train.steps
  assert all('train/target_nll' in r and r['train/rollout_s'] > 0 for r in train_rows)


def test_unknown_report_mode_fails_before_training(sft_workdir, tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.eval.report = 'final'
  with pytest.raises(ValueError, match="'best' or 'last'"):
    grpo_loop.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)
