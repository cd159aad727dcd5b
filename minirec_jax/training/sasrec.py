"""SASRec and the classic baselines (most-popular, BPR-MF) behind one ranker interface, with
their losses and pure, un-jitted step factories.

  variant   model                              loss (config.train.loss)
  official  SASRec as MiniOneRec trains it     'bce': target vs one uniform negative
  recbole   SASRec with RecBole's defaults     'ce': softmax over every item
  bpr       BPR matrix factorisation           'bpr': -log sigmoid(target - negative)
  pop       most popular training targets      (no training)

`make_train_step` returns `step(state, batch, rng) -> (state, metrics)`; `make_eval_fn` a jitted
full ranking over all items. Batches: history int32 [B, H] (-1 after history_len), history_len
[B], target [B], user [B] (train-user index or -1), valid bool [B] (False on rows padding the last
batch; they get zero loss weight); a ranker with `pack` first rewrites training batches on the
host into the model's packed form. The host loop is `minirec_jax.loops.sasrec`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import chex
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from minirec_jax.data import sasrec_packing
from minirec_jax.evaluation import ranking
from minirec_jax.models import baselines
from minirec_jax.models import sasrec as sasrec_lib
from minirec_jax.training.state import TrainState

SASREC_VARIANTS = tuple(sasrec_lib.PRESETS)
VARIANTS = SASREC_VARIANTS + ('bpr', 'pop')
LOSSES = ('bce', 'ce', 'bpr')

# ----------------------------------------------------------------------------------------------
# Models behind one interface.


class Ranker(NamedTuple):
  """A scoring model: `init(rng) -> params`; `logits(params, batch, candidates, rng)`.

  `logits` returns `[b, c]` scores of `candidates` `[b, c]`, or `[b, num_items]` when
  candidates is None; `rng` is the dropout key (None: deterministic, i.e. evaluation).
  `pack(batch, row_multiple, min_rows)` (host) rewrites a training batch into the model's
  packed form, or is None when the model reads the batch as it is.
  """

  init: Callable[[jax.Array], Any]
  logits: Callable[..., jax.Array]
  description: dict
  pack: Callable[[dict, int, int], dict] | None = None


def sasrec_config(config: ml_collections.ConfigDict, num_items: int) -> sasrec_lib.SASRecConfig:
  m = config.model
  return sasrec_lib.SASRecConfig(
      num_items=num_items, max_len=config.data.max_history, architecture=m.architecture,
      hidden=m.hidden, num_blocks=m.num_blocks, num_heads=m.num_heads, inner=m.inner,
      dropout=m.dropout, attn_dropout=m.attn_dropout, layer_norm_eps=m.layer_norm_eps,
      activation=m.activation, dropout_rng=m.dropout_rng)


def _packed_batch(batch: dict, row_multiple: int, min_rows: int, *,
                  share_prefixes: bool = False) -> dict:
  packed = sasrec_packing.pack(batch['history'], batch['history_len'], batch['valid'],
                           row_multiple, min_rows, share_prefixes=share_prefixes)
  return {**packed._asdict(), 'target': batch['target'], 'valid': batch['valid']}


def sasrec_ranker(model_config: sasrec_lib.SASRecConfig, *, pack: bool = True,
                  share_prefixes: bool = False) -> Ranker:
  """SASRec; with `pack`, training batches are packed (exactly the same per-sample math), and
  with `share_prefixes` a history that is a prefix of another in its batch reuses its segment."""
  model = sasrec_lib.SASRec(model_config)
  fields = sasrec_packing.Packed._fields

  def logits(params, batch, candidates, rng):
    if 'tokens' in batch:
      packed = sasrec_packing.Packed(*(batch[f] for f in fields))
    else:
      packed = sasrec_packing.one_per_row(batch['history'], batch['history_len'])
    return model.apply({'params': params}, packed, candidates, deterministic=rng is None,
                       rngs={} if rng is None else {'dropout': rng})

  return Ranker(lambda rng: sasrec_lib.init_params(model_config, rng), logits,
                {'kind': 'sasrec', **dataclasses.asdict(model_config),
                 'num_params': sasrec_lib.count_params(model_config)},
                functools.partial(_packed_batch, share_prefixes=share_prefixes) if pack else None)


def bpr_ranker(model_config: baselines.BPRConfig, max_history: int) -> Ranker:
  model = baselines.BPRMF(model_config)

  def logits(params, batch, candidates, rng):
    del rng  # no dropout
    args = (batch['history'], batch['history_len'], batch['user'])
    if candidates is None:
      return model.apply({'params': params}, *args, method=baselines.BPRMF.all_logits)
    return model.apply({'params': params}, *args, candidates)

  init = lambda rng: baselines.init_bpr_params(model_config, rng, max_history)
  num_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(
      jax.eval_shape(init, jax.random.key(0))))
  return Ranker(init, logits, {'kind': 'bpr', **dataclasses.asdict(model_config),
                               'num_params': num_params})


def pop_ranker(train_targets: np.ndarray, num_items: int) -> Ranker:
  counts = baselines.popularity_counts(train_targets, num_items)

  def logits(params, batch, candidates, rng):
    del rng
    scores = baselines.popularity_scores(params['counts'], batch['history'].shape[0])
    return scores if candidates is None else jnp.take_along_axis(scores, candidates, axis=1)

  return Ranker(lambda rng: {'counts': jnp.asarray(counts)}, logits,
                {'kind': 'pop', 'num_items': num_items, 'num_params': 0})


# ----------------------------------------------------------------------------------------------
# Losses, negatives, steps.


def sample_negatives(rng: jax.Array, targets: jax.Array, num_items: int) -> jax.Array:
  """int32 `[b]`: for each row an item drawn uniformly from all items except its target."""
  chex.assert_rank(targets, 1)
  draw = jax.random.randint(rng, targets.shape, 0, max(num_items - 1, 1), jnp.int32)
  return jnp.where(draw >= targets, draw + 1, draw) if num_items > 1 else draw


def _weighted_mean(values: jax.Array, weights: jax.Array) -> jax.Array:
  return jnp.sum(values * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def bce_one_negative_loss(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """`[b, 2]` (target, negative) logits -> mean BCE over the 2 * b entries (official loss)."""
  chex.assert_shape(logits, (weights.shape[0], 2))
  labels = jnp.broadcast_to(jnp.asarray([1.0, 0.0], logits.dtype), logits.shape)
  per_row = optax.sigmoid_binary_cross_entropy(logits, labels).mean(axis=1)
  return _weighted_mean(per_row, weights)


def softmax_ce_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array) -> jax.Array:
  """`[b, num_items]` logits, `[b]` targets -> mean cross-entropy (RecBole's CE loss)."""
  chex.assert_rank(logits, 2)
  chex.assert_equal_shape([targets, weights])
  per_row = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), targets)
  return _weighted_mean(per_row, weights)


def bpr_loss(logits: jax.Array, weights: jax.Array) -> jax.Array:
  """`[b, 2]` (positive, negative) scores -> mean of -log sigmoid(pos - neg)."""
  chex.assert_shape(logits, (weights.shape[0], 2))
  return _weighted_mean(-jax.nn.log_sigmoid(logits[:, 0] - logits[:, 1]), weights)


def make_train_step(ranker: Ranker, loss: str, num_items: int) -> Callable:
  """Returns `step(state, batch, rng) -> (state, metrics)`, pure and un-jitted.

  `rng` is folded with the step number, then split for negatives and dropout.
  """
  if loss not in LOSSES:
    raise ValueError(f'unknown loss {loss!r}; choose one of {LOSSES}')

  def step(state: TrainState, batch: dict[str, jax.Array], rng: jax.Array):
    rng = jax.random.fold_in(rng, state.step)
    negative_rng, dropout_rng = jax.random.split(rng)
    weights = batch['valid'].astype(jnp.float32)

    def loss_fn(params):
      if loss == 'ce':
        logits = ranker.logits(params, batch, None, dropout_rng)
        return softmax_ce_loss(logits, batch['target'], weights)
      negatives = sample_negatives(negative_rng, batch['target'], num_items)
      candidates = jnp.stack([batch['target'], negatives], axis=1)
      logits = ranker.logits(params, batch, candidates, dropout_rng)
      return bce_one_negative_loss(logits, weights) if loss == 'bce' else bpr_loss(logits,
                                                                                     weights)

    value, grads = jax.value_and_grad(loss_fn)(state.params)
    new_state = state.apply_gradients(grads=grads)
    return new_state, {'loss': value, 'grad_norm': optax.tree.norm(grads)}

  return step


def make_eval_fn(ranker: Ranker, k: int) -> Callable:
  """Jitted full ranking `(params, batch) -> (items int32 [b, k], scores [b, k], BatchMetrics)`.

  Items are the top k of all items, best first; the metrics use `batch['valid']`.
  """

  @jax.jit
  def eval_fn(params, batch):
    scores, items = jax.lax.top_k(ranker.logits(params, batch, None, None), k)
    items = items.astype(jnp.int32)
    # Only the exact counts (hits_at, count) are used; RankCounts gives every K from them.
    metrics = ranking.batch_metrics_jnp(items, batch['target'], (1,), valid=batch['valid'])
    return items, scores, metrics

  return eval_fn


def optimizer(cfg: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """Adam; `l2` > 0 adds coupled L2 (torch Adam's weight_decay: grad += l2 * param)."""
  adam = optax.adam(cfg.lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps)
  return optax.chain(optax.add_decayed_weights(cfg.l2), adam) if cfg.l2 else adam
