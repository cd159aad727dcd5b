"""Decoding speed: beam-50 evaluation of all Industrial test users, and serving latency.

  python experiments/bench_decode.py --workdir workdirs/sft_ind_S_official \
      [--beam=50] [--batch=256] [--output=docs/bench/decode.json]

Uses the reported checkpoint of an SFT or GRPO workdir (or random parameters with
--random_init, which decode at the same speed). Serving: `Recommender.recommend` at batch 1
(p50/p99 over many single-user calls) and throughput at a large batch.
"""

import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from minirec_jax.data import pipeline
from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.infra.config_utils import load_config
from minirec_jax.loops import artifacts
from minirec_jax.loops import sft as sft_loop

_WORKDIR = flags.DEFINE_string('workdir', None, 'SFT or GRPO workdir.')
_RANDOM = flags.DEFINE_bool('random_init', False, 'Use random parameters instead.')
_BEAM = flags.DEFINE_integer('beam', 50, 'Beam width.')
_BATCH = flags.DEFINE_integer('batch', 256, 'Users per decoding call.')
_SINGLE = flags.DEFINE_integer('single_calls', 200, 'Batch-1 calls for latency percentiles.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  if _WORKDIR.value and not _RANDOM.value:
    policy = artifacts.load_policy(_WORKDIR.value)
    config, s, params = policy.sft_config, policy.setup, policy.params
  else:
    config = load_config('configs/sft.py:dataset=industrial')
    s = sft_loop.setup(config)
    params = sft_loop.init_state(s, config, 1, jax.random.key(0)).params
  rec = s.recommender
  test = s.dataset.split('test')
  spec = pipeline.BatchSpec(_BATCH.value, max_history=config.data.max_history,
                            drop_remainder=False)
  batches = list(pipeline.batched(test, spec))
  rec.recommend(params, batches[0]['history'], batches[0]['history_len'], _BEAM.value)
  start = time.perf_counter()
  for b in batches:
    rec.recommend(params, b['history'], b['history_len'], _BEAM.value)
  full = time.perf_counter() - start
  one = pipeline.batched(test, pipeline.BatchSpec(1, max_history=config.data.max_history))
  rec.recommend(params, one[0]['history'], one[0]['history_len'], _BEAM.value)
  latencies = []
  for i in range(_SINGLE.value):
    b = one[i]
    t0 = time.perf_counter()
    rec.recommend(params, b['history'], b['history_len'], _BEAM.value)
    latencies.append(time.perf_counter() - t0)
  result = {
      **timing.machine_record(), 'beam': _BEAM.value, 'batch': _BATCH.value,
      'model': config.model.variant, 'test_users': len(test),
      'eval_all_test_s': full, 'users_per_s': len(test) / full,
      'batch1_p50_ms': 1e3 * float(np.percentile(latencies, 50)),
      'batch1_p99_ms': 1e3 * float(np.percentile(latencies, 99))}
  print(json.dumps(result, indent=2))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
