"""Collaborative signal for the RQ-VAE tokenizer, from a trained SASRec's item embeddings.

Two ways in (`config.collab.mode` of configs/tokenizer.py):
* 'letter' (LETTER, Wang et al. 2024): two extra loss terms. `info_nce` pulls each item's
  quantised latent z_q (the sum of its chosen codewords) toward its SASRec embedding, mapped
  into the latent space by a learned linear projection, against the other items of the batch;
  `code_concentration` penalises a batch piling onto few codewords at any level.
* 'fuse': the RQ-VAE (or RQ-KMeans) input is [unit(text), fuse_weight * unit(SASRec)].

SASRec's table is `[num_items + 1, hidden]`, row = item id, the last row its padding item.
Items absent from the train split were never an input or a positive of SASRec (only a
softmax negative), so their rows carry no collaborative information: `Targets.trained` masks
them out of the contrastive term (as anchors and as negatives), and 'fuse' gives them a zero
collaborative part. `alignment_metrics` measures, without any learned map, how far codes and
latents agree with the SASRec geometry, so runs with and without the regulariser compare.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data import loading
from minirec_jax.data.errors import DataError
from minirec_jax.semantic_ids import kmeans as kmeans_lib

MODES = ('none', 'letter', 'fuse')
PROJECTION = 'collab_projection'  # the projection's entry in the RQ-VAE's params
_MASKED_LOGIT = -1e9  # finite, so masked rows and columns give zero (not NaN) gradients


class Targets(NamedTuple):
  embeddings: np.ndarray  # float32 [num_items, hidden]: SASRec's item embeddings
  trained: np.ndarray     # bool [num_items]: the item occurs in the train split


class Settings(NamedTuple):
  weight: float            # of the contrastive term
  temperature: float       # of the contrastive term's cosine logits
  diversity_weight: float  # of the code-concentration penalty


class Regulariser(NamedTuple):
  settings: Settings
  targets: Targets


class Batch(NamedTuple):
  """Rows of a training batch with their collaborative targets."""

  x: jax.Array        # [b, in_dim]
  cf: jax.Array       # [b, hidden]
  trained: jax.Array  # bool [b]


# workdir -> SASRec's item embedding table `[num_items + 1, hidden]` (row = item id, the last
# the padding item): `loops.artifacts.sasrec_item_embeddings`, passed in by the callers of the
# stage (this layer reads no checkpoints).
TableLoader = Callable[[str], np.ndarray]


def sasrec_item_table(workdir: str, num_items: int, load_table: TableLoader) -> np.ndarray:
  """SASRec's item embeddings `[num_items, hidden]` (padding row dropped) of a train_sasrec
  workdir trained on a catalogue of `num_items` items."""
  table = np.asarray(load_table(workdir), np.float32)
  if table.ndim != 2 or table.shape[0] != num_items + 1:
    raise DataError(f'SASRec item table {table.shape} does not match this dataset of '
                    f'{num_items} items (+ 1 padding row)', path=workdir)
  return table[:num_items]


def trained_items(dataset: loading.Dataset) -> np.ndarray:
  """bool `[num_items]`: items in some train row's history or target."""
  split = dataset.split('train')
  seen = np.zeros(dataset.num_items, bool)
  for example in split.__getitems__(list(range(len(split)))):
    seen[np.asarray(example['history'])] = True
    seen[example['target']] = True
  return seen


def load_targets(workdir: str, dataset: loading.Dataset, load_table: TableLoader) -> Targets:
  return Targets(sasrec_item_table(workdir, dataset.num_items, load_table),
                 trained_items(dataset))


def _unit_rows_np(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def fused_inputs(text: np.ndarray, targets: Targets, weight: float) -> np.ndarray:
  """float32 `[n, d + hidden]`: unit text rows beside `weight` * unit SASRec rows (zero rows
  for untrained items)."""
  chex.assert_equal(len(text), len(targets.embeddings))
  cf = _unit_rows_np(targets.embeddings) * targets.trained[:, None]
  return np.concatenate([_unit_rows_np(text), weight * cf], axis=1).astype(np.float32)


def init_projection(key: jax.Array, hidden: int, e_dim: int) -> dict[str, jax.Array]:
  """The SASRec -> latent projection's params: a bias-free `[hidden, e_dim]` kernel."""
  return {'kernel': nn.initializers.xavier_normal()(key, (hidden, e_dim))}


def _unit_rows(x: jax.Array) -> jax.Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), 1e-24))


def info_nce(queries: jax.Array, keys: jax.Array, mask: jax.Array,
             temperature: float) -> jax.Array:
  """Mean over unmasked rows i of -log softmax_j(cos(q_i, k_j) / T)[i], j over unmasked rows.

  Args:
    queries: `[b, e]`, row i's positive is keys[i].
    keys: `[b, e]`.
    mask: bool `[b]`; masked rows are neither anchors nor negatives.
    temperature: divides the cosine similarities.
  """
  chex.assert_equal_shape([queries, keys])
  chex.assert_shape(mask, (queries.shape[0],))
  logits = _unit_rows(queries) @ _unit_rows(keys).T / temperature
  logits = jnp.where(mask[None, :], logits, _MASKED_LOGIT)
  log_p = jnp.diagonal(jax.nn.log_softmax(logits, axis=-1))
  return -jnp.sum(jnp.where(mask, log_p, 0.0)) / jnp.maximum(jnp.sum(mask), 1)


def code_concentration(residuals: jax.Array, codebooks: jax.Array) -> jax.Array:
  """Mean over levels of K * sum_k u_k^2 - 1: 0 when the batch uses the K codes evenly, K - 1
  when it uses one.

  u_k is the batch mean of soft assignments softmax_k(-||r - c_k||^2 / s), s the batch's mean
  squared distance to the nearest codeword (held constant), so the sharpness does not depend
  on the latent scale. sum_k u_k^2 is the chance that two random items of the batch share the
  level's code, so lowering it spreads items over codes, against collisions.

  Args:
    residuals: `[L, b, e]`, the residual entering each level.
    codebooks: `[L, K, e]`.
  """
  chex.assert_rank([residuals, codebooks], [3, 3])

  def level(residual, book):
    d = kmeans_lib.squared_distances(residual, book)                              # [b, K]
    scale = jax.lax.stop_gradient(jnp.mean(jnp.min(d, axis=-1))) + 1e-12
    usage = jnp.mean(jax.nn.softmax(-d / scale, axis=-1), axis=0)                 # [K]
    return book.shape[0] * jnp.sum(usage ** 2) - 1.0

  return jnp.mean(jax.vmap(level)(residuals, codebooks))


def regulariser(projection: Any, quantized: jax.Array, residuals: jax.Array,
                codebooks: jax.Array, batch: Batch,
                settings: Settings) -> tuple[jax.Array, dict[str, jax.Array]]:
  """(weighted sum of both terms, their values) for one batch.

  Args:
    projection: `init_projection`'s params.
    quantized: `[b, e]` quantised latents (straight-through: the gradient reaches the encoder).
    residuals: `[L, b, e]` and codebooks `[L, K, e]`, for `code_concentration`.
    batch: the batch's rows, their SASRec embeddings `[b, hidden]` and trained mask `[b]`.
    settings: weights and temperature.
  """
  keys = batch.cf @ projection['kernel']
  contrastive = info_nce(quantized, keys, batch.trained, settings.temperature)
  concentration = code_concentration(residuals, codebooks)
  loss = settings.weight * contrastive + settings.diversity_weight * concentration
  return loss, {'collab_loss': contrastive, 'code_concentration': concentration}


def quantized_from_codes(codebooks: np.ndarray, codes: np.ndarray) -> np.ndarray:
  """`[n, e]`: the sum of each item's codewords (codebooks `[L, K, e]`, codes `[n, L]`)."""
  codebooks, codes = np.asarray(codebooks), np.asarray(codes)
  return sum(codebooks[level][codes[:, level]] for level in range(codes.shape[1]))


def _neighbours(vectors: np.ndarray, k: int) -> np.ndarray:
  """int `[m, k]`: each row's k most cosine-similar other rows (in no particular order)."""
  unit = _unit_rows_np(vectors.astype(np.float64))
  similarity = unit @ unit.T
  np.fill_diagonal(similarity, -np.inf)
  return np.argpartition(-similarity, k, axis=1)[:, :k]


def alignment_metrics(codes: np.ndarray, quantized: np.ndarray, targets: Targets,
                      k: int = 10) -> dict:
  """How the tokenization agrees with SASRec, over trained items; no learned map involved.

  Returns:
    prefix_cf_cosine: per level l, the mean SASRec cosine similarity of item pairs sharing
      their first l + 1 codes (NaN if no pair does);
    all_pairs_cf_cosine: the same over all pairs (the chance level);
    knn_overlap@k: the mean share of an item's k nearest items by z_q (`quantized` `[n, e]`)
      that are also among its k nearest by SASRec embedding (chance: about k / items).
  """
  trained = targets.trained
  cf = _unit_rows_np(targets.embeddings[trained].astype(np.float64))
  m = len(cf)
  codes = np.asarray(codes)[trained]
  prefix = []
  for level in range(codes.shape[1]):
    _, group = np.unique(codes[:, :level + 1], axis=0, return_inverse=True)
    sums = np.zeros((group.max() + 1, cf.shape[1]))
    np.add.at(sums, group.reshape(-1), cf)
    pairs = np.sum(np.bincount(group.reshape(-1)) ** 2) - m
    prefix.append(float((np.sum(sums ** 2) - m) / pairs) if pairs else float('nan'))
  by_latent = _neighbours(np.asarray(quantized)[trained], k)
  by_cf = _neighbours(cf, k)
  shared = (by_latent[:, :, None] == by_cf[:, None, :]).any(-1).sum(-1)
  return {'prefix_cf_cosine': prefix,
          'all_pairs_cf_cosine': float((np.sum(cf.sum(0) ** 2) - m) / (m * (m - 1))),
          f'knn_overlap@{k}': float(shared.mean() / k)}
