"""Dataset configs: `--config configs/dataset.py:<name>`.

Names: industrial, office (the official MiniOneRec Amazon-2018 layout), ml100k (MovieLens-100K,
MiniOneRec protocol), ml100k_loo (MovieLens-100K, leave-one-out), synthetic.
Every field can be overridden, e.g. `--config.data.manual_dir=/path/to/Amazon`.
"""

import os

import ml_collections

# Default location of the official layout: the project's shared development data, which sits
# beside the repository; users point `data.manual_dir` at their own copy.
OFFICIAL_ROOT = os.path.normpath(os.path.join(os.path.dirname(__file__), '..', '..', 'shared',
                                              'data', 'amazon18'))


def data_config(name: str) -> ml_collections.ConfigDict:
  """The `data` section of every experiment config."""
  base = dict(name='', category='', manual_dir='', data_dir='', protocol='', max_history=10,
              source='', seed=0, num_items=0, num_users=0, num_clusters=0)
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


def get_config(arg: str = 'ml100k') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = data_config(arg)
  return config
