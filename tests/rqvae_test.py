"""RQ-VAE: straight-through gradients, loss gradients, training, planted clusters, dead codes."""

from absl.testing import absltest
import chex
from flax.training import train_state
import jax
import jax.numpy as jnp
import numpy as np
import optax

from minirec_jax.semantic_ids import rqvae


def blobs(num_blobs: int, per_blob: int, dim: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  centers = rng.normal(size=(num_blobs, dim)) * 2.0
  labels = np.repeat(np.arange(num_blobs), per_blob)
  return (centers[labels] + 0.05 * rng.normal(size=(len(labels), dim))).astype(np.float32), \
      labels


def tiny_config(**overrides):
  config = rqvae.rqvae_config('fast')
  config.update(dict(hidden_dims=(32,), e_dim=8, num_levels=2, codebook_size=8, epochs=60,
                     warmup_epochs=5, eval_every=20, kmeans_iters=20, ae_warmup_epochs=10,
                     reseed_every=10, reseed_until=40, lr=3e-3))
  config.update(overrides)
  return config


class QuantizerTest(absltest.TestCase):

  def setUp(self):
    super().setUp()
    keys = jax.random.split(jax.random.key(0), 3)
    self.codebooks = jax.random.normal(keys[0], (3, 8, 4))
    self.z = jax.random.normal(keys[1], (6, 4)) * 2.0
    self.weights = jax.random.normal(keys[2], (6, 4))

  def test_forward_is_sum_of_greedy_codewords(self):
    out = rqvae.residual_quantize(self.codebooks, self.z)
    residual, total = np.asarray(self.z), 0.0
    for level in range(3):
      book = np.asarray(self.codebooks[level])
      codes = np.argmin(((residual[:, None] - book[None]) ** 2).sum(-1), axis=1)
      np.testing.assert_array_equal(out.codes[:, level], codes)
      total = total + book[codes]
      residual = residual - book[codes]
    np.testing.assert_allclose(out.quantized, total, atol=1e-5)
    self.assertEqual(out.codes.dtype, jnp.int32)

  def test_straight_through_gradient_is_exact(self):
    # Any downstream loss g: d g(quantize(z)) / dz must equal dg/dq at q = quantize(z).
    def downstream(q):
      return jnp.sum(jnp.sin(q) * self.weights) + jnp.sum(q ** 3)

    def through_quantizer(z):
      return downstream(rqvae.residual_quantize(self.codebooks, z).quantized)

    q = rqvae.residual_quantize(self.codebooks, self.z).quantized
    np.testing.assert_array_equal(jax.grad(through_quantizer)(self.z), jax.grad(downstream)(q))
    # ... and no downstream gradient reaches the codebooks.
    codebook_grad = jax.grad(lambda c: downstream(rqvae.residual_quantize(c, self.z).quantized))
    np.testing.assert_array_equal(codebook_grad(self.codebooks), 0.0)

  def test_rq_loss_gradients_match_official_semantics(self):
    beta, (levels, k, e), n = 0.25, self.codebooks.shape, self.z.shape[0]
    out = rqvae.residual_quantize(self.codebooks, self.z, beta)
    grad_c, grad_z = jax.grad(lambda c, z: rqvae.residual_quantize(c, z, beta).rq_loss,
                              argnums=(0, 1))(self.codebooks, self.z)
    residuals, codes = np.asarray(out.residuals), np.asarray(out.codes)
    books = np.asarray(self.codebooks)
    # Codebook loss mse(q, sg(r)) pulls each selected codeword toward its residuals.
    want_c = np.zeros_like(books)
    for level in range(levels):
      for i in range(n):
        c = codes[i, level]
        want_c[level, c] += 2.0 * (books[level, c] - residuals[level, i]) / (n * e * levels)
    np.testing.assert_allclose(grad_c, want_c, atol=1e-6)
    # Commitment reaches z only through level 0: deeper residuals are r - (r + sg(q - r)).
    q0 = books[0, codes[:, 0]]
    want_z = beta * 2.0 * (np.asarray(self.z) - q0) / (n * e * levels)
    np.testing.assert_allclose(grad_z, want_z, atol=1e-6)


class RQVAETest(absltest.TestCase):

  def test_config_presets(self):
    official = rqvae.rqvae_config('official')
    self.assertEqual(tuple(official.hidden_dims), (2048, 1024, 512, 256, 128, 64))
    self.assertEqual((official.e_dim, official.num_levels, official.codebook_size), (32, 3, 256))
    self.assertEqual((official.lr, official.weight_decay, official.epochs,
                      official.batch_size, official.warmup_epochs), (1e-3, 0.0, 10000, 20480, 50))
    self.assertEqual((official.ae_warmup_epochs, official.reseed_every), (0, 0))
    with self.assertRaisesRegex(ValueError, 'unknown RQ-VAE config'):
      rqvae.rqvae_config('huge')

  def test_architecture_and_encode(self):
    model = rqvae.RQVAE(in_dim=12, hidden_dims=(16, 10), e_dim=4, num_levels=2, codebook_size=5)
    x = jax.random.normal(jax.random.key(1), (7, 12))
    params = model.init(jax.random.key(0), x)['params']
    chex.assert_shape(params['encoder']['dense_0']['kernel'], (12, 16))
    chex.assert_shape(params['encoder']['dense_2']['kernel'], (10, 4))
    chex.assert_shape(params['decoder']['dense_2']['kernel'], (16, 12))
    np.testing.assert_array_equal(params['decoder']['dense_1']['bias'], 0.0)
    out = model.apply({'params': params}, x)
    chex.assert_shape(out.recon, (7, 12))
    # The last encoder layer has no ReLU: latents take negative values.
    self.assertLess(float(jnp.min(out.latent)), 0.0)
    np.testing.assert_array_equal(rqvae.encode(params, x), out.quantized.codes)
    self.assertEqual(rqvae.model_from_params(params), model)

  def test_init_codebooks_clusters_each_level(self):
    x, labels = blobs(8, 20, 12)
    model = rqvae.RQVAE(in_dim=12, hidden_dims=(16,), e_dim=6, num_levels=2, codebook_size=8)
    params = model.init(jax.random.key(0), x)['params']
    params = rqvae.init_codebooks(params, x, jax.random.key(1), kmeans_iters=20)
    codes = np.asarray(rqvae.encode(params, x))
    # A random ReLU encoder keeps well separated blobs apart: level 0 finds them.
    self.assertLen(set(zip(codes[:, 0].tolist(), labels.tolist())), 8)
    self.assertLen(np.unique(codes[:, 1]), 8)

  def test_train_step_lowers_loss(self):
    x, _ = blobs(4, 16, 10)
    model = rqvae.RQVAE(in_dim=10, hidden_dims=(16,), e_dim=4, num_levels=2, codebook_size=4)
    params = model.init(jax.random.key(0), x)['params']
    params = rqvae.init_codebooks(params, x, jax.random.key(1), kmeans_iters=10)
    tx = optax.adamw(3e-3, weight_decay=0.0)
    state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)
    step = jax.jit(chex.assert_max_traces(rqvae.make_rqvae_train_step(model, tx), n=1))
    losses = []
    for i in range(250):
      state, metrics = step(state, jnp.asarray(x), jax.random.key(i))
      losses.append(float(metrics['loss']))
    # The rq loss first grows while the encoder spreads the latents, then both parts fall.
    self.assertLess(np.mean(losses[-10:]), 0.5 * losses[0])
    self.assertEqual(set(metrics), {'loss', 'recon_loss', 'rq_loss', 'grad_norm'})

  def test_first_level_recovers_planted_blobs(self):
    x, labels = blobs(8, 25, 16, seed=3)
    params, history = rqvae.train_rqvae(x, tiny_config(batch_size=64), jax.random.key(0))
    codes = np.asarray(rqvae.encode(params, x))
    self.assertLen(set(zip(codes[:, 0].tolist(), labels.tolist())), 8)  # bijection
    self.assertEqual([row['epoch'] for row in history], [30, 50, 60])
    self.assertLess(history[-1]['recon_loss'], history[0]['recon_loss'])

  def test_reseed_moves_dead_codes_onto_data(self):
    x, _ = blobs(8, 10, 6)
    model = rqvae.RQVAE(in_dim=6, hidden_dims=(12,), e_dim=3, num_levels=2, codebook_size=8)
    params = model.init(jax.random.key(0), x)['params']
    params = rqvae.init_codebooks(params, x, jax.random.key(1), kmeans_iters=10)
    # Push five level-0 codewords far away: nothing selects them any more.
    params['codebooks'] = params['codebooks'].at[0, 3:].add(1e3)
    self.assertLen(np.unique(rqvae.encode(params, x)[:, 0]), 3)
    reseeded, dead = rqvae.reseed_dead_codes(params, x, jax.random.key(2))
    self.assertEqual(int(dead[0]), 5)
    self.assertLen(np.unique(rqvae.encode(reseeded, x)[:, 0]), 8)
    np.testing.assert_array_equal(reseeded['codebooks'][0, :3], params['codebooks'][0, :3])


if __name__ == '__main__':
  absltest.main()
