"""RQ-VAE item tokenizer (MiniOneRec's): MLP autoencoder with an L-level residual quantizer.

Per level l the residual r_l is quantised to its nearest codeword q_l (squared L2); the level
loss is mse(q_l, sg(r_l)) + beta * mse(sg(q_l), r_l); the straight-through output
r_l + sg(q_l - r_l) is subtracted from the residual and summed over levels before decoding.
Total loss = mse(recon, x) + quant_weight * (mean of the level losses). Codebooks are ordinary
parameters `[L, K, e_dim]`, set by k-means on each level's residuals (`init_codebooks`).

Why the official first level collapses (48 of 256 codes used on Industrial): the codebooks are
fitted once, by k-means on the latents of the *untrained* encoder; training then moves the
latents far from where they were, and a code that no latent selects gets no gradient (only
the codebook loss of selected codes moves codewords), so it stays dead for good. The remedies
here, both off in the 'official' config and on in 'fast':
* `ae_warmup_epochs`: train the autoencoder alone first, so k-means sees latents that already
  have their trained geometry;
* `reseed_every` / `reseed_until`: during the first part of training, move every dead code
  onto a residual drawn with probability proportional to its quantisation error (k-means++
  style), level by level.

With a `collaborative.Regulariser` (configs/tokenizer.py `collab.mode='letter'`), the loss also
has LETTER's collaborative and code-diversity terms (semantic_ids/collaborative.py) during the
quantised phase; the SASRec -> latent projection they learn sits in the params under
`collaborative.PROJECTION` (the model ignores it).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple, Sequence

import chex
import flax.linen as nn
from flax.training import train_state
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from minirec_jax.infra import metric_logging
from minirec_jax.infra import optim
from minirec_jax.semantic_ids import collaborative
from minirec_jax.semantic_ids import kmeans as kmeans_lib
from minirec_jax.semantic_ids import report as report_lib

Params = Any


class MLP(nn.Module):
  """Dense layers with ReLU between them and none after the last; Xavier-normal, zero bias."""

  features: Sequence[int]

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.features):
      x = nn.Dense(width, kernel_init=nn.initializers.xavier_normal(),
                   bias_init=nn.initializers.zeros, name=f'dense_{i}')(x)
      if i + 1 < len(self.features):
        x = nn.relu(x)
    return x


class Quantized(NamedTuple):
  quantized: jax.Array     # [n, e]: straight-through sum of the levels' codewords
  codes: jax.Array         # int32 [n, L]
  rq_loss: jax.Array       # []: mean over levels of codebook + beta * commitment loss
  residuals: jax.Array     # [L, n, e]: the residual entering each level


def residual_quantize(codebooks: jax.Array, z: jax.Array, beta: float = 0.25) -> Quantized:
  """Quantises latents z `[n, e]` with codebooks `[L, K, e]`, greedily level by level.

  The forward value of `quantized` is the sum of the selected codewords; its gradient with
  respect to z is the identity (straight-through), and codewords receive gradient only from
  the codebook loss, as in the official model.
  """
  chex.assert_rank([codebooks, z], [3, 2])
  chex.assert_equal(codebooks.shape[-1], z.shape[-1])
  sg = jax.lax.stop_gradient

  def level(carry, codebook):
    residual, total = carry
    codes = kmeans_lib.assign(sg(residual), sg(codebook))
    q = codebook[codes]
    loss = jnp.mean((q - sg(residual)) ** 2) + beta * jnp.mean((sg(q) - residual) ** 2)
    q_st = residual + sg(q - residual)
    return (residual - q_st, total + q_st), (codes, loss, residual)

  (_, total), (codes, losses, residuals) = jax.lax.scan(level, (z, jnp.zeros_like(z)),
                                                        codebooks)
  return Quantized(total, codes.T, jnp.mean(losses), residuals)


class RQVAEOutput(NamedTuple):
  recon: jax.Array         # [n, in_dim]
  latent: jax.Array        # [n, e]: encoder output
  quantized: Quantized


class RQVAE(nn.Module):
  """Stateless RQ-VAE; parameters: encoder, decoder, codebooks `[L, K, e_dim]`."""

  in_dim: int
  hidden_dims: Sequence[int] = (512, 256, 128)
  e_dim: int = 32
  num_levels: int = 3
  codebook_size: int = 256
  beta: float = 0.25

  def setup(self):
    self.encoder = MLP((*self.hidden_dims, self.e_dim))
    self.decoder = MLP((*reversed(self.hidden_dims), self.in_dim))
    # Overwritten by `init_codebooks` before training; unit-normal like torch nn.Embedding.
    self.codebooks = self.param('codebooks', nn.initializers.normal(1.0),
                                (self.num_levels, self.codebook_size, self.e_dim))

  def encode_latent(self, x: jax.Array) -> jax.Array:
    return self.encoder(x)

  def autoencode(self, x: jax.Array) -> jax.Array:
    """Reconstruction without the quantizer (autoencoder warm-up)."""
    return self.decoder(self.encoder(x))

  def __call__(self, x: jax.Array) -> RQVAEOutput:
    chex.assert_rank(x, 2)
    z = self.encoder(x)
    quantized = residual_quantize(self.codebooks, z, self.beta)
    return RQVAEOutput(self.decoder(quantized.quantized), z, quantized)


def model_from_params(params: Params, beta: float = 0.25) -> RQVAE:
  """Rebuilds the module from parameter shapes (the architecture is implied by them)."""
  encoder = params['encoder']
  kernels = [encoder[f'dense_{i}']['kernel'] for i in range(len(encoder))]
  num_levels, codebook_size, e_dim = params['codebooks'].shape
  return RQVAE(in_dim=kernels[0].shape[0], hidden_dims=tuple(k.shape[1] for k in kernels[:-1]),
               e_dim=e_dim, num_levels=num_levels, codebook_size=codebook_size, beta=beta)


@jax.jit
def encode(params: Params, x: jax.Array) -> jax.Array:
  """Plain nearest-codeword codes, int32 `[n, L]`, for embeddings x `[n, in_dim]`."""
  model = model_from_params(params)
  return model.apply({'params': params}, jnp.asarray(x, jnp.float32)).quantized.codes


@jax.jit
def last_level_residuals(params: Params, x: jax.Array) -> jax.Array:
  """Each item's residual entering the last level, `[n, e_dim]` (for collision handling)."""
  model = model_from_params(params)
  return model.apply({'params': params}, jnp.asarray(x, jnp.float32)).quantized.residuals[-1]


@jax.jit
def reconstruction_error(params: Params, x: jax.Array) -> jax.Array:
  """mse(decoder(quantized latents), x) over all elements of x `[n, in_dim]`."""
  model = model_from_params(params)
  x = jnp.asarray(x, jnp.float32)
  return jnp.mean((model.apply({'params': params}, x).recon - x) ** 2)


def latents(params: Params, x: jax.Array) -> jax.Array:
  """Encoder outputs `[n, e_dim]`."""
  model = model_from_params(params)
  return model.apply({'params': params}, x, method=RQVAE.encode_latent)


def init_codebooks(params: Params, x: jax.Array, key: jax.Array, *,
                   kmeans_iters: int = 100) -> Params:
  """Params with every level's codebook set by k-means on that level's residuals of x.

  Level 0 clusters the latents of x `[n, in_dim]` (n >= K); level l clusters what is left
  after subtracting the level-(l-1) centroids, as the official first-batch initialisation.
  """
  residual = latents(params, jnp.asarray(x, jnp.float32))
  books = []
  for level in range(params['codebooks'].shape[0]):
    fit = kmeans_lib.kmeans(residual, params['codebooks'].shape[1],
                            jax.random.fold_in(key, level), num_iters=kmeans_iters)
    books.append(fit.centroids)
    residual = residual - fit.centroids[fit.assignments]
  return {**params, 'codebooks': jnp.stack(books)}


@jax.jit
def reseed_dead_codes(params: Params, x: jax.Array, key: jax.Array) -> tuple[Params, jax.Array]:
  """Moves codes that no item of x selects onto residuals; returns (params, dead count [L]).

  Level by level (a re-seeded level changes the residuals below it): dead codes take distinct
  residual rows drawn with probability proportional to their current quantisation error, so
  they land where the codebook fits worst.
  """
  books = params['codebooks']
  num_levels, k, _ = books.shape
  residual = latents(params, x)
  dead_counts = []
  for level in range(num_levels):
    book = books[level]
    codes = kmeans_lib.assign(residual, book)
    dead = jnp.bincount(codes, length=k) == 0
    errors = kmeans_lib.point_errors(residual, book, codes)
    weights = jnp.where(jnp.sum(errors) > 0, errors, 1.0) + 1e-12
    picks = jax.random.choice(jax.random.fold_in(key, level), x.shape[0],
                              (min(k, x.shape[0]),), replace=False, p=weights)
    rank = jnp.clip(jnp.cumsum(dead) - 1, 0, picks.shape[0] - 1)
    book = jnp.where(dead[:, None], residual[picks[rank]], book)
    books = books.at[level].set(book)
    dead_counts.append(jnp.sum(dead))
    residual = residual - book[kmeans_lib.assign(residual, book)]
  return {**params, 'codebooks': books}, jnp.stack(dead_counts)


def rqvae_loss(model: RQVAE, params: Params, batch: jax.Array | collaborative.Batch,
               quant_weight: float, autoencoder_only: bool = False,
               collab: collaborative.Settings | None = None,
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Total loss and its parts for a batch `[b, in_dim]` (with `collab`: a collaborative.Batch,
  whose regulariser terms join the quantised loss)."""
  x = batch if collab is None else batch.x
  if autoencoder_only:
    recon = model.apply({'params': params}, x, method=RQVAE.autoencode)
    recon_loss = jnp.mean((recon - x) ** 2)
    return recon_loss, {'loss': recon_loss, 'recon_loss': recon_loss,
                        'rq_loss': jnp.zeros(())}
  out = model.apply({'params': params}, x)
  recon_loss = jnp.mean((out.recon - x) ** 2)
  loss = recon_loss + quant_weight * out.quantized.rq_loss
  metrics = {'recon_loss': recon_loss, 'rq_loss': out.quantized.rq_loss}
  if collab is not None:
    extra, terms = collaborative.regulariser(
        params[collaborative.PROJECTION], out.quantized.quantized, out.quantized.residuals,
        params['codebooks'], batch, collab)
    loss = loss + extra
    metrics.update(terms)
  return loss, {'loss': loss, **metrics}


@functools.partial(jax.jit, static_argnums=(2,))
def regulariser_terms(params: Params, batch: collaborative.Batch,
                      settings: collaborative.Settings) -> dict[str, jax.Array]:
  """The collaborative terms of `rqvae_loss` (unweighted) for a batch under params."""
  _, metrics = rqvae_loss(model_from_params(params), params, batch, 1.0, collab=settings)
  return {k: metrics[k] for k in ('collab_loss', 'code_concentration')}


def make_rqvae_train_step(model: RQVAE, tx: optax.GradientTransformation, *,
                          quant_weight: float = 1.0,
                          autoencoder_only: bool = False,
                          collab: collaborative.Settings | None = None) -> Callable:
  """Pure, un-jitted `step(state, batch [b, in_dim], rng) -> (state, metrics)`.

  `tx` updates the parameters (its state is `state.opt_state`). The model has no stochastic
  layers (the official dropout is 0), so `rng` is unused. `autoencoder_only` trains encoder
  and decoder without the quantizer (the codebooks get zero gradient). With `collab` the
  batch is a `collaborative.Batch` and the loss has its regulariser (see `rqvae_loss`).
  """

  def step(state: train_state.TrainState, batch: jax.Array, rng: jax.Array):
    del rng
    grad_fn = jax.grad(functools.partial(rqvae_loss, model, batch=batch,
                                         quant_weight=quant_weight,
                                         autoencoder_only=autoencoder_only, collab=collab),
                     has_aux=True)
    grads, metrics = grad_fn(state.params)
    metrics['grad_norm'] = optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                         opt_state=opt_state), metrics

  return step


def rqvae_config(name: str = 'fast') -> ml_collections.ConfigDict:
  """'official' (MiniOneRec's settings) or 'fast' (small MLP, anti-collapse remedies on)."""
  config = ml_collections.ConfigDict(dict(
      hidden_dims=(2048, 1024, 512, 256, 128, 64), e_dim=32, num_levels=3, codebook_size=256,
      beta=0.25, quant_weight=1.0,
      lr=1e-3, weight_decay=0.0, clip_norm=1.0, warmup_epochs=50,
      epochs=10000, batch_size=20480,      # > #items: one full-batch step per epoch
      eval_every=50, kmeans_iters=100,
      ae_warmup_epochs=0,                  # remedy 1: epochs of autoencoder-only training
      reseed_every=0, reseed_until=0,      # remedy 2: re-seed dead codes every N epochs until
  ))
  if name == 'official':
    return config
  if name == 'fast':
    config.update(dict(hidden_dims=(512, 256, 128), epochs=500, warmup_epochs=20,
                       eval_every=25, ae_warmup_epochs=100, reseed_every=25, reseed_until=350))
    return config
  raise ValueError(f"unknown RQ-VAE config {name!r}; use 'official' or 'fast'")


def _epoch_runner(model: RQVAE, tx: optax.GradientTransformation, n: int, batch_size: int,
                  quant_weight: float, autoencoder_only: bool,
                  collab: collaborative.Settings | None = None) -> Callable:
  """Jitted `run(state, data, key, first_epoch, num_epochs) -> (state, last-epoch metrics)`.

  `data` is the rows `[n, in_dim]`, or with `collab` a `collaborative.Batch` of all n rows.

  Each epoch shuffles the rows and takes ceil(n / b) batches of a fixed size b (the last
  batch wraps around the permutation), so every row is seen each epoch and shapes are static.
  A full-batch epoch is one step on all rows, unshuffled. `num_epochs` is traced: one
  compilation serves every chunk length.
  """
  step = make_rqvae_train_step(model, tx, quant_weight=quant_weight,
                               autoencoder_only=autoencoder_only, collab=collab)
  steps = -(-n // batch_size)

  def epoch(state, data, key):
    if steps == 1:
      state, metrics = step(state, data, key)
      return state, metrics
    order = jax.random.permutation(key, n)
    order = jnp.concatenate([order, order[:steps * batch_size - n]]).reshape(steps, batch_size)
    state, metrics = jax.lax.scan(
        lambda s, rows: step(s, jax.tree.map(lambda a: a[rows], data), key), state, order)
    return state, jax.tree.map(jnp.mean, metrics)

  @functools.partial(jax.jit, donate_argnums=(0,))
  def run(state, data, key, first_epoch, num_epochs):
    _, metrics_shape = jax.eval_shape(epoch, state, data, key)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), metrics_shape)

    def body(e, carry):
      state, _ = carry
      return epoch(state, data, jax.random.fold_in(key, e))

    return jax.lax.fori_loop(first_epoch, first_epoch + num_epochs, body, (state, zeros))

  return run


def train_rqvae(embeddings: np.ndarray, config: ml_collections.ConfigDict, key: jax.Array, *,
                log_fn: Callable[[dict], None] | None = None,
                collab: collaborative.Regulariser | None = None) -> tuple[Params, list[dict]]:
  """Trains on item embeddings `[n, in_dim]`; returns (best-collision params, history).

  Order: `ae_warmup_epochs` of autoencoder-only training, k-means codebook initialisation,
  then full RQ-VAE training up to `epochs` in total. Every `eval_every` epochs (and at the
  end) the collision rate of plain codes over all items is measured; as the official
  trainer, the returned params are those with the lowest rate (on a tie the later, longer
  trained ones; the official keeps the earlier). `history` holds one
  row per evaluation (epoch, losses, collision rate, codes used per level, dead codes
  re-seeded since the last row); `log_fn` receives each row as it is made.

  `collab` (targets row-aligned with the embeddings) adds its regulariser to the quantised
  phase, not to the autoencoder warm-up; the params then hold its projection too, and the
  history rows its terms.
  """
  x = jnp.asarray(embeddings, jnp.float32)
  chex.assert_rank(x, 2)
  n = x.shape[0]
  data, settings = x, None
  if collab is not None:
    settings, targets = collab
    chex.assert_shape([targets.embeddings, targets.trained], [(n, None), (n,)])
    data = collaborative.Batch(x, jnp.asarray(targets.embeddings, jnp.float32),
                               jnp.asarray(targets.trained, bool))
  if n < config.codebook_size:
    raise ValueError(f'{n} items cannot initialise {config.codebook_size} codes per level')
  if config.eval_every <= 0 or config.reseed_every < 0:
    raise ValueError('eval_every must be > 0 and reseed_every >= 0, got '
                     f'{config.eval_every} and {config.reseed_every}')
  if not 0 <= config.ae_warmup_epochs < config.epochs:
    raise ValueError(f'ae_warmup_epochs must lie in [0, epochs={config.epochs}), got '
                     f'{config.ae_warmup_epochs}')
  batch_size = min(config.batch_size, n)
  steps_per_epoch = -(-n // batch_size)
  model = RQVAE(in_dim=x.shape[1], hidden_dims=tuple(config.hidden_dims), e_dim=config.e_dim,
                num_levels=config.num_levels, codebook_size=config.codebook_size,
                beta=config.beta)
  init_key, kmeans_key, data_key, reseed_key = jax.random.split(key, 4)
  params = model.init(init_key, x[:1])['params']
  if collab is not None:  # fold_in: the keys of a run without it stay as they were
    params = {**params, collaborative.PROJECTION: collaborative.init_projection(
        jax.random.fold_in(init_key, 1), data.cf.shape[1], config.e_dim)}
  schedule = optim.learning_rate_schedule(
      config.lr, config.epochs * steps_per_epoch, config.warmup_epochs * steps_per_epoch,
      decay='constant')
  tx = optim.adamw(schedule, weight_decay=config.weight_decay,
                   clip_norm=config.clip_norm or None)
  state = train_state.TrainState.create(apply_fn=model.apply, params=params, tx=tx)

  runners = {ae: _epoch_runner(model, tx, n, batch_size, config.quant_weight, ae,
                               None if ae else settings)
             for ae in (True, False)}
  if config.ae_warmup_epochs:
    state, _ = runners[True](state, x, data_key, 0, config.ae_warmup_epochs)
  state = state.replace(params=init_codebooks(state.params, x, kmeans_key,
                                              kmeans_iters=config.kmeans_iters))

  stops = {config.epochs}
  stops.update(range(config.ae_warmup_epochs + config.eval_every, config.epochs,
                     config.eval_every))
  if config.reseed_every:
    stops.update(range(config.ae_warmup_epochs + config.reseed_every,
                       min(config.reseed_until, config.epochs), config.reseed_every))
  history, best, best_rate, epoch, dead_since = [], None, math.inf, \
      config.ae_warmup_epochs, np.zeros(config.num_levels, np.int64)
  progress = metric_logging.Progress(config.epochs, 'rq-vae', unit='epoch',
                                    start=config.ae_warmup_epochs)
  for stop in sorted(stops):
    state, metrics = runners[False](state, data, data_key, epoch, stop - epoch)
    progress.update(stop - epoch)
    epoch = stop
    reseed = (config.reseed_every and epoch < config.reseed_until and
              (epoch - config.ae_warmup_epochs) % config.reseed_every == 0)
    if reseed:
      params, dead = reseed_dead_codes(state.params, x, jax.random.fold_in(reseed_key, epoch))
      state = state.replace(params=params)
      dead_since += np.asarray(dead)
    evaluate = (epoch - config.ae_warmup_epochs) % config.eval_every == 0 or \
        epoch == config.epochs
    if not evaluate:
      continue
    codes = np.asarray(encode(state.params, x))
    rate = report_lib.collision_stats(codes)['collision_rate']
    row = {'epoch': epoch, **{k: float(v) for k, v in metrics.items()},
           'collision_rate': rate,
           'codes_used': [int(len(np.unique(codes[:, l]))) for l in range(codes.shape[1])],
           'dead_reseeded': dead_since.tolist()}
    dead_since = np.zeros_like(dead_since)
    history.append(row)
    if log_fn is not None:
      log_fn(row)
    if rate <= best_rate:
      best, best_rate = jax.tree.map(jnp.copy, state.params), rate
  progress.close()
  return best, history
