"""SFT speed: seconds per epoch over Industrial train and model FLOPs utilisation (MFU).

  python experiments/bench_sft.py [--variants=S,M] [--steps=20] [--output=docs/bench/sft.json]
  python experiments/bench_sft.py --variants= --backbones=smollm2-135m \
      [--sid_softmax=false,true] [--output=docs/bench/sft_llm.json]

`--variants` are our decoders from scratch, `--backbones` pretrained language models with SID
tokens (configs/sft.py:backbone=..., its default short next-SID template and batch). The peak
is measured in the same run: the best of several large float32 matmuls (jitted jnp.dot, 2*n^3
FLOPs each) on this machine. MFU = achieved model FLOPs / that peak, where the model FLOPs of a
step are train_flops_per_token x tokens in the step (every slot of the packed batch, padding
included, since it is computed), except that a language model's LM head runs only at its
target positions and is counted there only (and over the SID and terminator rows only with
`--sid_softmax=true`, `llm.sid_softmax`: the speed of that head against the full one).
"""

import json
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp

from minirec_jax.data import pipeline
from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.training import parallel
from minirec_jax.training import sft

_VARIANTS = flags.DEFINE_list('variants', ['S', 'M'], 'Model variants to time.')
_BACKBONES = flags.DEFINE_list('backbones', [], 'Pretrained backbones to time (configs/sft.py '
                               'backbone=...).')
_SID_SOFTMAX = flags.DEFINE_list('sid_softmax', ['false'], 'For each backbone, time these '
                                 'llm.sid_softmax settings (false: full-vocabulary head).')
_STEPS = flags.DEFINE_integer('steps', 20, 'Timed steps per variant (after 3 warm-up steps).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def matmul_peak_flops(n: int = 2048, repeats: int = 10) -> float:
  """Best observed float32 matmul FLOP/s (jitted, n x n @ n x n)."""
  a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
  b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  dot(a, b).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    dot(a, b).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2 * n ** 3 / best


def time_config(name: str, config_arg: str, steps: int, sid_softmax: bool = False) -> dict:
  config = load_config(f'configs/sft.py:dataset=industrial,{config_arg}')
  config.llm.sid_softmax = sid_softmax
  s = sft_loop.setup(config)
  train, _ = sft_loop.pack_splits(config, s)
  mesh = parallel.make_mesh()
  batch_size = config.train.batch_size
  steps_per_epoch = len(train['tokens']) // batch_size
  state = sft_loop.init_state(s, config, steps_per_epoch, jax.random.key(0))
  step = parallel.jit_data_parallel(sft.make_sft_step(sft.decoder_apply_fn(s.model)), mesh)
  batches = iter(pipeline.array_batches(train, batch_size, seed=0, num_epochs=None))
  rng = jax.random.key(0)
  head_positions = 0

  def run(n):
    nonlocal state, head_positions
    for _ in range(n):
      batch = next(batches)
      batch.pop('valid')
      head_positions += batch['target_positions'].size if 'target_positions' in batch else 0
      state, metrics = step(state, parallel.shard_batch(batch, mesh), rng)
    jax.block_until_ready(metrics)

  run(3)
  head_positions = 0
  start = time.perf_counter()
  run(steps)
  per_step = (time.perf_counter() - start) / steps
  flops = decoder_lib.flops_per_token(s.model_config, config.train.seq_len)
  tokens = batch_size * config.train.seq_len
  step_flops = flops['train_flops_per_token'] * tokens
  if head_positions:  # the head ran at the target slots only
    step_flops -= flops['train_head_flops_per_token'] * (tokens - head_positions / steps)
  return {'variant': name, 'width': s.model_config.width, 'depth': s.model_config.depth,
          **decoder_lib.count_params(s.model_config), 'seq_len': config.train.seq_len,
          'batch_size': batch_size, 'seconds_per_step': per_step,
          'steps_per_epoch': steps_per_epoch, 'seconds_per_epoch': per_step * steps_per_epoch,
          'tokens_per_s': tokens / per_step, 'model_flops_per_s': step_flops / per_step}


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  peak = matmul_peak_flops()
  rows = []
  runs = [(v, f'variant={v}', False) for v in _VARIANTS.value]
  for b in _BACKBONES.value:
    for setting in _SID_SOFTMAX.value:
      if setting not in ('false', 'true'):
        raise app.UsageError(f'--sid_softmax takes false and/or true, got {setting!r}')
      on = setting == 'true'
      runs.append((f'{b}, sid_softmax' if on else b, f'backbone={b}', on))
  for variant, config_arg, sid_softmax in runs:
    row = time_config(variant, config_arg, _STEPS.value, sid_softmax)
    row['mfu'] = row['model_flops_per_s'] / peak
    rows.append(row)
    print(f"{variant}: width {row['width']}, {row['params']:,} params, "
          f"{row['seconds_per_epoch']:.1f} s/epoch ({row['steps_per_epoch']} steps), "
          f"{row['model_flops_per_s'] / 1e9:.1f} GFLOP/s, MFU {100 * row['mfu']:.0f}%")
  result = {**timing.machine_record(), 'peak_matmul_flops': peak,
            'rows': rows}
  print(f'peak fp32 matmul: {peak / 1e9:.1f} GFLOP/s')
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
