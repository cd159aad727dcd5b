"""RQ-KMeans: residual k-means directly on the item embeddings (no autoencoder).

Level l clusters the residual left by levels < l, and the residual then
loses the assigned centroid. The result has the same form as the RQ-VAE's (codes int32
`[n, L]`, codebooks `[L, K, d]`), so either tokenizer can feed the collision handling.
`balanced=True` is the constrained variant: every level's clusters hold floor(n/K) or
floor(n/K)+1 items, from a greedy capacity-respecting assignment refined by Lloyd steps.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import chex
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.semantic_ids import kmeans as kmeans_lib


class RQKMeansResult(NamedTuple):
  codebooks: jax.Array     # float32 [L, K, d]
  codes: jax.Array         # int32 [n, L]
  recon_error: float       # mean squared error of sum-of-centroids reconstruction, per element


def capacities(counts: jax.Array, n: int) -> jax.Array:
  """Cluster sizes summing to n: floor(n/K) each, +1 for the n mod K most wanted clusters.

  `counts` `[K]` is each cluster's popularity (e.g. its unconstrained size).
  """
  k = counts.shape[0]
  base, extra = divmod(n, k)
  order = jnp.argsort(-counts, stable=True)
  return jnp.full((k,), base, jnp.int32).at[order[:extra]].add(1)


@jax.jit
def balanced_assign(x: jax.Array, centroids: jax.Array) -> jax.Array:
  """Capacity-respecting assignment, int32 `[n]`, with exactly `capacities` items per cluster.

  Points choose in order of regret (how much farther their second-nearest centroid is than
  their nearest), each taking the nearest centroid with room left: points with a clear
  favourite get it, ambiguous points absorb the overflow. Equals the nearest-centroid
  assignment whenever that one already fits the capacities.
  """
  n, k = x.shape[0], centroids.shape[0]
  d2 = kmeans_lib.squared_distances(x, centroids)
  nearest = jnp.argmin(d2, axis=-1)
  room = capacities(jnp.bincount(nearest, length=k), n)
  two = -jax.lax.top_k(-d2, min(2, k))[0]
  regret = two[:, -1] - two[:, 0]
  order = jnp.argsort(-regret, stable=True)

  def body(i, carry):
    codes, room = carry
    p = order[i]
    c = jnp.argmin(jnp.where(room > 0, d2[p], jnp.inf))
    return codes.at[p].set(c), room.at[c].add(-1)

  codes, _ = jax.lax.fori_loop(0, n, body, (jnp.zeros((n,), jnp.int32), room))
  return codes


@functools.partial(jax.jit, static_argnums=(2,))
def _balanced_lloyd(x, centroids, num_iters):
  k = centroids.shape[0]

  def step(centroids, _):
    codes = balanced_assign(x, centroids)
    counts = jnp.bincount(codes, length=k).astype(jnp.float32)
    sums = jax.ops.segment_sum(x, codes, k)
    return sums / jnp.maximum(counts, 1.0)[:, None], None

  centroids, _ = jax.lax.scan(step, centroids, None, length=num_iters)
  return centroids, balanced_assign(x, centroids)


@jax.jit
def encode(codebooks: jax.Array, x: jax.Array) -> jax.Array:
  """Greedy residual codes int32 `[n, L]` of x `[n, d]` under codebooks `[L, K, d]`."""
  def level(residual, codebook):
    codes = kmeans_lib.assign(residual, codebook)
    return residual - codebook[codes], codes

  _, codes = jax.lax.scan(level, jnp.asarray(x, jnp.float32), codebooks)
  return codes.T


@jax.jit
def decode(codebooks: jax.Array, codes: jax.Array) -> jax.Array:
  """Sum of each item's centroids, `[n, d]`, for codes `[n, L]`."""
  levels = jnp.arange(codebooks.shape[0])
  return jnp.sum(codebooks[levels[None, :], codes], axis=1)


def last_level_residuals(codebooks: jax.Array, x: jax.Array, codes: jax.Array) -> jax.Array:
  """x minus each item's first L-1 centroids: `[n, d]`, the input of the last level."""
  return jnp.asarray(x, jnp.float32) - decode(codebooks[:-1], codes[:, :-1])


def residual_kmeans(x: np.ndarray | jax.Array, num_levels: int, codebook_size: int,
                    key: jax.Array, *, num_iters: int = 100, balanced: bool = False,
                    balanced_iters: int = 20) -> RQKMeansResult:
  """Fits L levels of K centroids on x `[n, d]` (n >= K), deterministically given `key`.

  With `balanced`, each level's k-means solution is refined by `balanced_iters` Lloyd steps
  under the capacity constraint, and the returned codes are those balanced assignments (a
  plain `encode` of the same data would pick nearest centroids instead).
  """
  chex.assert_rank(x, 2)
  residual = jnp.asarray(x, jnp.float32)
  codebooks, codes = [], []
  for level in range(num_levels):
    fit = kmeans_lib.kmeans(residual, codebook_size, jax.random.fold_in(key, level),
                            num_iters=num_iters)
    centroids, assignments = fit.centroids, fit.assignments
    if balanced:
      centroids, assignments = _balanced_lloyd(residual, centroids, balanced_iters)
    codebooks.append(centroids)
    codes.append(assignments)
    residual = residual - centroids[assignments]
  return RQKMeansResult(codebooks=jnp.stack(codebooks), codes=jnp.stack(codes, axis=1),
                        recon_error=float(jnp.mean(residual ** 2)))
