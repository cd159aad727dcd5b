"""Synthetic planted-structure dataset as TFDS (`minirec_synthetic/<config with params hash>`).

`generate(SyntheticParams(...))` is the pure numpy generator (no TFDS); `make_builder(cfg,
data_dir)` wraps it as a TFDS builder for `minirec_jax.data.loading.load`.
"""

import tensorflow_datasets as tfds

from minirec_jax.data.synthetic.builder import MinirecSynthetic, SyntheticConfig, make_config
from minirec_jax.data.synthetic.generator import (THEMES, Planted, SyntheticData,
                                                  SyntheticParams, generate, next_item_probs,
                                                  oracle_metrics, statistics,
                                                  transition_matrix)

# Counts where 0 is never valid, so the shared data config's 0 means "use the default".
_COUNT_FIELDS = ('num_items', 'num_clusters', 'num_users', 'min_len', 'max_len', 'max_history')
_OTHER_FIELDS = ('stay', 'move_next', 'follow_successor', 'popularity_skew', 'seed')


def params_from_config(cfg) -> SyntheticParams:
  """Generator parameters from a data config; a missing field, or a 0 count, keeps the default."""
  overrides = {f: cfg.get(f) for f in _COUNT_FIELDS if cfg.get(f)}
  overrides.update({f: cfg.get(f) for f in _OTHER_FIELDS if cfg.get(f) is not None})
  return SyntheticParams(**overrides)


def make_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builder for a data config (fields of `SyntheticParams`, see `params_from_config`)."""
  config = make_config(params_from_config(cfg))
  known = {c.name for c in MinirecSynthetic.BUILDER_CONFIGS}
  # A registered config must be chosen by name; TFDS rejects an equal-named new object.
  return MinirecSynthetic(config=config.name if config.name in known else config,
                          data_dir=data_dir, file_format='array_record')
