"""The train state every step takes, and its creation where the step expects it."""

from __future__ import annotations

from typing import Any, Callable

import jax
from flax.training import train_state
import optax


class TrainState(train_state.TrainState):
  """flax TrainState: step, params, opt_state, apply_fn (unused: None), tx."""


def create(init_params: Callable[..., Any], tx: optax.GradientTransformation, *args,
           sharding: Any = None) -> TrainState:
  """`TrainState` of `init_params(*args)` and `tx`, built in one jitted call.

  Args:
    init_params: `(*args) -> params`, e.g. a model's init on an rng, or `lambda p: p`.
    tx: the optimizer.
    *args: its arguments.
    sharding: where the state is placed: a sharding pytree or one sharding (e.g. the train
      step's state sharding, so its first call does not compile again for a differently placed
      state), a callable `abstract state -> shardings` (e.g. `parallel.state_sharding` on a
      mesh), or None (the default device).
  """
  if callable(sharding):
    sharding = sharding(abstract(init_params, tx, *args))
  return jax.jit(_builder(init_params, tx), out_shardings=sharding)(*args)


def abstract(init_params: Callable[..., Any], tx: optax.GradientTransformation,
             *args) -> TrainState:
  """The shapes and dtypes (`jax.ShapeDtypeStruct` leaves) of `create`'s state, computing
  nothing: a restore target. `args` may themselves be `ShapeDtypeStruct`s."""
  return jax.eval_shape(_builder(init_params, tx), *args)


def _builder(init_params: Callable[..., Any], tx: optax.GradientTransformation) -> Callable:
  return lambda *a: TrainState.create(apply_fn=None, params=init_params(*a), tx=tx)
