"""K-means: monotone inertia, planted clusters, empty-cluster re-seeding, determinism; RQ-KMeans."""

import itertools

from absl.testing import absltest
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.semantic_ids import kmeans as kmeans_lib
from minirec_jax.semantic_ids import rqkmeans


def blobs(num_blobs: int, per_blob: int, dim: int, *, spread: float = 0.05, seed: int = 0):
  """Well separated Gaussian blobs: points `[num_blobs * per_blob, dim]`, labels `[n]`."""
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_blobs, dim)) * 3.0
  labels = np.repeat(np.arange(num_blobs), per_blob)
  points = centers[labels] + spread * rng.normal(size=(len(labels), dim))
  return points.astype(np.float32), labels


def is_bijection(a: np.ndarray, b: np.ndarray) -> bool:
  pairs = set(zip(a.tolist(), b.tolist()))
  return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


class KMeansTest(absltest.TestCase):

  def test_inertia_never_increases(self):
    x = np.random.default_rng(1).normal(size=(300, 5)).astype(np.float32)
    result = kmeans_lib.kmeans(x, 16, jax.random.key(0), num_iters=30)
    history = np.asarray(result.inertia_history)
    self.assertEqual(history.shape, (31,))
    self.assertTrue(np.all(np.diff(history) <= 1e-5 * history[0]), history)
    self.assertLess(history[-1], history[0])  # Lloyd steps did something
    np.testing.assert_allclose(result.inertia, history[-1])

  def test_recovers_planted_clusters(self):
    x, labels = blobs(8, 40, 6)
    result = kmeans_lib.kmeans(x, 8, jax.random.key(3), num_iters=20)
    self.assertTrue(is_bijection(np.asarray(result.assignments), labels))

  def test_all_centroids_used_even_from_bad_start(self):
    # Three far blobs plus a few stragglers; K=6 forces clusters inside blobs. Seeding all
    # centroids on one blob makes most clusters empty after the first assignment.
    x, _ = blobs(3, 30, 2, spread=0.5)
    start = jnp.asarray(np.repeat(x[:1], 6, axis=0) + np.arange(6)[:, None] * 1e-3)
    centroids = start
    for _ in range(10):
      centroids = kmeans_lib.lloyd_update(x, centroids, kmeans_lib.assign(x, centroids))
    self.assertLen(np.unique(np.asarray(kmeans_lib.assign(x, centroids))), 6)

  def test_duplicate_points_and_determinism(self):
    x = np.repeat(np.eye(4, dtype=np.float32), 10, axis=0)  # only 4 distinct points
    a = kmeans_lib.kmeans(x, 4, jax.random.key(7), num_iters=5)
    b = kmeans_lib.kmeans(x, 4, jax.random.key(7), num_iters=5)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    self.assertAlmostEqual(float(a.inertia), 0.0, places=5)
    with self.assertRaisesRegex(ValueError, 'at least k=8'):
      kmeans_lib.kmeans(x[:5], 8, jax.random.key(0))


class RQKMeansTest(absltest.TestCase):

  def test_levels_refine_hierarchical_data(self):
    # Item = coarse offset + fine offset (fine offsets shared by all coarse blobs): level 0
    # must find the coarse blob, level 1 (on the residual) the fine offset.
    rng = np.random.default_rng(0)
    coarse = rng.normal(size=(4, 8)) * 10.0
    fine = rng.normal(size=(4, 8))
    labels = np.array(list(itertools.product(range(4), range(4), range(10))))
    x = coarse[labels[:, 0]] + fine[labels[:, 1]] + 0.01 * rng.normal(size=(len(labels), 8))
    result = rqkmeans.residual_kmeans(x.astype(np.float32), num_levels=2, codebook_size=4,
                                      key=jax.random.key(0))
    codes = np.asarray(result.codes)
    self.assertEqual(codes.shape, (160, 2))
    self.assertEqual(codes.dtype, np.int32)
    self.assertTrue(is_bijection(codes[:, 0], labels[:, 0]))
    self.assertTrue(is_bijection(codes[:, 1], labels[:, 1]))
    np.testing.assert_array_equal(rqkmeans.encode(result.codebooks, x), codes)
    recon = np.asarray(rqkmeans.decode(result.codebooks, codes))
    self.assertLess(np.mean((recon - x) ** 2), 1e-3)

  def test_balanced_levels_respect_capacity(self):
    # Skewed data: one dense blob holds most points; plain k-means would give it few clusters.
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.normal(size=(150, 4)) * 0.1, rng.normal(size=(53, 4)) * 3.0])
    k = 8
    result = rqkmeans.residual_kmeans(x.astype(np.float32), num_levels=2, codebook_size=k,
                                      key=jax.random.key(1), balanced=True)
    for level in range(2):
      sizes = np.bincount(np.asarray(result.codes[:, level]), minlength=k)
      self.assertGreaterEqual(sizes.min(), len(x) // k)
      self.assertLessEqual(sizes.max(), len(x) // k + 1)

  def test_balanced_assignment_is_nearest_when_capacity_allows(self):
    x, labels = blobs(4, 10, 3)
    centroids = jnp.asarray(np.stack([x[labels == b].mean(0) for b in range(4)]))
    got = np.asarray(rqkmeans.balanced_assign(jnp.asarray(x), centroids))
    np.testing.assert_array_equal(got, labels)


if __name__ == '__main__':
  absltest.main()
