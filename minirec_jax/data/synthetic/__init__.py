"""Synthetic planted-structure dataset as TFDS (`minirec_synthetic/<params hash>`)."""

import tensorflow_datasets as tfds

from minirec_jax.data.synthetic.builder import MinirecSynthetic, make_config
from minirec_jax.data.synthetic.generator import SyntheticParams, generate


def params_from_config(cfg) -> SyntheticParams:
  """Generator parameters from a data config; zero/missing fields keep their defaults."""
  overrides = {field: cfg.get(field) for field in ('num_items', 'num_clusters', 'num_users',
                                                   'max_history', 'seed') if cfg.get(field)}
  return SyntheticParams(**overrides)


def make_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  config = make_config(params_from_config(cfg))
  known = {c.name for c in MinirecSynthetic.BUILDER_CONFIGS}
  return MinirecSynthetic(config=config.name if config.name in known else config,
                          data_dir=data_dir, file_format='array_record')
