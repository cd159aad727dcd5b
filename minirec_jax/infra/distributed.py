"""Multi-process (multi-host) JAX: start-up, this process's data shard, global batches.

One process per host, each running the same program over the global device mesh:

  distributed.initialize()            # first, before anything touches JAX devices
  mesh = parallel.make_mesh()         # all devices of all processes
  shard = distributed.data_shard()    # {'shard_index', 'shard_count'} for data/pipeline.py
  local = distributed.local_batch_size(global_batch_size)
  batch = parallel.shard_batch(rows_of_this_process, mesh)   # uses `global_batch`

Settings come from `initialize`'s arguments, else the absl flags --coordinator_address,
--num_processes, --process_id, else the environment variables JAX_COORDINATOR_ADDRESS,
JAX_NUM_PROCESSES, JAX_PROCESS_ID; or --distributed_auto (MINIREC_DISTRIBUTED_AUTO=1) lets JAX
detect a Cloud TPU pod slice, SLURM or Open MPI job itself. Without any of these (or with one
process) it is a single-process run and everything here is the identity.
"""

from __future__ import annotations

import os
from typing import Any

from absl import flags
from absl import logging
import jax

_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None,
    'host:port of process 0 for multi-process JAX (or env JAX_COORDINATOR_ADDRESS); unset: '
    'one process.')
_NUM_PROCESSES = flags.DEFINE_integer(
    'num_processes', None, 'Number of JAX processes (or env JAX_NUM_PROCESSES).')
_PROCESS_ID = flags.DEFINE_integer(
    'process_id', None, 'This process, in [0, num_processes) (or env JAX_PROCESS_ID).')
_AUTO = flags.DEFINE_bool(
    'distributed_auto', False,
    'Let jax.distributed.initialize() detect the cluster itself (Cloud TPU pod slices, SLURM, '
    'Open MPI); or env MINIREC_DISTRIBUTED_AUTO=1.')


def _setting(value, flag: flags.FlagHolder, env: str, cast):
  """The argument, else the flag (once absl has parsed flags), else the environment."""
  if value is not None:
    return value
  if flags.FLAGS.is_parsed() and flag.value is not None:
    return flag.value
  text = os.environ.get(env, '')
  return cast(text) if text else None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Calls `jax.distributed.initialize` when a multi-process run is configured.

  Returns whether JAX runs several processes. Calling it again is a no-op.

  Raises:
    ValueError: a coordinator address without the number of processes or this process's id.
  """
  if jax.distributed.is_initialized():
    return True
  if _setting(None, _AUTO, 'MINIREC_DISTRIBUTED_AUTO', lambda t: t == '1'):
    jax.distributed.initialize()
    return jax.process_count() > 1
  address = _setting(coordinator_address, _COORDINATOR, 'JAX_COORDINATOR_ADDRESS', str)
  count = _setting(num_processes, _NUM_PROCESSES, 'JAX_NUM_PROCESSES', int)
  index = _setting(process_id, _PROCESS_ID, 'JAX_PROCESS_ID', int)
  if not address or count == 1:
    return False
  if count is None or index is None:
    raise ValueError(f'coordinator address {address!r} given, but not both num_processes '
                     f'({count}) and process_id ({index})')
  jax.distributed.initialize(address, num_processes=count, process_id=index)
  logging.info('JAX process %d of %d: %d local of %d devices', jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def data_shard() -> dict[str, int]:
  """This process's slice of the data: `shard_index`/`shard_count` of data/pipeline.py."""
  return {'shard_index': jax.process_index(), 'shard_count': jax.process_count()}


def local_batch_size(global_batch_size: int) -> int:
  """Rows each process feeds per step for a global batch of `global_batch_size` rows."""
  count = jax.process_count()
  if global_batch_size % count:
    raise ValueError(f'batch size {global_batch_size} is not divisible by the {count} '
                     'processes')
  return global_batch_size // count


def global_batch(local_batch: Any, sharding: jax.sharding.Sharding) -> Any:
  """Process-local rows (a pytree of arrays `[local_rows, ...]`) -> global arrays
  `[local_rows * processes, ...]` with `sharding`, rows in process order.

  Each process must pass the same structure and row count; on one process this is
  `jax.device_put(local_batch, sharding)`.
  """
  return jax.make_array_from_process_local_data(sharding, local_batch)
