"""TFDS builder for the synthetic planted-structure dataset (see generator.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from minirec_jax.data import schema
from minirec_jax.data.synthetic import generator


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  params_json: str = '{}'

  @property
  def params(self) -> generator.SyntheticParams:
    return generator.SyntheticParams(**json.loads(self.params_json))


def make_config(params: generator.SyntheticParams) -> SyntheticConfig:
  """The config name hashes every generator parameter, so settings never share a folder."""
  params_json = json.dumps(dataclasses.asdict(params), sort_keys=True)
  digest = hashlib.sha256(params_json.encode()).hexdigest()[:10]
  return SyntheticConfig(name=f'i{params.num_items}_u{params.num_users}_{digest}',
                         params_json=params_json, description=f'synthetic {params_json}')


class MinirecSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic sequential-recommendation samples with planted clusters and transitions."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'First release.'}
  BUILDER_CONFIGS = [make_config(generator.SyntheticParams())]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(builder=self, description='Synthetic planted structure.',
                                 features=schema.example_features(),
                                 metadata=tfds.core.MetadataDict(), disable_shuffling=True)

  def _split_generators(self, dl_manager):
    del dl_manager
    data = generator.generate(self.builder_config.params)
    self.info.metadata['items'] = data.table.to_metadata()
    self.info.metadata['absent_splits'] = {}
    self.info.metadata['planted'] = {
        'item_cluster': data.item_cluster.tolist(), 'transition': data.transition.tolist(),
        'successor': data.successor.tolist(), 'params': json.loads(
            self.builder_config.params_json)}
    self.info.metadata['stats'] = {'rows': {k: len(v) for k, v in data.splits.items()}}
    return {name: self._generate_examples(rows) for name, rows in data.splits.items()}

  def _generate_examples(self, rows):
    for index, row in enumerate(rows):
      yield index, {'user_id': row.user_id, 'history': row.history, 'target': row.target,
                    'timestamp': row.timestamp}
