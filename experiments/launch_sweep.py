"""Runs one SFT config over model widths (or variants) and training-data fractions.

  python experiments/launch_sweep.py --config=configs/sft.py:dataset=industrial,variant=S \
      --widths=64,96,128,192,256 --data_fractions=1.0 --root=workdirs/sweep \
      [--mode=run|print] [-- extra --config.* flags for every run]

mode=run trains the runs one after another on this machine (finished runs, with a
results.json, are skipped, unfinished ones resume); mode=print prints one command per run for
a cluster scheduler. Then: python experiments/sweep_report.py --root=workdirs/sweep
"""

import os
import shlex
import subprocess
import sys

from absl import app
from absl import flags

_CONFIG = flags.DEFINE_string('config', 'configs/sft.py:dataset=industrial,variant=S',
                              'Base SFT config (path:args).')
_WIDTHS = flags.DEFINE_list('widths', [], 'Model widths (config.model.width).')
_VARIANTS = flags.DEFINE_list('variants', [], 'Model variants (config.model.variant).')
_DEPTHS = flags.DEFINE_list('depths', [], 'Model depths (config.model.depth); crossed with widths.')
_FRACTIONS = flags.DEFINE_list('data_fractions', ['1.0'], 'Fractions of the train split.')
_ROOT = flags.DEFINE_string('root', 'workdirs/sweep', 'Folder for the run workdirs.')
_MODE = flags.DEFINE_enum('mode', 'run', ['run', 'print'], 'Run here, or print commands.')

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def runs(extra: list[str]) -> list[tuple[str, list[str]]]:
  sizes = ([('variant', v) for v in _VARIANTS.value] or
           [('width', w) for w in _WIDTHS.value] or [('variant', None)])
  depths = _DEPTHS.value or [None]
  out = []
  for kind, size in sizes:
    for depth in depths:
      for fraction in _FRACTIONS.value:
        name = '_'.join(filter(None, [f'{kind}{size}' if size else 'base',
                                      f'depth{depth}' if depth else '', f'data{fraction}']))
        args = [f'--config={_CONFIG.value}', f'--workdir={os.path.join(_ROOT.value, name)}',
                f'--config.train.data_fraction={fraction}']
        if size:
          args.append(f'--config.model.{kind}={size}')
        if depth:
          args.append(f'--config.model.depth={depth}')
        out.append((name, args + extra))
  return out


def main(argv):
  extra = argv[1:]
  for name, args in runs(extra):
    cmd = [sys.executable, os.path.join(REPO, 'experiments', 'train_sft.py')] + args
    if _MODE.value == 'print':
      print(shlex.join(cmd))
      continue
    if os.path.exists(os.path.join(_ROOT.value, name, 'results.json')):
      print(f'{name}: done, skipped')
      continue
    print(f'{name}: running', flush=True)
    subprocess.run(cmd, check=True, cwd=REPO)


if __name__ == '__main__':
  app.run(main)
