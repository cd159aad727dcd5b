"""Running pure step functions on many devices: jit + NamedSharding, or jax.pmap.

Every step in this library is an un-jitted pure function `(state, batch, rng) -> (state,
metrics)` (GRPO adds non-donated frozen arguments). `jit_data_parallel` is the recommended path
(the compiler partitions a global-view program over a ('data',) mesh); `pmap_data_parallel`
serves code that still runs pmap loops: the same step, built with `axis_name='data'`, averages
gradients and metrics with collectives inside.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = 'data'


def make_mesh(num_devices: int | None = None) -> Mesh:
  """A 1-D ('data',) mesh over the first `num_devices` devices (all by default).

  Axis type Auto: plain linen code (embedding gathers on a sharded batch) does not type-check
  under the Explicit default of `jax.make_mesh`.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  return Mesh(np.asarray(devices), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over 'data'; other axes replicated."""
  return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Places a host batch (this process's rows) on the mesh, split along axis 0.

  Multi-host: each process passes its own rows; the result is one global array.
  """
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)), batch)


def jit_data_parallel(step: Callable, mesh: Mesh, *, num_frozen: int = 0,
                      state_sharding: Any = None) -> Callable:
  """jit(step) with the state donated, the batch split over 'data', everything else replicated.

  Args:
    step: `(state, *frozen, batch, rng) -> (state, metrics)`, un-jitted.
    mesh: from `make_mesh`.
    num_frozen: number of non-donated arguments between state and batch (e.g. reference and
      reward-model params for GRPO).
    state_sharding: sharding pytree (or one sharding) for the state; replicated by default.
      Pass FSDP-style shardings here for large models.
  """
  repl = replicated(mesh)
  state_sharding = repl if state_sharding is None else state_sharding
  in_shardings = (state_sharding,) + (repl,) * num_frozen + (batch_sharding(mesh), repl)
  return jax.jit(step, in_shardings=in_shardings, out_shardings=(state_sharding, repl),
                 donate_argnums=(0,))


def pmap_data_parallel(step: Callable, *, num_frozen: int = 0) -> Callable:
  """jax.pmap(step) over axis 'data'; build `step` with `axis_name='data'`.

  Inputs: state and frozen arguments replicated per device (`replicate`), the batch with a
  leading device axis (`split_for_pmap`), and one rng (broadcast).
  """
  in_axes = (0,) + (0,) * num_frozen + (0, None)
  return jax.pmap(step, axis_name=DATA_AXIS, in_axes=in_axes, donate_argnums=(0,))


def replicate(tree: Any, num_devices: int | None = None) -> Any:
  """Adds a leading device axis (copies) for pmap; pmap places one copy per device."""
  n = num_devices or jax.local_device_count()
  return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (n,) + np.shape(x)), tree)


def unreplicate(tree: Any) -> Any:
  return jax.tree.map(lambda x: x[0], tree)


def split_for_pmap(batch: Any, num_devices: int | None = None) -> Any:
  """`[batch, ...]` -> `[devices, batch/devices, ...]`."""
  n = num_devices or jax.local_device_count()
  return jax.tree.map(lambda x: np.asarray(x).reshape((n, -1) + x.shape[1:]), batch)
