"""K-means in JAX: greedy k-means++ seeding and Lloyd iterations in a jitted `lax.scan`.

Empty clusters are re-seeded on the points farthest from their centroids, so all K centroids
stay in use whenever there are at least K distinct points. Every step keeps the inertia
(sum of squared distances to the assigned centroid) non-increasing: moving centroids to the
means of their members cannot raise it, moving an empty centroid changes no member's
distance, and re-assigning each point to its nearest centroid can only lower it.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp


class KMeansResult(NamedTuple):
  centroids: jax.Array         # float32 [K, d]
  assignments: jax.Array       # int32 [n]: index of the nearest centroid
  inertia: jax.Array           # float32 []: of the returned centroids and assignments
  inertia_history: jax.Array   # float32 [num_iters + 1]: seeding, then after each Lloyd step


def squared_distances(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """`||x_i - c_k||^2` as `[n, K]` for x `[n, d]`, centroids `[K, d]` (clamped at 0)."""
  x_sq = jnp.sum(x * x, axis=-1, keepdims=True)
  c_sq = jnp.sum(centroids * centroids, axis=-1)
  cross = jnp.matmul(x, centroids.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(x_sq + c_sq[None, :] - 2.0 * cross, 0.0)


def assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Index of the nearest centroid, int32 `[n]`."""
  return jnp.argmin(squared_distances(x, centroids), axis=-1).astype(jnp.int32)


def point_errors(x: jax.Array, centroids: jax.Array, assignments: jax.Array) -> jax.Array:
  """Exact `||x_i - c_{a_i}||^2`, `[n]` (no expansion, so no cancellation error)."""
  diff = x - centroids[assignments]
  return jnp.sum(diff * diff, axis=-1)


def kmeans_plusplus(x: jax.Array, k: int, key: jax.Array,
                    num_local_trials: int | None = None) -> jax.Array:
  """Greedy k-means++ seeding: centroids `[k, d]` chosen among the rows of x `[n, d]`.

  Each new centroid is the best (lowest resulting inertia) of `num_local_trials` candidates
  drawn with probability proportional to the squared distance to the nearest chosen
  centroid (default 2 + ln k trials, as in Arthur & Vassilvitskii's greedy variant). When
  every point already sits on a centroid (fewer distinct points than k), draws are uniform.
  """
  chex.assert_rank(x, 2)
  x = x.astype(jnp.float32)
  trials = num_local_trials or 2 + int(math.log(k))
  return _kmeans_plusplus(x, k, key, trials)


@functools.partial(jax.jit, static_argnums=(1, 3))
def _kmeans_plusplus(x, k, key, trials):
  n, d = x.shape

  def draw(key, min_d2, shape):
    total = jnp.sum(min_d2)
    probs = jnp.where(total > 0, min_d2 / jnp.where(total > 0, total, 1.0), 1.0 / n)
    return jax.random.choice(key, n, shape=shape, p=probs)

  first_key, loop_key = jax.random.split(key)
  first = jax.random.randint(first_key, (), 0, n)
  centroids = jnp.zeros((k, d), jnp.float32).at[0].set(x[first])
  min_d2 = squared_distances(x, x[first][None])[:, 0]

  def body(i, carry):
    centroids, min_d2 = carry
    candidates = draw(jax.random.fold_in(loop_key, i), min_d2, (trials,))
    cand_d2 = squared_distances(x, x[candidates])                    # [n, trials]
    new_min = jnp.minimum(min_d2[:, None], cand_d2)
    best = jnp.argmin(jnp.sum(new_min, axis=0))
    return centroids.at[i].set(x[candidates[best]]), new_min[:, best]

  centroids, _ = jax.lax.fori_loop(1, k, body, (centroids, min_d2))
  return centroids


def lloyd_update(x: jax.Array, centroids: jax.Array, assignments: jax.Array) -> jax.Array:
  """New centroids `[K, d]`: member means; empty clusters move to the farthest points.

  The j-th empty cluster takes the point with the j-th largest distance to its own centroid,
  so several empty clusters never land on the same point.
  """
  k = centroids.shape[0]
  counts = jax.ops.segment_sum(jnp.ones_like(assignments, jnp.float32), assignments, k)
  sums = jax.ops.segment_sum(x, assignments, k)
  means = sums / jnp.maximum(counts, 1.0)[:, None]
  empty = counts == 0
  num_far = min(k, x.shape[0])
  _, far = jax.lax.top_k(point_errors(x, centroids, assignments), num_far)
  rank = jnp.clip(jnp.cumsum(empty) - 1, 0, num_far - 1)
  return jnp.where(empty[:, None], x[far[rank]], means)


@functools.partial(jax.jit, static_argnums=(1, 3, 4))
def _kmeans(x, k, key, num_iters, trials):
  centroids = _kmeans_plusplus(x, k, key, trials)

  def step(centroids, _):
    assignments = assign(x, centroids)
    inertia = jnp.sum(point_errors(x, centroids, assignments))
    return lloyd_update(x, centroids, assignments), inertia

  centroids, history = jax.lax.scan(step, centroids, None, length=num_iters)
  assignments = assign(x, centroids)
  inertia = jnp.sum(point_errors(x, centroids, assignments))
  return KMeansResult(centroids, assignments, inertia, jnp.append(history, inertia))


def kmeans(x: jax.Array, k: int, key: jax.Array, *, num_iters: int = 100,
           num_local_trials: int | None = None) -> KMeansResult:
  """Clusters x `[n, d]` into k clusters (n >= k); deterministic given `key`.

  Runs exactly `num_iters` Lloyd steps (fixed shapes; a converged run simply repeats).
  """
  chex.assert_rank(x, 2)
  if x.shape[0] < k:
    raise ValueError(f'k-means needs at least k={k} points, got {x.shape[0]}')
  trials = num_local_trials or 2 + int(math.log(k))
  return _kmeans(jnp.asarray(x, jnp.float32), k, key, num_iters, trials)
