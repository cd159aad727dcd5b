"""Build (once) and open any of the project's datasets from a data config.

`load(cfg)` is the one entry point: it builds the TFDS dataset if it is not yet in
`cfg.data_dir`, then returns random-access array_record sources per split plus the item table.
TensorFlow is never imported (TFDS's numpy-only data-source path).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping

import tensorflow_datasets as tfds

from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable

DEFAULT_DATA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__)))), '.cache', 'tensorflow_datasets')


@dataclasses.dataclass
class Dataset:
  """An opened dataset: `splits[name]` is a random-access sequence of example dicts."""

  name: str
  builder: tfds.core.DatasetBuilder
  splits: Mapping[str, tfds.data_sources.ArrayRecordDataSource]
  items: ItemTable
  absent_splits: Mapping[str, str]

  @property
  def num_items(self) -> int:
    return self.items.num_items

  def split(self, name: str):
    if name in self.splits:
      return self.splits[name]
    if name in self.absent_splits:
      raise DataError(f'dataset {self.name} has no {name!r} split: {self.absent_splits[name]}')
    raise DataError(f'dataset {self.name} has no {name!r} split (it has {sorted(self.splits)})')


def _official(cfg) -> tuple[tfds.core.DatasetBuilder, str | None]:
  from minirec_jax.data import official
  # Known categories are referenced by name; any other category gets a custom config.
  known = cfg.category in official.KNOWN_CATEGORIES
  config = cfg.category if known else official.OfficialConfig(name=cfg.category)
  return official.MinirecOfficial(config=config, data_dir=_data_dir(cfg),
                                  file_format='array_record'), cfg.get('manual_dir') or None


def _movielens(cfg) -> tuple[tfds.core.DatasetBuilder, str | None]:
  from minirec_jax.data import movielens
  return movielens.make_builder(cfg, data_dir=_data_dir(cfg)), cfg.get('manual_dir') or None


def _synthetic(cfg) -> tuple[tfds.core.DatasetBuilder, str | None]:
  from minirec_jax.data import synthetic
  return synthetic.make_builder(cfg, data_dir=_data_dir(cfg)), None


BUILDERS: dict[str, Callable] = {
    'official': _official,
    'movielens': _movielens,
    'synthetic': _synthetic,
}


def _data_dir(cfg) -> str:
  return cfg.get('data_dir') or os.environ.get('TFDS_DATA_DIR') or DEFAULT_DATA_DIR


def make_builder(cfg) -> tuple[tfds.core.DatasetBuilder, str | None]:
  """Returns (builder, manual_dir) for a data config (see configs/data.py)."""
  if cfg.name not in BUILDERS:
    raise DataError(f'unknown dataset {cfg.name!r}; choose one of {sorted(BUILDERS)}',
                    field='data.name', value=cfg.name)
  return BUILDERS[cfg.name](cfg)


def load(cfg) -> Dataset:
  """Builds the dataset described by `cfg` if needed and opens every split it has."""
  builder, manual_dir = make_builder(cfg)
  tfds.disable_progress_bar()  # per-split bars flood logs; our own Progress reports instead
  if manual_dir is not None and not os.path.isdir(manual_dir):
    raise DataError('manual data folder does not exist', path=manual_dir,
                    field='data.manual_dir', value=manual_dir)
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  builder.download_and_prepare(download_config=download_config, file_format='array_record')
  meta = builder.info.metadata
  splits = {name: builder.as_data_source(name) for name in builder.info.splits}
  return Dataset(name=builder.info.full_name, builder=builder, splits=splits,
                 items=ItemTable.from_metadata(meta['items']),
                 absent_splits=dict(meta.get('absent_splits', {})))
