"""TFDS builder for data in the official MiniOneRec layout (see reader.py for the layout)."""

from __future__ import annotations

import dataclasses

from absl import logging
import tensorflow_datasets as tfds

from minirec_jax.data import schema
from minirec_jax.data.official import reader

KNOWN_CATEGORIES = ('Industrial_and_Scientific', 'Office_Products')


@dataclasses.dataclass
class OfficialConfig(tfds.core.BuilderConfig):
  """One category of the official layout; `name` is the category (e.g. Office_Products)."""

  def __post_init__(self):
    if not self.description:
      self.description = f'MiniOneRec official layout, category {self.name}'


class MinirecOfficial(tfds.core.GeneratorBasedBuilder):
  """Sequential-recommendation samples exactly as the official CSVs list them, in file order."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [OfficialConfig(name=c) for c in KNOWN_CATEGORIES]
  MANUAL_DOWNLOAD_INSTRUCTIONS = """
  Point the manual directory at a folder in the official MiniOneRec layout (the official
  repository's data/Amazon/ folder, or your own data in that layout): train/, valid/, test/
  CSVs named {category}*.csv, index/{category}.item.json and optionally index.json and info/.
  """

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='MiniOneRec samples: (user, history <= 10 items, next item).',
        features=schema.example_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # splits must be exactly the CSVs' rows, in order
        homepage='https://github.com/AkaliKong/MiniOneRec',
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = str(dl_manager.manual_dir)
    category = self.builder_config.name
    items = reader.read_item_table(root, category)
    present, absent = reader.locate_splits(root, category)
    for split, reason in absent.items():
      logging.warning('%s; building %s only.', reason, ', '.join(present))
    self.info.metadata['items'] = items.to_metadata()
    self.info.metadata['absent_splits'] = absent
    self.info.metadata['source'] = {'root': root, 'category': category, 'files': present}
    return {split: self._generate_examples(path, items) for split, path in present.items()}

  def _generate_examples(self, path: str, items: schema.ItemTable):
    for line, row in reader.iter_rows(path, items):
      yield line, {'user_id': row.user_id, 'history': row.history, 'target': row.target,
                   'timestamp': -1}
