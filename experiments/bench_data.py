"""Data benchmark: dataset build times and a full pass over training batches.

  python experiments/bench_data.py [--output docs/bench/data.json]

Builds each dataset into a fresh temporary TFDS folder (so nothing is reused), then times one
full epoch of padded Industrial train batches through the Grain pipeline.
"""

import json
import os
import tempfile
import time

from absl import app
from absl import flags

from minirec_jax.data import loading
from minirec_jax.data import pipeline
from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config

_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')
_DATASETS = flags.DEFINE_list('datasets', ['industrial', 'ml100k', 'ml100k_loo'],
                              'Dataset configs to build.')
_BATCH = flags.DEFINE_integer('batch_size', 256, 'Batch size for the pass over train.')


def _timed_build(name: str, data_dir: str):
  cfg = load_config(f'configs/dataset.py:{name}').data
  cfg.data_dir = data_dir
  start = time.perf_counter()
  dataset = loading.load(cfg)
  return dataset, time.perf_counter() - start


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  results = {**timing.machine_record(), 'build_s': {}}
  with tempfile.TemporaryDirectory() as tmp:
    datasets = {}
    for name in _DATASETS.value:
      datasets[name], seconds = _timed_build(name, os.path.join(tmp, name))
      results['build_s'][name] = round(seconds, 2)
      print(f'build {name}: {seconds:.2f} s '
            f'({", ".join(f"{k} {len(v):,}" for k, v in datasets[name].splits.items())})')
    if 'industrial' in datasets:
      train = datasets['industrial'].split('train')
      spec = pipeline.BatchSpec(_BATCH.value, drop_remainder=False)
      start = time.perf_counter()
      rows = sum(int(b['valid'].sum()) for b in pipeline.batched(train, spec, seed=0)
                 .to_iter_dataset())
      seconds = time.perf_counter() - start
      results['industrial_train_pass_s'] = round(seconds, 2)
      print(f'full pass over Industrial train: {rows:,} rows in {seconds:.2f} s '
            f'(batch {_BATCH.value})')
  print(json.dumps(results, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, results)


if __name__ == '__main__':
  app.run(main)
