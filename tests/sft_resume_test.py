"""SFT end to end at tiny scale; a SIGKILLed run resumes to the same final metrics."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from minirec_jax.data import synthetic
from minirec_jax.testing import write_synthetic_layout

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def data_root(tmp_path_factory):
  """A small dataset in the official layout (with SIDs), made from the synthetic generator."""
  return write_synthetic_layout(str(tmp_path_factory.mktemp('data')), synthetic.SyntheticParams(
      num_items=60, num_clusters=6, num_users=80, seed=0))


def _command(data_root, workdir):
  return [sys.executable, os.path.join(REPO, 'experiments', 'train_sft.py'),
          f'--config={os.path.join(REPO, "configs", "sft.py")}:dataset=industrial,tiny',
          '--config.data.category=Toy', f'--config.data.manual_dir={data_root}',
          f'--config.data.data_dir={os.path.dirname(workdir)}/tfds',
          '--config.train.epochs=2', '--config.train.eval_every_steps=20',
          '--config.ckpt.every_steps=5', f'--workdir={workdir}',
          # One device: sharded resumption is tests/sft_parallel_test.py's; 4 compile slower.
          '--config.mesh.num_devices=1']


def _final(workdir):
  with open(os.path.join(workdir, 'results.json')) as f:
    return json.load(f)


def test_killed_run_resumes_to_identical_results(data_root, tmp_path):
  reference = str(tmp_path / 'reference')
  done = subprocess.run(_command(data_root, reference), capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-3000:]
  expected = _final(reference)
  assert expected['test']['examples'] > 0 and 'ndcg@10' in expected['test']

  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(_command(data_root, killed), stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  latest = os.path.join(killed, 'checkpoints', 'latest')
  deadline = time.time() + 240
  while time.time() < deadline and proc.poll() is None:
    steps = [d for d in os.listdir(latest) if d.isdigit()] if os.path.isdir(latest) else []
    if steps and int(max(steps, key=int)) >= 10:
      break
    time.sleep(0.05)
  assert proc.poll() is None, 'the run finished before it could be killed'
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert not os.path.exists(os.path.join(killed, 'results.json'))
  resumed = subprocess.run(_command(data_root, killed), capture_output=True, text=True)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  # Library INFO lines go to the workdir's log file (infra/console.py), one part per run.
  with open(os.path.join(killed, 'log.txt')) as f:
    runs = f.read().split('] command: ')
  assert len(runs) == 3 and 'resumed at step' in runs[2] and 'resumed at step' not in runs[1]
  got = _final(killed)
  assert got['test'] == expected['test']
  assert got['valid'] == expected['valid']
