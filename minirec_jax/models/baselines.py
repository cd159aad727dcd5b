"""Classic baselines for the same next-item task: most-popular and BPR matrix factorisation.

* Most-popular: every item's number of occurrences as a TARGET in the training rows; everyone
  gets the same ranking (ties: lower item id first, as `lax.top_k` breaks them).
* BPR-MF: score(u, i) = <p_u, q_i>, trained with the BPR loss -log sigmoid(s(u, pos) - s(u, neg))
  against one uniformly sampled negative (see loops/sasrec.py). Two ways to get `p_u`:
  - 'history' (default): the mean of the history items' input embeddings (a separate table from
    the output table q). The official data is a global temporal split, so a test row's user may
    have few or no training rows and their newest items are in the history, not in a user
    vector; the history also gives every row (new users included) a personal vector. This is
    the FISM-style "user = bag of items" variant of MF, trained with the same BPR objective.
  - 'id': classic BPR-MF with one learned vector per user id of the TRAIN rows (contiguous ids
    in first-seen order). A user absent from train gets the zero vector, i.e. all-zero scores:
    the ranking is then arbitrary (lowest item ids first) — no popularity prior, as in plain
    BPR-MF (it has no item bias).
"""

from __future__ import annotations

import dataclasses

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

USER_REPRS = ('history', 'id')


def popularity_counts(targets: np.ndarray, num_items: int) -> np.ndarray:
  """float32 `[num_items]`: how often each item is a target in `targets` (train rows)."""
  targets = np.asarray(targets)
  if targets.size and (targets.min() < 0 or targets.max() >= num_items):
    raise ValueError(f'target ids outside [0, {num_items})')
  return np.bincount(targets, minlength=num_items).astype(np.float32)


def popularity_scores(counts: jax.Array, batch_size: int) -> jax.Array:
  """`[num_items]` counts -> `[batch, num_items]`: the same scores for every row."""
  chex.assert_rank(counts, 1)
  return jnp.broadcast_to(counts[None, :], (batch_size, counts.shape[0]))


@dataclasses.dataclass(frozen=True)
class BPRConfig:
  num_items: int
  num_users: int = 0            # train users ('id' only)
  dim: int = 64
  user_repr: str = 'history'    # 'history' | 'id'

  def __post_init__(self):
    if self.user_repr not in USER_REPRS:
      raise ValueError(f'user_repr must be one of {USER_REPRS}, not {self.user_repr!r}')
    if self.user_repr == 'id' and self.num_users < 1:
      raise ValueError("user_repr='id' needs num_users >= 1")


class BPRMF(nn.Module):
  """Matrix factorisation scorer. Inputs as the pipeline makes them, plus `user` ids `[b]`."""

  config: BPRConfig

  def setup(self):
    c = self.config
    init = nn.initializers.xavier_normal()
    self.item_out = self.param('item_out', init, (c.num_items, c.dim))
    if c.user_repr == 'id':
      self.user_table = self.param('user', init, (c.num_users, c.dim))
    else:
      # Row num_items is the padding item; it is masked out of the mean.
      self.item_in = self.param('item_in', init, (c.num_items + 1, c.dim))

  def user_vectors(self, history: jax.Array, history_len: jax.Array,
                   user: jax.Array) -> jax.Array:
    """`[b, dim]`: history mean ('history') or the user's row, zeros if unseen ('id')."""
    chex.assert_rank(history, 2)
    chex.assert_shape([history_len, user], (history.shape[0],))
    if self.config.user_repr == 'id':
      known = (user >= 0) & (user < self.config.num_users)
      rows = jnp.take(self.user_table, jnp.clip(user, 0, self.config.num_users - 1), axis=0)
      return jnp.where(known[:, None], rows, 0.0)
    valid = jnp.arange(history.shape[1])[None, :] < history_len[:, None]
    items = jnp.where(valid, history, self.config.num_items)
    summed = jnp.sum(jnp.take(self.item_in, items, axis=0) * valid[..., None], axis=1)
    return summed / jnp.maximum(history_len, 1)[:, None].astype(summed.dtype)

  def all_logits(self, history, history_len, user) -> jax.Array:
    """`[b, num_items]` scores of every item."""
    return self.user_vectors(history, history_len, user) @ self.item_out.T

  def __call__(self, history, history_len, user, candidates: jax.Array) -> jax.Array:
    """`[b, c]` scores of candidate item ids `[b, c]`."""
    chex.assert_rank(candidates, 2)
    u = self.user_vectors(history, history_len, user)
    return jnp.einsum('bd,bcd->bc', u, jnp.take(self.item_out, candidates, axis=0))


def init_bpr_params(config: BPRConfig, rng: jax.Array, max_history: int = 1) -> dict:
  history = jnp.zeros((1, max_history), jnp.int32)
  ones = jnp.ones((1,), jnp.int32)
  return BPRMF(config).init(rng, history, ones, ones * 0, method=BPRMF.all_logits)['params']
