"""The trie of valid SIDs as dense arrays, usable inside jit.

`next_node[l, node, c]` is the node reached from `node` (at level l) by code c: a node id at
level l+1 for l < L-1, the ITEM id at the last level, or -1 where no catalogue SID continues
that way. The root is node 0 of level 0. Built with numpy from a collision-free codes table.
"""

from __future__ import annotations

import os

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax import io_utils


@flax.struct.dataclass
class SidTrie:
  next_node: jax.Array                       # int32 [L, max_nodes, K]
  num_levels: int = flax.struct.field(pytree_node=False)
  codebook_size: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)


def build_trie(codes: np.ndarray, codebook_size: int) -> SidTrie:
  """Trie over `codes` int `[num_items, L]` (rows must be unique: one SID per item)."""
  codes = np.asarray(codes, np.int64)
  if codes.ndim != 2 or codes.size == 0:
    raise ValueError(f'codes must be a non-empty [num_items, L] array, got {codes.shape}')
  if codes.min() < 0 or codes.max() >= codebook_size:
    raise ValueError(f'codes must lie in [0, {codebook_size})')
  unique, first, counts = np.unique(codes, axis=0, return_index=True, return_counts=True)
  if len(unique) != len(codes):
    dup = unique[np.argmax(counts > 1)]
    items = np.flatnonzero((codes == dup).all(axis=1)).tolist()
    raise ValueError(f'{len(codes) - len(unique)} items share a SID with another item (e.g. '
                     f'items {items} all have {dup.tolist()}); resolve collisions first or '
                     'build the trie over one representative per SID')
  n, num_levels = codes.shape
  # parent[l][i]: id of item i's prefix of length l among the level-l nodes.
  parents = [np.zeros(n, np.int64)]
  for l in range(1, num_levels):
    _, ids = np.unique(codes[:, :l], axis=0, return_inverse=True)
    parents.append(ids.reshape(-1))
  max_nodes = max(int(p.max()) + 1 for p in parents)
  table = np.full((num_levels, max_nodes, codebook_size), -1, np.int32)
  for l in range(num_levels):
    child = parents[l + 1] if l + 1 < num_levels else np.arange(n)
    table[l, parents[l], codes[:, l]] = child
  return SidTrie(jnp.asarray(table), num_levels, codebook_size, n)


def valid_codes(trie: SidTrie, level: int | jax.Array, nodes: jax.Array) -> jax.Array:
  """bool `[rows, K]`: which codes continue a catalogue SID from `nodes` (`[rows]`)."""
  return trie.next_node[level, nodes] >= 0


def codes_to_items(trie: SidTrie, codes: jax.Array) -> jax.Array:
  """int `[..., L]` codes -> item ids `[...]` (-1 where the SID is not in the catalogue)."""
  node = jnp.zeros(codes.shape[:-1], jnp.int32)
  for level in range(trie.num_levels):
    node = jnp.where(node >= 0, trie.next_node[level, jnp.maximum(node, 0), codes[..., level]],
                     -1)
  return node


def save(path: str | os.PathLike, trie: SidTrie) -> None:
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, next_node=np.asarray(trie.next_node), num_items=trie.num_items)


def load(path: str | os.PathLike) -> SidTrie:
  with np.load(path) as data:
    table = data['next_node']
    return SidTrie(jnp.asarray(table), table.shape[0], table.shape[2], int(data['num_items']))
