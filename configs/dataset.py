"""Dataset configs: `--config configs/dataset.py:<name>`.

Names: industrial, office (the official MiniOneRec Amazon-2018 layout), ml100k (MovieLens-100K,
MiniOneRec protocol), ml100k_loo (MovieLens-100K, leave-one-out), synthetic.
Every field can be overridden, e.g. `--config.data.manual_dir=/path/to/Amazon`.
"""

import ml_collections

from minirec_jax.infra.config_utils import data_config


def get_config(arg: str = 'ml100k') -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict()
  config.data = data_config(arg)
  return config
