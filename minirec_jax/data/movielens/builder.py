"""TFDS builder for MovieLens-100K as sequential-recommendation samples (two protocols).

Config names read `<source>_<protocol>_h<max_history>` (e.g. 'recbole_wheel_loo_h50'), so
builds with different settings never share a folder on disk. Protocols (see protocols.py):

* 'minionerec' (default history cap 10): the official MiniOneRec sliding window, pooled over
  users and split 80/10/10 by target time. On ml-100k: 79,245 / 9,906 / 9,906 rows.
* 'loo' (default cap 50): leave-one-out per user, as RecBole and the SASRec paper do. On ml-100k:
  97,171 / 943 / 943 rows, RecBole 1.2.1's numbers. RecBole applies no filter to ml-100k by
  default (rm_dup_inter, val_interval, user/item_inter_num_interval are all unset, and the
  file has no duplicate user-item pairs); the "99,057 interactions" it reports are its samples
  after sequential augmentation, one per interaction that has a predecessor:
  100,000 - 943 users = 99,057 = 97,171 + 943 + 943. Ties in time keep file order in both.

`metadata['stats']` records users, items, interactions, samples (all splits), rows per split and
the users that give no sample at all (none on ml-100k), so nothing is dropped silently.
"""

from __future__ import annotations

import dataclasses
import os
import socket
import urllib.parse

from absl import logging
import tensorflow_datasets as tfds

from minirec_jax.data import protocols
from minirec_jax.data import schema
from minirec_jax.data.errors import DataError
from minirec_jax.data.movielens import reader

GROUPLENS_URL = 'https://files.grouplens.org/datasets/movielens/ml-100k.zip'
SOURCES = ('recbole_wheel', 'grouplens', 'manual')
PROTOCOLS = {'minionerec': 10, 'loo': 50}  # protocol -> default max history
# Fewest interactions a user needs to give any sample under each protocol.
MIN_INTERACTIONS = {'minionerec': 2, 'loo': 3}
_PROBE_TIMEOUT_S = 10.0


@dataclasses.dataclass
class MovieLensConfig(tfds.core.BuilderConfig):
  protocol: str = 'minionerec'
  max_history: int = 10
  source: str = 'recbole_wheel'


def make_config(protocol: str, max_history: int | None = 0,
                source: str = 'recbole_wheel') -> MovieLensConfig:
  """A config; max_history 0 or None means the protocol's default."""
  if protocol not in PROTOCOLS:
    raise DataError(f'unknown protocol; use one of {sorted(PROTOCOLS)}', field='data.protocol',
                    value=protocol)
  if source not in SOURCES:
    raise DataError(f'unknown source; use one of {SOURCES}', field='data.source', value=source)
  max_history = max_history or PROTOCOLS[protocol]
  if isinstance(max_history, bool) or not isinstance(max_history, int) or max_history < 0:
    raise DataError('max_history must be a non-negative integer (0 = protocol default)',
                    field='data.max_history', value=max_history)
  return MovieLensConfig(name=f'{source}_{protocol}_h{max_history}', protocol=protocol,
                         max_history=max_history, source=source,
                         description=f'MovieLens-100K, {protocol} protocol, history <= '
                                     f'{max_history}, from {source}')


def check_reachable(url: str, timeout_s: float = _PROBE_TIMEOUT_S) -> None:
  """Raises a DataError at once if `url`'s host cannot be reached.

  TFDS's downloader retries an unreachable host for minutes; this probe fails in seconds.
  """
  parts = urllib.parse.urlsplit(url)
  port = parts.port or (443 if parts.scheme == 'https' else 80)
  try:
    socket.create_connection((parts.hostname, port), timeout=timeout_s).close()
  except OSError as exc:
    raise DataError(f'cannot reach {parts.hostname}:{port} ({exc}); offline, use '
                    'data.source=recbole_wheel, or data.source=manual with data.manual_dir '
                    'holding the extracted ml-100k files', field='data.source',
                    value='grouplens') from None


class MinirecMovielens(tfds.core.GeneratorBasedBuilder):
  """MovieLens-100K sequential samples in the shared schema."""

  VERSION = tfds.core.Version('1.1.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '1.1.0': 'Stricter input checks; no year in descriptions where the source has none; '
               'original item ids and sample counts in the metadata.',
  }
  BUILDER_CONFIGS = [make_config('minionerec'), make_config('loo')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  For source=manual, put either the GroupLens files u.data and u.item, or RecBole's atomic
  files ml-100k.inter and ml-100k.item, in the manual directory (or its ml-100k/ subfolder).
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
        disable_shuffling=True,  # row order is part of the protocol
        homepage='https://grouplens.org/datasets/movielens/100k/',
    )

  def _read_raw(self, dl_manager: tfds.download.DownloadManager) -> reader.RawMovieLens:
    source = self.builder_config.source
    if source == 'recbole_wheel':
      return reader.read_recbole_wheel(reader.recbole_wheel(self.wheel_cache_dir))
    if source == 'manual':
      try:
        folder = dl_manager.manual_dir
      except AssertionError as exc:  # TFDS's way of saying the folder is missing or empty
        raise DataError(str(exc).strip(), field='data.manual_dir') from None
      return reader.read_manual(os.fspath(folder))
    check_reachable(GROUPLENS_URL)
    try:
      folder = dl_manager.download_and_extract(GROUPLENS_URL)
    except Exception as exc:  # a network failure surfaces as many exception types
      raise DataError(f'cannot download {GROUPLENS_URL} ({type(exc).__name__}: {exc}); use '
                      'data.source=recbole_wheel or data.source=manual', field='data.source',
                      value='grouplens') from exc
    return reader.read_grouplens(os.fspath(folder / 'ml-100k'))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    config = self.builder_config
    raw = self._read_raw(dl_manager)
    sequences = protocols.user_sequences(raw.users, raw.items, raw.timestamps)
    if config.protocol == 'loo':
      splits, skipped = protocols.leave_one_out_splits(sequences, config.max_history)
    else:
      splits = protocols.minionerec_splits(sequences, config.max_history)
      skipped = sum(len(seq) < MIN_INTERACTIONS['minionerec'] for seq in sequences.values())
    if skipped:
      logging.warning('%s protocol: %d users have fewer than %d interactions and give no '
                      'sample', config.protocol, skipped, MIN_INTERACTIONS[config.protocol])
    rows = {name: len(samples) for name, samples in splits.items()}
    self.info.metadata['items'] = raw.table.to_metadata()
    self.info.metadata['original_item_ids'] = raw.original_item_ids
    self.info.metadata['absent_splits'] = {}
    self.info.metadata['stats'] = {
        'users': len(sequences), 'items': raw.table.num_items, 'interactions': len(raw.users),
        'samples': sum(rows.values()), 'rows': rows, 'users_skipped': skipped,
        'min_interactions': MIN_INTERACTIONS[config.protocol], 'protocol': config.protocol,
        'max_history': config.max_history, 'source': raw.source}
    return {name: self._generate_examples(samples) for name, samples in splits.items()}

  def _generate_examples(self, samples: list[protocols.Sample]):
    for index, sample in enumerate(samples):
      yield index, {'user_id': sample.user_id, 'history': sample.history,
                    'target': sample.target, 'timestamp': sample.timestamp}
