"""The example schema shared by every dataset builder, and the item table.

Every builder writes the same features, so pipelines, models and metrics never care where the
data came from:

  user_id  : str      the user's id as in the source files
  history  : int32[h] item ids the user interacted with before the target, oldest first (h >= 1)
  target   : int32    the next item id
  timestamp: int64    the target interaction's time (seconds), or -1 where the source has none

Item ids are contiguous in [0, num_items). Item metadata lives in the builder's MetadataDict
(`metadata.json` in the dataset folder) as an `ItemTable`.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np
import tensorflow_datasets as tfds


def example_features() -> tfds.features.FeaturesDict:
  return tfds.features.FeaturesDict({
      'user_id': tfds.features.Text(),
      'history': tfds.features.Tensor(shape=(None,), dtype=np.int32),
      'target': tfds.features.Scalar(dtype=np.int32),
      'timestamp': tfds.features.Scalar(dtype=np.int64),
  })


@dataclasses.dataclass(frozen=True)
class ItemTable:
  """Per-item metadata, indexed by item id.

  `sid` holds the official semantic-ID string (e.g. '<a_42><b_80><c_160>') where the source
  ships one, else ''. `description` is free text ('' if none).
  """

  title: Sequence[str]
  description: Sequence[str]
  sid: Sequence[str]
  brand: Sequence[str] = ()
  categories: Sequence[str] = ()

  def __post_init__(self):
    n = len(self.title)
    for name in ('description', 'sid', 'brand', 'categories'):
      column = getattr(self, name)
      if name in ('brand', 'categories') and not column:
        object.__setattr__(self, name, [''] * n)
      elif len(column) != n:
        raise ValueError(f'ItemTable.{name} has {len(column)} entries, title has {n}')

  @property
  def num_items(self) -> int:
    return len(self.title)

  @property
  def has_sids(self) -> bool:
    return any(self.sid)

  def to_metadata(self) -> dict:
    return {k: list(v) for k, v in dataclasses.asdict(self).items()}

  @classmethod
  def from_metadata(cls, meta: dict) -> 'ItemTable':
    return cls(**{f.name: list(meta.get(f.name, ())) for f in dataclasses.fields(cls)})
