"""Running pure step functions on many devices: jit + NamedSharding, or jax.pmap.

Every step in this library is an un-jitted pure function `(state, batch, rng) -> (state,
metrics)` (GRPO adds non-donated frozen arguments). `jit_data_parallel` is the recommended path:
the compiler partitions a global-view program over a ('data', 'fsdp') mesh. The batch is split
over all devices; the train state is replicated, or with an 'fsdp' axis of size > 1 its large
arrays (parameters and the optimizer moments, which share their shapes) are split over that
axis and gathered by the compiler where the step needs them (fully sharded data parallelism).
`pmap_data_parallel` serves code that still runs pmap loops: the same step, built with
`axis_name='data'`, averages gradients and metrics with collectives inside.

Multi-host: start JAX with `minirec_jax.infra.distributed.initialize()`; every process then runs the
same program on the global mesh and feeds only its own rows to `shard_batch`.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from minirec_jax.infra import distributed

DATA_AXIS = 'data'
FSDP_AXIS = 'fsdp'
# Arrays smaller than this (norm scales, biases, step counters) stay replicated under FSDP:
# splitting them saves little memory and costs one collective each.
MIN_FSDP_SIZE = 2**10


def make_mesh(num_devices: int | None = None, fsdp: int = 1) -> Mesh:
  """A ('data', 'fsdp') mesh of shape `[devices / fsdp, fsdp]` over the first `num_devices`.

  `fsdp` consecutive devices (on one host when it divides the local device count) share one
  copy of the FSDP-sharded state; fsdp=1 is plain data parallelism. Axis types are Auto: plain
  linen code (embedding gathers on a sharded batch) does not type-check under the Explicit
  default of `jax.make_mesh`.
  """
  devices = jax.devices()[:num_devices] if num_devices else jax.devices()
  if fsdp < 1 or len(devices) % fsdp:
    raise ValueError(f'fsdp axis size {fsdp} must be >= 1 and divide the {len(devices)} devices')
  return Mesh(np.asarray(devices).reshape(-1, fsdp), (DATA_AXIS, FSDP_AXIS),
              axis_types=(AxisType.Auto,) * 2)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over every mesh axis (all devices); other axes replicated."""
  return NamedSharding(mesh, P(mesh.axis_names))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def fsdp_spec(shape: tuple[int, ...], fsdp: int, min_size: int = MIN_FSDP_SIZE) -> P:
  """Splits the largest dimension divisible by `fsdp` over 'fsdp'; P() (replicated) when
  fsdp is 1, the array has fewer than `min_size` elements or no dimension divides."""
  divisible = [d for d, n in enumerate(shape) if n % fsdp == 0]
  if fsdp == 1 or math.prod(shape) < min_size or not divisible:
    return P()
  dim = max(divisible, key=lambda d: shape[d])
  return P(*(None,) * dim, FSDP_AXIS)


def state_sharding(state: Any, mesh: Mesh, *, min_fsdp_size: int = MIN_FSDP_SIZE) -> Any:
  """Sharding pytree for a (possibly abstract) train state on `mesh`.

  FSDP (`fsdp_spec` per array) when the mesh has an 'fsdp' axis larger than 1, otherwise
  everything replicated. Depends on shapes only, so params and Adam moments get one layout.
  """
  fsdp = dict(mesh.shape).get(FSDP_AXIS, 1)
  return jax.tree.map(
      lambda x: NamedSharding(mesh, fsdp_spec(np.shape(x), fsdp, min_fsdp_size)), state)


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """This process's rows of a batch, as global arrays split along axis 0 over all devices.

  One process: the rows are the whole batch (a plain device_put). Several processes: each
  passes its own, equally many rows; the global batch is their concatenation in process order.
  """
  return distributed.global_batch(batch, batch_sharding(mesh))


def limit_traces(fn: Callable, max_traces: int) -> Callable:
  """`fn`, raising AssertionError when traced more than `max_traces` times (count per wrapper).

  Like `chex.assert_max_traces`, but chex counts per definition site (call stack and source),
  so two training runs in one process, each with its own freshly jitted step, would add up
  and trip it; here each wrapped function has its own count.
  """
  traces = 0

  @functools.wraps(fn)
  def counted(*args, **kwargs):
    nonlocal traces
    traces += 1  # only runs while jit traces: compiled calls never enter Python
    if traces > max_traces:
      raise AssertionError(f'{fn.__name__} traced {traces} times (max_traces={max_traces}): '
                           'an argument changed shape, dtype or weak type between calls')
    return fn(*args, **kwargs)

  return counted


def jit_data_parallel(step: Callable, mesh: Mesh, *, num_frozen: int = 0,
                      state_sharding: Any = None, max_traces: int | None = None) -> Callable:
  """jit(step) with the state donated, the batch split over all devices, the rest replicated.

  Args:
    step: `(state, *frozen, batch, rng) -> (state, metrics)`, un-jitted.
    mesh: from `make_mesh`.
    num_frozen: number of non-donated arguments between state and batch (e.g. reference and
      reward-model params for GRPO).
    state_sharding: sharding pytree (or one sharding) for the state, e.g. from the module's
      `state_sharding` (FSDP on a mesh with fsdp > 1); replicated by default. Create the state
      with the same sharding (jit with `out_shardings`) or the first call compiles twice.
    max_traces: if set, tracing `step` more often than this raises AssertionError: a training
      loop states how many batch shapes it expects, and a silent recompilation every step
      becomes an error (`limit_traces`).
  """
  if max_traces is not None:
    step = limit_traces(step, max_traces)
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
