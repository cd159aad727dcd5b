"""TFDS builder for the synthetic planted-structure dataset (see generator.py).

Needs no download and no manual folder: `_split_generators` runs the generator. The config
name hashes every generator parameter, so different settings never share a folder on disk.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json

import tensorflow_datasets as tfds

from minirec_jax.data import schema
from minirec_jax.data.synthetic import generator


@dataclasses.dataclass
class SyntheticConfig(tfds.core.BuilderConfig):
  """One generator setting; `params_json` is `SyntheticParams` as sorted-key JSON."""

  params_json: str = '{}'

  @property
  def params(self) -> generator.SyntheticParams:
    return generator.SyntheticParams(**json.loads(self.params_json))


def make_config(params: generator.SyntheticParams) -> SyntheticConfig:
  """Config named `i<items>_c<clusters>_u<users>_<hash of all parameters>`."""
  params_json = json.dumps(dataclasses.asdict(params), sort_keys=True)
  digest = hashlib.sha256(params_json.encode()).hexdigest()[:10]
  return SyntheticConfig(
      name=f'i{params.num_items}_c{params.num_clusters}_u{params.num_users}_{digest}',
      params_json=params_json, description=f'synthetic planted structure, {params_json}')


class MinirecSynthetic(tfds.core.GeneratorBasedBuilder):
  """Synthetic sequential-recommendation samples with planted clusters and transitions."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {
      '1.0.0': 'First release.',
      '2.0.0': 'Within-cluster Zipf popularity, richer item text, unix-like timestamps, '
               'oracle metrics in stats, empty splits recorded as absent.',
  }
  BUILDER_CONFIGS = [make_config(generator.SyntheticParams())]

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description='Synthetic (user, history, next item) samples with planted clusters, '
                    'cluster transitions and within-cluster item order.',
        features=schema.example_features(),
        metadata=tfds.core.MetadataDict(),
        disable_shuffling=True,  # keep the chronological order of the split rule
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # everything is generated
    params = self.builder_config.params
    data = generator.generate(params)
    self.info.metadata['items'] = data.table.to_metadata()
    # TFDS cannot write an empty split; tiny settings may leave valid or test empty.
    total = sum(len(rows) for rows in data.splits.values())
    absent = {name: f'{total} samples in all leave no {name} rows under the 80/10/10 rule; '
                    'raise data.num_users or data.min_len'
              for name, rows in data.splits.items() if not rows}
    self.info.metadata['absent_splits'] = absent
    self.info.metadata['planted'] = {
        **data.planted.to_metadata(),
        'cluster_labels': [t.label for t in generator.THEMES[:params.num_clusters]],
        'params': dataclasses.asdict(params),
    }
    self.info.metadata['stats'] = generator.statistics(data)
    return {name: self._generate_examples(rows) for name, rows in data.splits.items()
            if name not in absent}

  def _generate_examples(self, rows):
    for index, row in enumerate(rows):
      yield index, {'user_id': row.user_id, 'history': row.history, 'target': row.target,
                    'timestamp': row.timestamp}
