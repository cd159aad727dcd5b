"""MovieLens-100K as a TFDS dataset (`minirec_movielens/<source>_<protocol>_h<H>`)."""

import tensorflow_datasets as tfds

from minirec_jax.data.movielens.builder import MinirecMovielens, make_config


def make_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builder for a data config (fields protocol, max_history, source, cache_dir)."""
  config = make_config(cfg.protocol, cfg.get('max_history') or 0,
                       cfg.get('source') or 'recbole_wheel')
  known = {c.name for c in MinirecMovielens.BUILDER_CONFIGS}
  return MinirecMovielens(config=config.name if config.name in known else config,
                          data_dir=data_dir, file_format='array_record',
                          wheel_cache_dir=cfg.get('cache_dir') or '')
