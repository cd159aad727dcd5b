"""SASRec training speed: seconds per epoch (one shuffled pass over train), as a JSON line.

  python experiments/bench_sasrec.py [--datasets=ml100k_loo,industrial] [--variant=recbole]
      [--epochs=3] [--tiny] [--output=docs/bench/sasrec.json]

Per dataset: build the data and model exactly as train_sasrec does, compile the step on one
batch (reported as compile_s), then time `--epochs` full epochs (host batching included, no
evaluation) and report their median. The RecBole 1.2.1 peer figures (PEER_SECONDS_PER_EPOCH,
measured with 2 torch threads on 2 CPU cores) are echoed for reference; they compare only with
runs on the same machine kind, so rerun the peer beside this benchmark before quoting a ratio.
"""

import json
import statistics
import time

from absl import app
from absl import flags
import jax

from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sasrec
from minirec_jax.training import parallel
from minirec_jax.training import sasrec as sasrec_steps

_DATASETS = flags.DEFINE_list('datasets', ['ml100k_loo', 'industrial'], 'Dataset presets.')
_VARIANT = flags.DEFINE_string('variant', 'recbole', 'official | recbole | bpr.')
_EPOCHS = flags.DEFINE_integer('epochs', 3, 'Timed epochs per dataset.')
_TINY = flags.DEFINE_bool('tiny', False, 'Smoke check: tiny model, a few steps per epoch.')
_SHARE = flags.DEFINE_list(
    'share_prefixes', ['config'],
    "Values of train.share_prefixes to time, each a row: 'config' (the preset's), true, false.")
_FIXED_ROWS = flags.DEFINE_list(
    'pack_fixed_rows', ['config'],
    "Values of train.pack_fixed_rows to time (crossed with share_prefixes): 'config', true, "
    'false.')
_DATA_DIR = flags.DEFINE_string('data_dir', '', 'TFDS folder (default: the project cache).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path (list of rows).')

# RecBole 1.2.1 SASRec, train seconds per epoch on 2 CPU cores (2 torch threads).
PEER_SECONDS_PER_EPOCH = {'ml100k_loo': 123.1, 'industrial': 6.8}


def packed_row_counts(packer: sasrec.BatchPacker) -> list[int]:
  """The row counts that the timed epochs use (one when fixed: the largest)."""
  return [packer.rows] if packer.fixed_rows else sorted(packer.examples)


def time_dataset(dataset: str, variant: str, epochs: int, tiny: bool, share: str,
                 fixed_rows: str) -> dict:
  config = load_config(f'configs/sasrec.py:dataset={dataset},variant={variant}'
                       + (',tiny' if tiny else ''))
  if share != 'config':
    config.train.share_prefixes = share.lower() == 'true'
  if fixed_rows != 'config':
    config.train.pack_fixed_rows = fixed_rows.lower() == 'true'
  if _DATA_DIR.value:
    config.data.data_dir = _DATA_DIR.value
  s = sasrec.setup(config)
  mesh = parallel.make_mesh(config.mesh.num_devices or None)
  state = sasrec.init_state(s, config, mesh)
  step_fn = parallel.jit_data_parallel(
      sasrec_steps.make_train_step(s.ranker, config.train.loss, s.num_items), mesh)
  rng = jax.random.key(0)
  train = s.splits['train']
  batch_size = config.train.batch_size
  max_steps = config.train.max_steps_per_epoch
  packer = sasrec.make_packer(s.ranker, config, mesh)
  group = sasrec.shares_prefixes(config)
  warm = [next(iter(sasrec.epoch_batches(train, batch_size=batch_size, seed=config.seed,
                                         epoch=0, group_prefixes=group)))]
  if packer is not None:
    # Pack the epochs to come first, so that every packed row count compiles before timing.
    for epoch in range(epochs):
      packer.warm_up(sasrec.epoch_batches(train, batch_size=batch_size, seed=config.seed,
                                          epoch=epoch, max_steps=max_steps,
                                          group_prefixes=group))
    warm = [packer.examples[rows] for rows in packed_row_counts(packer)]
  start = time.perf_counter()
  for batch in warm:
    state, metrics = step_fn(state, parallel.shard_batch(batch, mesh), rng)
  jax.block_until_ready(metrics)
  compile_s = time.perf_counter() - start
  seconds, steps = [], 0
  for epoch in range(epochs):
    state, out = sasrec.train_epoch(step_fn, state, train, batch_size=batch_size,
                                    seed=config.seed, epoch=epoch, mesh=mesh, rng=rng,
                                    max_steps=max_steps, packer=packer, group_prefixes=group)
    seconds.append(out['epoch_seconds'])
    steps = out['steps']
  per_epoch = statistics.median(seconds)
  return {
      'bench': 'sasrec_train_epoch', 'dataset': dataset, 'variant': variant, 'tiny': tiny,
      **timing.machine_record(), 'num_devices': mesh.size,
      'train_rows': len(train),
      'batch_size': batch_size, 'steps_per_epoch': steps,
      'num_params': s.ranker.description['num_params'], 'compile_s': round(compile_s, 3),
      'epoch_seconds': [round(x, 3) for x in seconds], 'seconds_per_epoch': round(per_epoch, 3),
      'examples_per_s': round(steps * batch_size / per_epoch, 1),
      'final_loss': out['loss'],
      'packed_rows': packed_row_counts(packer) if packer is not None else None,
      'share_prefixes': group,
      'pack_fixed_rows': packer.fixed_rows if packer is not None else None,
      'peer_recbole_seconds_per_epoch': None if tiny else PEER_SECONDS_PER_EPOCH.get(dataset),
  }


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  rows = []
  for dataset in _DATASETS.value:
    for share in _SHARE.value:
      for fixed_rows in _FIXED_ROWS.value:
        row = time_dataset(dataset, _VARIANT.value, _EPOCHS.value, _TINY.value, share,
                           fixed_rows)
        print(json.dumps(row), flush=True)
        rows.append(row)
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, rows)


if __name__ == '__main__':
  app.run(main)
