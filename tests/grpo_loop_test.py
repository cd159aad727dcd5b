"""GRPO host loop end to end at tiny scale, from a tiny SFT workdir."""

import json
import os

import pytest

from minirec_jax.data import pipeline
from minirec_jax.data import synthetic
from minirec_jax.evaluation import predictions
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.loops import grpo as grpo_loop
from minirec_jax.loops import run as run_lib
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
  config.mesh.num_devices = 1  # GRPO below runs on all 4 devices in one test only
  workdir = str(root / 'sft')
  sft_loop.train_and_evaluate(config, workdir)
  return workdir


def _last_step_config(sft_workdir):
  """Tiny GRPO reporting its last step, saving `latest` every step between its valid checks
  (steps 0 and 4 only)."""
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.eval.report = 'last'
  config.grpo.sft_weight = 0.1
  config.train.eval_every_steps = config.train.steps
  config.ckpt.every_steps = 1
  config.mesh.num_devices = 1
  return config


@pytest.fixture(scope='module')
def last_step_run(sft_workdir, tmp_path_factory):
  """(workdir, results) of an uninterrupted `_last_step_config` run."""
  workdir = str(tmp_path_factory.mktemp('grpo_last'))
  return workdir, grpo_loop.train_and_evaluate(_last_step_config(sft_workdir), workdir)


def _train_rows(workdir):
  """metrics.jsonl's train rows as (step, metrics without timings), in file order."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    rows = [r for r in map(json.loads, f) if 'train/zero_advantage_groups' in r]
  return [(r['step'], {k: v for k, v in r.items() if k.startswith('train/')
                       and not k.endswith('_s')}) for r in rows]


def test_grpo_runs_from_sft_and_reports_the_last_step(sft_workdir, last_step_run):
  workdir, results = last_step_run
  assert results['report_step'] == _last_step_config(sft_workdir).train.steps
  # The reported metrics are those of the predictions file, at both levels.
  groups = predictions.load_item_groups(os.path.join(workdir, predictions.ITEM_GROUPS_FILE))
  recomputed = predictions.file_metrics(os.path.join(workdir, 'predictions_test.jsonl'),
                                        (1, 5, 10), item_to_group=groups)
  assert recomputed.samples == results['test']['examples']
  for key in ('hr@10', 'ndcg@10', 'sid_hr@10', 'sid_ndcg@10'):
    assert recomputed.metrics[key] == pytest.approx(results['test'][key], abs=1e-12)
  rows = _train_rows(workdir)
  assert [step for step, _ in rows] == [1, 2, 3, 4]
  assert all('train/target_nll' in r for _, r in rows)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    assert all(r['train/rollout_s'] > 0 for r in map(json.loads, f) if 'train/rollout_s' in r)


def test_a_crashed_run_resumes_to_the_uninterrupted_results(sft_workdir, last_step_run, tmp_path,
                                                          monkeypatch):
  reference, expected = last_step_run
  opened = []
  real_checkpoints = run_lib.Run.checkpoints
  monkeypatch.setattr(run_lib.Run, 'checkpoints', lambda self, *args: opened.append(
      real_checkpoints(self, *args)) or opened[-1])
  real_rollout = grpo_loop.rollout_lib.rollout
  calls = []

  def crash_at_step_3(*args, **kwargs):
    calls.append(None)
    if len(calls) == 3:
      raise RuntimeError('host lost')
    return real_rollout(*args, **kwargs)

  monkeypatch.setattr(grpo_loop.rollout_lib, 'rollout', crash_at_step_3)
  crashed = str(tmp_path / 'crashed')
  with pytest.raises(RuntimeError, match='host lost'):
    grpo_loop.train_and_evaluate(_last_step_config(sft_workdir), crashed)
  opened[0].close()  # the step-2 save lands, as a killed process's finished save would
  assert opened[0].latest_step() == 2 and not os.path.exists(os.path.join(crashed, 'results.json'))
  monkeypatch.setattr(grpo_loop.rollout_lib, 'rollout', real_rollout)
  resumed = grpo_loop.train_and_evaluate(_last_step_config(sft_workdir), crashed)
  assert resumed['valid'] == expected['valid'] and resumed['test'] == expected['test']
  # Steps 1-2 logged before the crash, 3-4 after it: resumed at step 2, not started again.
  assert _train_rows(crashed) == _train_rows(reference)


def test_unknown_report_mode_fails_before_training(sft_workdir, tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.eval.report = 'final'
  with pytest.raises(ValueError, match="'best' or 'last'"):
    grpo_loop.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def _scripted_valid(monkeypatch, values):
  """sft_loop.evaluate with valid NDCG@10 during training replaced by `values` in turn; the
  final report (keep_predictions) and every test evaluation stay real. Returns the splits
  evaluated during training."""
  real = sft_loop.evaluate
  seen = []

  def evaluate(s, params, eval_config, split, max_examples, keep_predictions=False, **kwargs):
    result = real(s, params, eval_config, split, max_examples, keep_predictions, **kwargs)
    if not keep_predictions:
      seen.append(split)
      result.metrics['ndcg@10'] = values[len(seen) - 1]
    return result

  monkeypatch.setattr(sft_loop, 'evaluate', evaluate)
  return seen


def test_best_report_keeps_the_valid_best_step(sft_workdir, tmp_path, monkeypatch):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.eval.report = 'best'
  config.train.eval_every_steps = 1
  config.mesh.num_devices = 1
  # Valid peaks after step 2, then falls: whatever test would say, step 2 is reported.
  valid = [0.1, 0.2, 0.9] + [0.3] * config.train.steps
  seen = _scripted_valid(monkeypatch, valid)
  results = grpo_loop.train_and_evaluate(config, str(tmp_path))
  assert seen == ['valid'] * (config.train.steps + 1)  # step 0, then every step; never test
  assert results['report_step'] == 2
  assert results['test']['examples'] > 0


def test_collaborative_reward_without_a_model_fails_before_training(sft_workdir, tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py'))
  config.init_from = sft_workdir
  assert config.grpo.rewards.collab > 0 and not config.grpo.reward_model  # the defaults
  with pytest.raises(ValueError, match='needs a collaborative model'):
    grpo_loop.train_and_evaluate(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_text_prompt_sources_need_a_language_model(sft_workdir, tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  config.init_from = sft_workdir
  config.grpo.prompt_sources = ('item_text',)
  with pytest.raises(ValueError, match='need a language-model policy'):
    grpo_loop.train_and_evaluate(config, str(tmp_path))


def test_a_valid_only_report_never_decodes_test(sft_workdir, tmp_path):
  # What ablations use: the chosen checkpoint is reported on valid, test is not even decoded.
  policy = artifacts.load_policy(sft_workdir)
  config = artifacts.workdir_config(sft_workdir)
  config.eval.report_splits = ('valid',)
  results = sft_loop.report_splits(config, str(tmp_path), policy.setup, policy.params)
  assert list(results) == ['valid'] and results['valid']['examples'] > 0
  assert os.path.exists(tmp_path / 'predictions_valid.jsonl')
  assert not any('test' in name for name in os.listdir(tmp_path))


def test_valid_report_rows_apart_from_test_rows(sft_workdir, tmp_path):
  # A slow policy (configs/grpo.py:llm) reports valid on its 500-row selection prefix and test
  # in full; here 5 valid rows against 7 test rows.
  policy = artifacts.load_policy(sft_workdir)
  config = artifacts.workdir_config(sft_workdir)
  config.eval.report_max_examples, config.eval.valid_report_max_examples = 7, 5
  results = sft_loop.report_splits(config, str(tmp_path), policy.setup, policy.params)
  assert results['valid']['examples'] == 5 and results['test']['examples'] == 7


def test_prompt_rows_can_leave_out_the_rows_the_sft_trained_on(sft_workdir):
  policy = artifacts.load_policy(sft_workdir)
  config = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  train = policy.setup.dataset.split('train')
  assert tuple(config.train.prompt_rows) == (0.0, 1.0)
  rows = grpo_loop.prompt_rows(config, policy)
  assert (rows.start, rows.stop) == (0, len(train))
  config.train.prompt_rows = (0.5, 1.0)  # as after an SFT with train.data_fraction=0.5
  rows = grpo_loop.prompt_rows(config, policy)
  assert (rows.start, rows.stop) == (pipeline.leading_rows(len(train), 0.5), len(train))
  assert rows[0]['user_id'] == train[rows.start]['user_id']


@pytest.mark.parametrize('splits', [(), ('valid', 'valid'), ('train',), ('test', 'dev')])
def test_bad_report_splits_fail_before_training(sft_workdir, tmp_path, splits):
  sft = load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny')
  grpo = load_config(os.path.join(REPO, 'configs', 'grpo.py') + ':tiny')
  grpo.init_from = sft_workdir
  for config, train in ((sft, sft_loop.train_and_evaluate), (grpo, grpo_loop.train_and_evaluate)):
    config.eval.report_splits = splits
    with pytest.raises(ValueError, match='eval.report_splits must be a non-empty subset'):
      train(config, str(tmp_path / 'run'))
    assert not os.path.exists(tmp_path / 'run')


def test_sft_refuses_to_select_on_test(tmp_path):
  config = load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny')
  config.eval.split = 'test'
  with pytest.raises(ValueError, match='valid split only'):
    sft_loop.train_and_evaluate(config, str(tmp_path / 'sft'))
  assert not os.path.exists(tmp_path / 'sft')


@pytest.mark.parametrize('field, value', [('trainable_layers', 2), ('new_rows_lr_scale', 10.0)])
def test_backbone_only_options_are_refused_without_a_backbone(tmp_path, field, value):
  config = load_config(os.path.join(REPO, 'configs', 'sft.py') + ':dataset=industrial,tiny')
  config.train[field] = value
  with pytest.raises(ValueError, match=f'train.{field}={value}'):
    sft_loop.train_and_evaluate(config, str(tmp_path / 'sft'))
  assert not os.path.exists(tmp_path / 'sft')
