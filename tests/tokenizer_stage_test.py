"""The semantic-ID stage end to end (user-supplied embeddings).

SFT on a tokenizer's SIDs is trained by the tiny pipeline (tests/run_pipeline_test.py).
"""

import json
import os

import ml_collections
import numpy as np
import pytest

from minirec_jax.data import loading
from minirec_jax.data import synthetic
from minirec_jax.infra.config_utils import load_config
from minirec_jax.semantic_ids import catalogue
from minirec_jax.semantic_ids import stage
from minirec_jax.testing import write_synthetic_layout


@pytest.fixture(scope='module')
def workspace(tmp_path_factory):
  root = tmp_path_factory.mktemp('tok')
  params = synthetic.SyntheticParams(num_items=60, num_clusters=6, num_users=80, seed=0)
  data = synthetic.generate(params)  # its planted clusters make the item vectors below
  layout = write_synthetic_layout(str(root / 'data'), params, with_sids=False, with_info=False)
  rng = np.random.default_rng(0)
  centres = rng.normal(size=(6, 24))
  vectors = centres[data.planted.item_cluster] + 0.1 * rng.normal(size=(60, 24))
  np.save(root / 'emb.npy', vectors.astype(np.float32))
  return root, layout


@pytest.mark.parametrize('method', ['rqvae', 'rqkmeans'])
def test_stage_writes_a_collision_free_sid_table(workspace, method):
  root, layout = workspace
  config = load_config(f'configs/tokenizer.py:dataset=industrial,method={method},tiny')
  config.data.category = 'Toy'
  config.data.manual_dir = layout
  config.data.data_dir = str(root / 'tfds')
  config.embeddings.source = 'npy'
  config.embeddings.path = str(root / 'emb.npy')
  workdir = str(root / f'tok_{method}')
  report = stage.run(config, workdir)
  assert report['after']['collision_rate'] == 0.0
  dataset = loading.load(config.data)
  table = catalogue.load_sids(config_dict(source='tokenizer', path=workdir), dataset)
  assert table.num_items == 60 and table.num_collided_items == 0
  with open(os.path.join(workdir, 'report.json')) as f:
    saved = json.load(f)
  assert saved['after']['collision_rate'] == 0.0 and 'timing_s' in saved


def config_dict(**kw):
  return ml_collections.ConfigDict(kw)

