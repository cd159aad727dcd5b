"""The public API: the README example runs and learns; importing the package stays cheap."""

import os
import runpy
import subprocess
import sys

import numpy as np

import minirec_jax

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'docs',
                       'api_example.py')


def test_readme_example_runs_and_its_loss_decreases(capsys):
  namespace = runpy.run_path(EXAMPLE, run_name='__main__')
  losses = namespace['losses']
  assert len(losses) == 30 and np.all(np.isfinite(losses))
  assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.2
  assert 'step 29' in capsys.readouterr().out


def test_import_is_lazy_and_every_export_resolves_without_tensorflow():
  code = ('import sys, minirec_jax as mr\n'
          'heavy = [m for m in ("jax", "flax", "tensorflow_datasets") if m in sys.modules]\n'
          'assert not heavy, heavy\n'
          'missing = [n for n in mr.__all__ if getattr(mr, n, None) is None]\n'
          'assert not missing, missing\n'
          'assert "tensorflow" not in sys.modules\n')
  done = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True)
  assert done.returncode == 0, done.stderr[-2000:]


def test_unknown_names_raise_attribute_error():
  assert not hasattr(minirec_jax, 'no_such_thing')
  assert 'make_sft_step' in dir(minirec_jax)
