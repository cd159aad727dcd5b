"""Optimizers from config: AdamW with warmup + decay and global-norm clipping."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def learning_rate_schedule(peak: float, total_steps: int, warmup_steps: int,
                           decay: str = 'cosine', final_fraction: float = 0.0) -> optax.Schedule:
  """Linear warmup to `peak`, then 'cosine', 'linear' or 'constant' to peak*final_fraction."""
  warmup_steps = max(0, min(warmup_steps, total_steps))
  decay_steps = max(1, total_steps - warmup_steps)
  end = peak * final_fraction
  if decay == 'cosine':
    after = optax.cosine_decay_schedule(peak, decay_steps, alpha=final_fraction)
  elif decay == 'linear':
    after = optax.linear_schedule(peak, end, decay_steps)
  elif decay == 'constant':
    after = optax.constant_schedule(peak)
  else:
    raise ValueError(f"unknown decay {decay!r}; use 'cosine', 'linear' or 'constant'")
  if warmup_steps == 0:
    return after
  warmup = optax.linear_schedule(0.0, peak, warmup_steps)
  return optax.join_schedules([warmup, after], [warmup_steps])


def adamw(schedule: optax.Schedule, *, weight_decay: float = 0.0, b1: float = 0.9,
          b2: float = 0.999, eps: float = 1e-8,
          clip_norm: float | None = 1.0) -> optax.GradientTransformation:
  parts = [optax.clip_by_global_norm(clip_norm)] if clip_norm else []
  parts.append(optax.adamw(schedule, b1=b1, b2=b2, eps=eps, weight_decay=weight_decay))
  return optax.chain(*parts)


def from_config(cfg, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """`cfg` fields: lr, warmup_steps, decay, final_fraction, weight_decay, b1, b2, eps, clip_norm."""
  schedule = learning_rate_schedule(cfg.lr, total_steps, cfg.warmup_steps, cfg.decay,
                                    cfg.final_fraction)
  tx = adamw(schedule, weight_decay=cfg.weight_decay, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps,
             clip_norm=cfg.clip_norm or None)
  return tx, schedule


def _multiply(factors) -> optax.GradientTransformation:
  """Multiplies each update leaf by its leaf of `factors` (broadcast against it)."""
  return optax.stateless(lambda updates, params=None: jax.tree.map(
      lambda u, f: u * jnp.asarray(f, u.dtype), updates, factors))


def freeze(tx: optax.GradientTransformation, mask) -> optax.GradientTransformation:
  """`tx` on the trainable part of the parameters only.

  `mask` is a tree like the params whose leaves broadcast against them (1.0 train, 0.0
  frozen; e.g. a `[rows, 1]` column for single embedding rows). Gradients are masked before
  `tx`, so clipping and the moments see only trainable ones, and updates after it, so that
  weight decay does not move frozen values either.
  """
  return optax.chain(_multiply(mask), tx, _multiply(mask))


def scale_updates(tx: optax.GradientTransformation, scales) -> optax.GradientTransformation:
  """`tx` with its updates multiplied by `scales` (a tree like `freeze`'s mask).

  Scaling after `tx` makes each factor a learning-rate multiplier for its part of the
  parameters (weight decay included); clipping and AdamW's moments see the raw gradients.
  """
  return optax.chain(tx, _multiply(scales))
