"""Collision handling (Sinkhorn + fallback, appended rank) and the tokenizer report."""

from absl.testing import absltest
import jax
import numpy as np

from minirec_jax.semantic_ids import collisions
from minirec_jax.semantic_ids import report as report_lib
from minirec_jax.semantic_ids import rqkmeans


def official_sinkhorn_q(distances, epsilon, iterations):
  """The official formula, directly in float64 (fine where exp does not overflow)."""
  q = np.exp(-distances / epsilon)
  q /= q.sum()
  m, k = q.shape
  for _ in range(iterations):
    q /= q.sum(axis=1, keepdims=True)
    q /= k
    q /= q.sum(axis=0, keepdims=True)
    q /= m
  return q


def assert_unique_rows(test, codes):
  test.assertLen(np.unique(codes, axis=0), len(codes))


class SinkhornTest(absltest.TestCase):

  def test_centred_distances_span_minus_one_to_one(self):
    rng = np.random.default_rng(0)
    d = collisions.centred_distances(rng.normal(size=(5, 3)), rng.normal(size=(7, 3)))
    self.assertEqual(d.dtype, np.float64)
    self.assertAlmostEqual(d.min(), -1.0, places=4)
    self.assertAlmostEqual(d.max(), 1.0, places=4)

  def test_log_space_matches_official_formula(self):
    rng = np.random.default_rng(1)
    d = collisions.centred_distances(rng.normal(size=(6, 4)), rng.normal(size=(10, 4)))
    q = official_sinkhorn_q(d, 0.1, 50)
    np.testing.assert_array_equal(collisions.sinkhorn_codes(d, 0.1, 50), q.argmax(1))
    # At the official eps 0.003 the direct formula overflows/underflows; log space does not.
    self.assertTrue(np.all(collisions.sinkhorn_codes(d) >= 0))

  def test_spreads_a_group_that_shares_the_nearest_code(self):
    codebook = np.eye(4) * 2.0
    items = 0.6 * codebook[0] + 0.25 * codebook   # all nearest code 0, each leaning elsewhere
    d = collisions.centred_distances(items, codebook)
    self.assertTrue(np.all(d.argmin(1) == 0))
    self.assertLen(np.unique(collisions.sinkhorn_codes(d)), 4)


class ResolveTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    rng = np.random.default_rng(2)
    self.codebook = rng.normal(size=(8, 3))
    self.residuals = rng.normal(size=(12, 3))
    self.residuals[5] = self.residuals[4]           # identical embeddings
    self.residuals[9] = self.residuals[4]
    nearest = ((self.residuals[:, None] - self.codebook[None]) ** 2).sum(-1).argmin(1)
    prefix = np.array([[0, 1]] * 6 + [[2, 3]] * 6)
    self.codes = np.concatenate([prefix, nearest[:, None]], axis=1).astype(np.int32)
    self.codes[9, :2] = self.codes[4, :2]           # same full SID as items 4 and 5
    self.codes[11] = self.codes[10]                 # a distinct-embedding collision

  def test_sinkhorn_then_fallback_is_collision_free(self):
    self.assertNotEmpty(collisions.collision_groups(self.codes))
    out = collisions.resolve_sinkhorn(self.codes, self.residuals, self.codebook)
    self.assertEqual(out.codes.shape, self.codes.shape)
    self.assertEqual(out.codes.dtype, np.int32)
    assert_unique_rows(self, out.codes)
    self.assertFalse(out.appended)
    self.assertGreaterEqual(out.sinkhorn_rounds, 1)
    self.assertGreaterEqual(out.fallback_moves, 1)  # identical residuals need the fallback
    np.testing.assert_array_equal(out.codes[:, :2], self.codes[:, :2])  # prefixes kept
    # Items that never collided keep their codes.
    collided = np.concatenate(collisions.collision_groups(self.codes))
    untouched = np.setdiff1d(np.arange(12), collided)
    np.testing.assert_array_equal(out.codes[untouched], self.codes[untouched])

  def test_exhausted_prefix_appends_a_rank(self):
    codebook = np.eye(2)
    residuals = np.zeros((4, 2))
    codes = np.array([[1, 0], [1, 0], [1, 0], [0, 1]], np.int32)  # 3 items, 2 codes: no room
    out = collisions.resolve_sinkhorn(codes, residuals, codebook)
    self.assertTrue(out.appended)
    self.assertEqual(out.exhausted_prefixes, [(1,)])
    self.assertEqual(out.codes.shape, (4, 3))
    assert_unique_rows(self, out.codes)

  def test_append_rank(self):
    codes = np.array([[1, 2], [0, 0], [1, 2], [1, 2], [3, 3]], np.int32)
    out = collisions.append_rank(codes, 4)
    np.testing.assert_array_equal(out[:, 2], [0, 0, 1, 2, 0])
    np.testing.assert_array_equal(out[:, :2], codes)
    assert_unique_rows(self, out)
    with self.assertRaisesRegex(ValueError, 'more than the 2 ranks'):
      collisions.append_rank(codes, 2)

  def test_rqkmeans_with_identical_embeddings_end_to_end(self):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 5)).astype(np.float32)
    x[10:14] = x[3]                                  # five identical items
    fit = rqkmeans.residual_kmeans(x, num_levels=2, codebook_size=8, key=jax.random.key(0),
                                   num_iters=10)
    self.assertNotEmpty(collisions.collision_groups(fit.codes))
    residuals = rqkmeans.last_level_residuals(fit.codebooks, x, fit.codes)
    sinkhorn = collisions.resolve_sinkhorn(fit.codes, residuals, fit.codebooks[-1])
    appended = collisions.append_rank(fit.codes, 8)
    for codes in (sinkhorn.codes, appended):
      assert_unique_rows(self, codes)
    self.assertEqual(appended.shape, (40, 3))


class ReportTest(absltest.TestCase):

  def test_numbers_and_markdown(self):
    before = np.array([[0, 1], [0, 1], [0, 1], [2, 3], [2, 3], [1, 0]])
    after = collisions.append_rank(before, 4)
    rep = report_lib.tokenizer_report(before, after, 4, recon_error=0.25)
    self.assertEqual(rep['before']['unique_sids'], 3)
    self.assertAlmostEqual(rep['before']['collision_rate'], 0.5)
    self.assertEqual((rep['before']['collided_items'], rep['before']['collision_groups'],
                      rep['before']['max_group']), (5, 2, 3))
    self.assertEqual(rep['after']['collision_rate'], 0.0)
    level0 = rep['before']['levels'][0]
    self.assertEqual((level0['codes_used'], level0['utilisation']), (3, 0.75))
    p = np.array([3, 1, 2]) / 6
    self.assertAlmostEqual(level0['entropy'], -(p * np.log(p)).sum() / np.log(4))
    self.assertLen(rep['after']['levels'], 3)
    text = report_lib.report_markdown(rep)
    self.assertIn('| before | 3 | 50.00% | 5 / 2 | 3 |', text)
    self.assertIn('| 2 | - | - | - | 3 | 75.0% |', text)
    self.assertIn('0.25', text)


if __name__ == '__main__':
  absltest.main()
