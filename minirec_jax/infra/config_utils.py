"""Config helpers: `path.py:key=value` arguments, dataset presets, loading config files."""

from __future__ import annotations

import ast
import importlib.util
import os

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/config.py[:arg]` (relative paths resolve against the repository root)."""
  path, _, arg = spec.partition(':')
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(REPO_ROOT, path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'config file not found: {path}')
  module_spec = importlib.util.spec_from_file_location(
      f'_minirec_config_{abs(hash(path))}', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if arg else module.get_config()


def parse_arg(arg: str | None, **defaults):
  """Parses 'a=1,b=x,flag' into a dict, typed like `defaults` (a bare name means True).

  Example: parse_arg('dataset=industrial,tiny', dataset='ml100k', tiny=False)
  -> {'dataset': 'industrial', 'tiny': True}. Unknown keys are an error naming the key.
  """
  out = dict(defaults)
  for part in filter(None, (arg or '').split(',')):
    key, eq, value = part.partition('=')
    key = key.strip()
    if key not in defaults:
      raise ValueError(f'unknown config argument {key!r}; known: {sorted(defaults)}')
    if not eq:
      out[key] = True
      continue
    kind = type(defaults[key])
    if kind is bool:
      out[key] = value.strip().lower() in ('1', 'true', 'yes')
    elif kind in (int, float):
      out[key] = kind(ast.literal_eval(value.strip()))
    else:
      out[key] = value.strip()
  return out


# Default location of the official layout: the project's shared development data, which sits
# beside the repository; users point `data.manual_dir` at their own copy.
OFFICIAL_ROOT = os.path.normpath(os.path.join(REPO_ROOT, '..', 'shared', 'data',
                                              'amazon18'))


def data_config(name: str) -> ml_collections.ConfigDict:
  """The `data` section of every experiment config."""
  base = dict(name='', category='', manual_dir='', data_dir='', protocol='', max_history=10,
              source='', seed=0, num_items=0, num_users=0, num_clusters=0, min_len=0,
              max_len=0)
  presets = {
      'industrial': dict(name='official', category='Industrial_and_Scientific',
                         manual_dir=OFFICIAL_ROOT),
      'office': dict(name='official', category='Office_Products', manual_dir=OFFICIAL_ROOT),
      'ml100k': dict(name='movielens', protocol='minionerec', source='recbole_wheel'),
      'ml100k_loo': dict(name='movielens', protocol='loo', source='recbole_wheel',
                         max_history=50),
      'synthetic': dict(name='synthetic', num_items=200, num_users=300, num_clusters=10),
  }
  if name not in presets:
    raise ValueError(f'unknown dataset config {name!r}; choose one of {sorted(presets)}')
  base.update(presets[name])
  return ml_collections.ConfigDict(base)


def optimizer_config(**overrides) -> ml_collections.ConfigDict:
  """The `optim` section (AdamW, warmup + decay, clipping; see training/optim.from_config)."""
  fields = dict(lr=1e-3, warmup_steps=0, decay='cosine', final_fraction=0.0, weight_decay=0.0,
                b1=0.9, b2=0.999, eps=1e-8, clip_norm=1.0)
  unknown = set(overrides) - set(fields)
  if unknown:
    raise ValueError(f'unknown optimizer fields {sorted(unknown)}')
  return ml_collections.ConfigDict({**fields, **overrides})
