"""The end-to-end pipeline at tiny scale: markers, table, skip on re-run, resume, mismatches."""

import json
import os
import subprocess
import sys

import ml_collections
import numpy as np
import pytest

from minirec_jax import pipeline as ep
from minirec_jax.evaluation import predictions
from minirec_jax.infra.config_utils import load_config
from minirec_jax.pipeline import registry

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.join(REPO, 'experiments', 'run_pipeline.py')
TABLE_ROWS = ('| Most popular |', '| BPR-MF |', '| SASRec |', '| minirec-jax SFT (tiny) |',
              '| minirec-jax SFT+GRPO (tiny) |')
PIPELINE = 'tiny'
RUN_STAGES = list(ep.stages(load_config(f'configs/pipeline.py:{PIPELINE}'), '/'))


# One device instead of conftest's 4 fake ones: the sharded programs compile slower on 2
# cores, and multi-device training has its own tests.
MESH_STAGES = ('sft', 'sasrec', 'popularity', 'bpr', 'grpo')
ONE_DEVICE = tuple(f'--config.{stage}.mesh.num_devices=1' for stage in MESH_STAGES)


def _config(tfds_dir):
  config = load_config(f'configs/pipeline.py:{PIPELINE}')
  config.dataset.data.data_dir = tfds_dir  # shared by every stage
  for stage in MESH_STAGES:
    config[stage].mesh.num_devices = 1
  return config


def _markers(workdir):
  """stage -> (DONE.json text, its mtime in ns)."""
  out = {}
  for stage in RUN_STAGES:
    path = os.path.join(workdir, stage, ep.DONE_FILE)
    with open(path) as f:
      out[stage] = (f.read(), os.stat(path).st_mtime_ns)
  return out


@pytest.fixture(scope='module')
def finished(tmp_path_factory):
  root = tmp_path_factory.mktemp('pipeline')
  tfds_dir, workdir = str(root / 'tfds'), str(root / 'run')
  result = ep.run(_config(tfds_dir), workdir)
  return tfds_dir, workdir, result


def test_every_stage_finishes_with_a_marker_and_the_table(finished):
  tfds_dir, workdir, result = finished
  assert set(RUN_STAGES) == set(ep.STAGES) - {'tiger'}  # TIGER only when configured
  # The default tokenizer (LETTER) reads the SASRec stage's item embeddings.
  assert RUN_STAGES.index('sasrec') < RUN_STAGES.index('semantic_ids')
  assert result.status == {stage: 'ran' for stage in RUN_STAGES}
  keys = ep.stage_keys(ep.stages(_config(tfds_dir), workdir))
  for stage in RUN_STAGES:
    with open(os.path.join(workdir, stage, ep.DONE_FILE)) as f:
      done = json.load(f)
    assert done['stage'] == stage and done['key'] == keys[stage] and done['seconds'] >= 0
    assert result.seconds[stage] == done['seconds']
    assert os.path.isfile(os.path.join(workdir, stage, ep.CONFIG_FILE))
  with open(os.path.join(workdir, 'grpo', ep.CONFIG_FILE)) as f:
    grpo = json.load(f)
  assert grpo['init_from'] == os.path.join(workdir, 'sft')
  assert grpo['grpo']['reward_model'] == ''  # no collaborative reward by default
  with open(os.path.join(workdir, 'sft', ep.CONFIG_FILE)) as f:
    assert json.load(f)['sids']['path'] == os.path.join(workdir, 'semantic_ids')
  with open(os.path.join(workdir, ep.CONFIG_FILE)) as f:
    assert json.load(f)['dataset']['data']['data_dir'] == tfds_dir

  with open(os.path.join(workdir, 'results.md')) as f:
    markdown = f.read()
  assert markdown == result.markdown
  assert all(row in markdown for row in TABLE_ROWS)
  with open(os.path.join(workdir, 'results.json')) as f:
    results = json.load(f)
  # SFT/GRPO report on the first 32 test rows; SASRec ranks all, so the table uses those 32.
  assert results['rows'] == 32 and results['split_rows'] > 32
  sasrec = results['methods']['SASRec']
  assert sasrec['rows_ranked'] == results['split_rows']
  # On the same rows the table reproduces the SFT loop's own test metrics.
  with open(os.path.join(workdir, 'sft', 'results.json')) as f:
    sft_test = json.load(f)['test']
  table_sft = results['methods']['minirec-jax SFT (tiny)']['metrics']
  ranking_keys = [k for k in sft_test if k.split('@')[0] in ('hr', 'ndcg', 'mrr')]
  assert ranking_keys
  for key in ranking_keys:
    assert table_sft[key] == pytest.approx(sft_test[key], abs=1e-12)


def test_rerun_of_the_binary_skips_every_stage(finished):
  tfds_dir, workdir, result = finished
  before = _markers(workdir)
  done = subprocess.run(
      [sys.executable, BINARY,
       f'--config={os.path.join(REPO, "configs", "pipeline.py")}:{PIPELINE}',
       f'--config.dataset.data.data_dir={tfds_dir}', *ONE_DEVICE, f'--workdir={workdir}'],
      capture_output=True, text=True, cwd=REPO)
  assert done.returncode == 0, done.stderr[-3000:]
  assert all(row in done.stdout for row in TABLE_ROWS)
  # The timings table comes last: every stage skipped, with the seconds of the run that did it.
  timings = done.stdout[done.stdout.index('| stage | this run | seconds |'):].splitlines()
  expected = [f'| {s} | skipped | {result.seconds[s]:.0f} |' for s in RUN_STAGES]
  assert timings[2:2 + len(RUN_STAGES)] == expected
  assert timings[-1] == f'| total | | {sum(result.seconds.values()):.0f} |'
  assert list(result.seconds) == RUN_STAGES
  assert _markers(workdir) == before


def test_mistyped_field_is_an_error(tmp_path):
  done = subprocess.run(
      [sys.executable, BINARY, f'--config={os.path.join(REPO, "configs", "pipeline.py")}:tiny',
       '--config.sft.train.epochz=2', f'--workdir={tmp_path / "run"}'],
      capture_output=True, text=True, cwd=REPO)
  assert done.returncode != 0 and 'epochz' in done.stderr
  assert not os.path.exists(tmp_path / 'run')


def test_changed_config_names_the_field_and_the_folders_to_delete(finished):
  tfds_dir, workdir, _ = finished
  before = _markers(workdir)
  config = _config(tfds_dir)
  config.grpo.train.steps = 5
  with pytest.raises(ep.StageMismatchError) as error:
    ep.run(config, workdir)
  message = str(error.value)
  assert "'grpo'" in message and 'train.steps: 4 -> 5' in message
  assert message.endswith(f'rm -r {workdir}/grpo {workdir}/evaluation')
  assert _markers(workdir) == before


def test_stage_without_marker_is_rerun_and_later_ones_kept(finished):
  tfds_dir, workdir, result = finished
  before = _markers(workdir)
  os.remove(os.path.join(workdir, 'sasrec', ep.DONE_FILE))
  again = ep.run(_config(tfds_dir), workdir)
  assert again.status == {s: 'resumed' if s == 'sasrec' else 'skipped' for s in RUN_STAGES}
  after = _markers(workdir)
  assert after['sasrec'][1] > before['sasrec'][1]
  assert {s: m for s, m in after.items() if s != 'sasrec'} == {
      s: m for s, m in before.items() if s != 'sasrec'}
  # The loop resumed from its last checkpoint: same best parameters, same test metrics.
  with open(os.path.join(workdir, 'sasrec', ep.DONE_FILE)) as f:
    assert json.load(f)['outputs']['test'] == json.loads(before['sasrec'][0])['outputs']['test']
  assert again.results == result.results


def test_tiger_is_an_optional_stage_and_row(tmp_path):
  # The stage body is the SFT loop with arch=tiger (tests/tiger_loop_test.py trains it).
  config = load_config('configs/pipeline.py:tiny,tiger=True')
  plan = ep.REGISTRY.plan(config, str(tmp_path))
  order = list(plan.stages)
  assert set(order) == set(ep.STAGES) and order[-1] == 'evaluation'  # every registered stage
  assert order.index('sasrec') < order.index('semantic_ids') < order.index('tiger')
  tiger = plan.stages['tiger']
  assert tiger.deps == ('semantic_ids',) and tiger.config.model.arch == 'tiger'
  assert tiger.config.sids.path == str(tmp_path / 'semantic_ids')
  assert tiger.config.data == config.dataset.data
  assert 'tiger' in plan.stages['evaluation'].deps
  assert [m.display_name(plan) for m in plan.methods][-1] == 'TIGER (tiny)'
  # The other stages' keys are those of the default plan: adding TIGER reruns nothing else.
  default = ep.stage_keys(ep.stages(load_config('configs/pipeline.py:tiny'), str(tmp_path)))
  with_tiger = ep.stage_keys(plan.stages)
  assert all(with_tiger[name] == key for name, key in default.items() if name != 'evaluation')


@pytest.mark.parametrize('stage', ['sft', 'grpo'])
def test_a_policy_that_would_not_report_test_is_refused_when_planning(tmp_path, stage):
  config = load_config('configs/pipeline.py:tiny')
  config[stage].eval.report_splits = ('valid',)
  with pytest.raises(ValueError, match=f"{stage}.eval.report_splits=.'valid',.: the pipeline"):
    ep.stages(config, str(tmp_path))


def test_collaborative_reward_reads_the_pipelines_sasrec(tmp_path):
  config = load_config('configs/pipeline.py:tiny')
  plan = ep.stages(config, str(tmp_path))
  assert plan['grpo'].deps == ('sft',) and plan['grpo'].config.grpo.reward_model == ''
  config.grpo.grpo.rewards.collab = 0.5
  plan = ep.stages(config, str(tmp_path))
  assert plan['grpo'].deps == ('sft', 'sasrec')
  assert plan['grpo'].config.grpo.reward_model == str(tmp_path / 'sasrec')
  assert config.grpo.grpo.reward_model == ''  # the user's config is not modified
  # A changed SASRec config now changes the GRPO stage's key as well.
  before = ep.stage_keys(plan)
  config.sasrec.train.epochs += 1
  after = ep.stage_keys(ep.stages(config, str(tmp_path)))
  # The default tokenizer (LETTER) reads the SASRec too: the SIDs and the policies follow it.
  assert {s for s in before if before[s] != after[s]} == {
      'sasrec', 'semantic_ids', 'sft', 'grpo', 'evaluation'}


def test_evaluate_methods_uses_the_common_rows_and_sid_groups(tmp_path):
  rows = {  # method -> [(sample_index, target, ranked items)]
      'a': [(0, 1, [1, 2]), (1, 2, [3, 2]), (2, 5, [5])],
      'b': [(0, 1, [4, 9]), (1, 2, [2, 1])],
  }
  dirs = {}
  for name, samples in rows.items():
    dirs[name] = str(tmp_path / name)
    predictions.write(os.path.join(dirs[name], 'predictions_test.jsonl'), [
        predictions.make_row('u', t, items, -np.arange(len(items), dtype=float),
                             sample_index=i) for i, t, items in samples])
    with open(os.path.join(dirs[name], 'results.json'), 'w') as f:
      json.dump({'best_step': 7}, f)
  groups = np.array([0, 1, 2, 3, 1, 5, 6, 7, 8, 9])  # item 4 shares item 1's SID
  out = ep.evaluate_methods(dirs, (1, 2), {'a': None, 'b': groups})
  assert out['rows'] == 2  # sample 2 was ranked by 'a' only
  a, b = out['methods']['a'], out['methods']['b']
  assert a['rows_ranked'] == 3 and b['checkpoint'] == 'step 7'
  assert a['metrics']['hr@1'] == 0.5 and a['metrics']['ndcg@2'] == pytest.approx(
      (1 + 1 / np.log2(3)) / 2)
  # 4 counts as 1 at SID level only (same SID group); 2 hits at rank 0 at both levels.
  assert b['metrics']['sid_hr@1'] == 1.0 and b['metrics']['hr@1'] == 0.5
  assert 'sid_hr@1' not in a['metrics']  # no groups: item level only


def _toy_registry(inputs):
  """A registry of stages named like the keys of `inputs`, reading its values, in that order."""
  toy = registry.Registry()
  for name, reads in inputs.items():
    toy.register_stage(name, lambda config, folder, plan: {}, inputs=reads,
                       configure=lambda context: ml_collections.ConfigDict())
  return toy


def test_registered_stages_run_after_their_inputs(tmp_path):
  # A new stage and table row are registered without touching the others: the row's stage is
  # read by the evaluation, so it runs before it although it was registered after it.
  extended = ep.REGISTRY.copy()
  extended.register_stage('item_knn', lambda config, folder, plan: {}, inputs=('dataset',),
                          configure=lambda context: ml_collections.ConfigDict())
  extended.register_method('item_knn', 'Item-KNN')
  config = load_config('configs/pipeline.py:tiny')
  plan = extended.plan(config, str(tmp_path))
  default = list(ep.stages(config, str(tmp_path)))
  assert list(plan.stages) == [*default[:-1], 'item_knn', 'evaluation']
  assert plan.stages['evaluation'].deps == ('popularity', 'bpr', 'sasrec', 'sft', 'grpo',
                                            'item_knn')
  assert [m.display_name(plan) for m in plan.methods][-1] == 'Item-KNN'
  assert list(ep.stages(config, str(tmp_path))) == default  # the default is unchanged
  assert 'tiger' not in default  # TIGER runs only when configured

  toy = _toy_registry({'report': ('train',), 'train': ('data',), 'eval': ('train',), 'data': ()})
  order = list(toy.plan(ml_collections.ConfigDict(), str(tmp_path)).stages)
  assert order == ['data', 'train', 'report', 'eval']

  with pytest.raises(ep.StageGraphError, match=r"'report' reads \['trian'\], which are not"):
    _toy_registry({'data': (), 'report': ('trian',)}).plan(ml_collections.ConfigDict(), '')
  cyclic = _toy_registry({'data': (), 'train': ('data', 'report'), 'report': ('train',)})
  with pytest.raises(ep.StageGraphError, match='in a cycle: train reads report reads train$'):
    cyclic.plan(ml_collections.ConfigDict(), '')
  with pytest.raises(ep.StageGraphError, match="'data' is registered twice"):
    _toy_registry({'data': ()}).register_stage('data', lambda config, folder, plan: {})
