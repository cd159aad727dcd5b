"""MovieLens-100K as a TFDS dataset (`minirec_movielens/<source>_<protocol>_h<H>`)."""

import tensorflow_datasets as tfds

from minirec_jax.data.errors import DataError
from minirec_jax.data.movielens.builder import MinirecMovielens, MovieLensConfig, make_config


def make_builder(cfg, data_dir: str) -> tfds.core.DatasetBuilder:
  """Builder for a data config.

  Args:
    cfg: ConfigDict with protocol ('minionerec' | 'loo'), and optionally max_history (0 or None:
      the protocol's default), source ('recbole_wheel' (default) | 'grouplens' | 'manual'),
      manual_dir (required for source='manual'; the caller hands it to TFDS as the manual
      dir) and cache_dir (where the recbole wheel is kept; default $MINIREC_CACHE/downloads or
      <repo>/.cache/downloads).
    data_dir: the TFDS data folder.
  """
  source = cfg.get('source') or 'recbole_wheel'
  if source == 'manual' and not cfg.get('manual_dir'):
    raise DataError('source=manual needs a manual folder', field='data.manual_dir', value='')
  config = make_config(cfg.get('protocol'), cfg.get('max_history'), source)
  known = {c.name for c in MinirecMovielens.BUILDER_CONFIGS}
  return MinirecMovielens(config=config.name if config.name in known else config,
                          data_dir=data_dir, file_format='array_record',
                          wheel_cache_dir=cfg.get('cache_dir') or '')

