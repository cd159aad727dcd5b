"""SFT steps on 8 devices (one process, or two processes of 4) follow the 1-device losses.

Device counts are fixed when JAX starts, so each case runs this file as a script in
subprocesses with its own XLA_FLAGS (the pytest process has 4 fake devices, see conftest.py);
the workers print JSON results for the tests to check against a 1-device run in pytest.
"""

import json
import os
import socket
import subprocess
import sys
import types

import jax
import ml_collections
import numpy as np
import pytest

from minirec_jax.data import pipeline
from minirec_jax.infra import checkpointing, distributed
from minirec_jax.infra.config_utils import optimizer_config
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.training import parallel, sft

ROWS, SEQ, BATCH, STEPS, PROCESSES = 64, 16, 16, 3, 2
FSDP_SIZES = (1, 2)  # one process: meshes (data x fsdp) 8x1 and 4x2


def _dataset() -> dict[str, np.ndarray]:
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, 25, (ROWS, SEQ + 1)).astype(np.int32)
  return {'tokens': tokens[:, :-1], 'labels': tokens[:, 1:],
          'positions': np.tile(np.arange(SEQ, dtype=np.int32), (ROWS, 1)),
          'segment_ids': np.ones((ROWS, SEQ), np.int32),
          'weights': (rng.random((ROWS, SEQ)) < 0.7).astype(np.float32)}


def _batches(batch_size: int, shard_index: int = 0, shard_count: int = 1) -> list[dict]:
  """The first STEPS training batches of one process's data shard."""
  ds = pipeline.array_batches(_dataset(), batch_size, seed=0, shard_index=shard_index,
                              shard_count=shard_count)
  return [{k: v for k, v in ds[i].items() if k != 'valid'} for i in range(STEPS)]


def _global_batches() -> list[dict]:
  """The global batches of a PROCESSES-process run: the processes' rows, in process order."""
  shards = [_batches(BATCH // PROCESSES, i, PROCESSES) for i in range(PROCESSES)]
  return [{k: np.concatenate([s[step][k] for s in shards]) for k in shards[0][step]}
          for step in range(STEPS)]


def _train(batches: list[dict], mesh=None):
  """STEPS SFT steps as sft_loop takes them, on `mesh` (None: one device)."""
  model = decoder_lib.Decoder(variants.decoder_config('tiny', vocab_size=25, depth=1))
  config = ml_collections.ConfigDict({'train': {'seq_len': SEQ},
                                      'optim': optimizer_config(lr=1e-2, eps=1e-4,
                                                                clip_norm=0)})
  setup = types.SimpleNamespace(model=model, model_config=model.config, language_model=None)
  state = sft_loop.init_state(setup, config, STEPS, jax.random.key(0), mesh)
  step = sft.make_sft_step(sft.decoder_apply_fn(model))
  if mesh is None:
    step, place = jax.jit(step), lambda b: b
  else:
    step = parallel.jit_data_parallel(step, mesh,
                                      state_sharding=parallel.state_sharding(state, mesh))
    place = lambda b: parallel.shard_batch(b, mesh)
  losses = []
  for batch in batches:
    state, metrics = step(state, place(batch), jax.random.key(1))
    losses.append(float(metrics['loss']))
  return state, losses


def _one_process_worker() -> dict:
  return {f'fsdp{n}': _train(_global_batches(), parallel.make_mesh(fsdp=n))[1]
          for n in FSDP_SIZES}


def _process_worker(checkpoint_dir: str) -> dict:
  """One of two processes: a 1x8 FSDP mesh across both, then a checkpoint round trip."""
  assert distributed.initialize()  # from the JAX_* environment variables
  rows = _batches(distributed.local_batch_size(BATCH), **distributed.data_shard())
  state, losses = _train(rows, parallel.make_mesh(fsdp=8))
  ckpts = checkpointing.Checkpoints(checkpoint_dir, keep=1)
  ckpts.save(STEPS, state, data_state={'next_index': STEPS})
  ckpts.wait()
  restored, data_state, _ = ckpts.restore_latest(state)
  ckpts.close()
  same = all(np.array_equal(a.data, b.data) for x, y in zip(jax.tree.leaves(state),
                                                            jax.tree.leaves(restored))
             for a, b in zip(x.addressable_shards, y.addressable_shards))
  kernel = state.params['layers_0']['mlp']['up_proj']['kernel']
  return {'process': jax.process_index(), 'count': jax.process_count(), 'losses': losses,
          'restored_equal': same, 'data_state': data_state,
          'kernel_local_shards': [s.data.shape for s in kernel.addressable_shards]}


def _run_workers(mode: str, num_processes: int, devices: int, *args: str) -> list[dict]:
  # Compiling dominates these runs; unoptimised CPU code halves it (same numbers to rounding).
  env = dict(os.environ, JAX_PLATFORMS='cpu',
             XLA_FLAGS=f'--xla_force_host_platform_device_count={devices} '
             '--xla_backend_optimization_level=0')
  if num_processes > 1:
    with socket.socket() as s:
      s.bind(('localhost', 0))
      port = s.getsockname()[1]
    env.update(JAX_COORDINATOR_ADDRESS=f'localhost:{port}',
               JAX_NUM_PROCESSES=str(num_processes))
  procs = [subprocess.Popen([sys.executable, __file__, mode, *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=dict(env, JAX_PROCESS_ID=str(i)))
           for i in range(num_processes)]
  try:
    outputs = [proc.communicate(timeout=180) for proc in procs]
  finally:
    for proc in procs:  # a failed process leaves the others waiting for it
      if proc.poll() is None:
        proc.kill()
  for proc, (_, err) in zip(procs, outputs):
    assert proc.returncode == 0, err[-3000:]
  return [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]


@pytest.fixture(scope='module')
def reference():
  """Losses of the same global batches on one device, in this process."""
  return _train(_global_batches())[1]


def test_one_process_with_8_devices_matches_one_device(reference):
  (result,) = _run_workers('one_process', 1, 8)
  assert sorted(result) == [f'fsdp{n}' for n in FSDP_SIZES]
  for losses in result.values():
    np.testing.assert_allclose(losses, reference, rtol=1e-5)


def test_two_processes_of_4_devices_match_one_device(reference, tmp_path):
  results = _run_workers('process', PROCESSES, 4, str(tmp_path / 'ckpt'))
  assert sorted(r['process'] for r in results) == [0, 1]
  for r in results:
    assert r['count'] == PROCESSES
    np.testing.assert_allclose(r['losses'], reference, rtol=1e-5)
    assert r['restored_equal'] and r['data_state'] == {'next_index': STEPS}
    assert r['kernel_local_shards'] == [[32, 8]] * 4  # [32, 64] split over 8 devices
  np.testing.assert_array_equal(results[0]['losses'], results[1]['losses'])
  assert os.listdir(tmp_path / 'ckpt' / 'latest') == [str(STEPS)]  # one checkpoint, complete


if __name__ == '__main__':
  mode = sys.argv[1]
  output = _one_process_worker() if mode == 'one_process' else _process_worker(sys.argv[2])
  print(json.dumps(output))
