"""The trie of catalogue SIDs as dense arrays, usable inside jit.

Every item's SID is a fixed-length code tuple `codes[item] = (c_0, ..., c_{L-1})`, each code in
[0, K). The trie is one dense table per level:

  next_node[l, node, c]   int32 [L, max_nodes, K]
    l < L-1: id of the child node at level l+1 reached from `node` (a level-l node) by code c
    l = L-1: the ITEM id whose SID ends there
    -1:      no catalogue SID continues that way

The root is node 0 of level 0. Node ids are numbered per level (level l has as many nodes as
there are distinct SID prefixes of length l), so the table costs 4 * L * max_nodes * K bytes,
where max_nodes is the largest number of distinct prefixes at any level (e.g. 3,670 * 256 * 3
* 4 B = 11 MB for the official Industrial SIDs).

Collisions. The SID must name one item, but the official index.json SIDs are not a bijection
(Industrial: 3,686 items, 3,670 distinct SIDs). `build_trie` therefore refuses duplicate rows
unless `dedupe='first'`: then each group of items sharing a SID is represented by its first
(lowest-id) item, the trie's leaves hold that representative, and `trie.item_to_group[item]`
gives every item's representative (identity for items without collisions). Decoding can then
only ever return representatives; to compare a prediction with a target, compare it with
`item_to_group[target]` (what the official string matching of SIDs amounts to).
"""

from __future__ import annotations

import os
import re

import chex
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data.errors import DataError, require_file
from minirec_jax.data.official import reader
from minirec_jax.infra import io_utils

DEDUPE_MODES = ('error', 'first')
_SID_TOKEN = re.compile(r'<([a-z])_([0-9]+)>')
_ITEM_ID = re.compile(r'0|[1-9][0-9]*')


@flax.struct.dataclass
class SidTrie:
  """Dense SID trie (a pytree: pass it to jitted functions as an argument).

  Attributes:
    next_node: int32 `[L, max_nodes, K]`, see the module docstring.
    codes: int32 `[num_items, L]`, every item's SID (collided items included).
    item_to_group: int32 `[num_items]`, the item a decoded SID stands for: the first item with
      the same SID (`arange(num_items)` when there are no collisions).
    num_levels: L (static).
    codebook_size: K, codes per level (static).
    num_items: rows of `codes` (static).
  """

  next_node: jax.Array
  codes: jax.Array
  item_to_group: jax.Array
  num_levels: int = flax.struct.field(pytree_node=False)
  codebook_size: int = flax.struct.field(pytree_node=False)
  num_items: int = flax.struct.field(pytree_node=False)


def _check_codes(codes: np.ndarray, codebook_size: int) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.size == 0 or not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f'codes must be a non-empty integer [num_items, L] array, got '
                     f'{codes.dtype} {codes.shape}')
  if codes.min() < 0 or codes.max() >= codebook_size:
    bad = tuple(np.argwhere((codes < 0) | (codes >= codebook_size))[0].tolist())
    raise ValueError(f'codes must lie in [0, {codebook_size}); codes[{bad[0]}, {bad[1]}] = '
                     f'{codes[bad]}')
  return codes.astype(np.int64)


def item_groups(codes: np.ndarray) -> np.ndarray:
  """int32 `[num_items]`: for every item the first item with the same code row."""
  _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
  return first[inverse.reshape(-1)].astype(np.int32)


def build_trie(codes: np.ndarray, codebook_size: int, *, dedupe: str = 'error') -> SidTrie:
  """Builds the trie over the SIDs `codes` (int `[num_items, L]`, codes in [0, K)).

  Args:
    codes: every item's SID; row i is item i.
    codebook_size: K.
    dedupe: 'error' (default): rows must be unique, otherwise a ValueError names an example
      group; 'first': items sharing a SID map to the group's first item (see module docstring).

  Returns:
    The trie; its leaves are item ids (group representatives under dedupe='first').
  """
  if dedupe not in DEDUPE_MODES:
    raise ValueError(f'dedupe must be one of {DEDUPE_MODES}, got {dedupe!r}')
  codes = _check_codes(codes, codebook_size)
  n, num_levels = codes.shape
  groups = item_groups(codes)
  collided = np.flatnonzero(groups != np.arange(n))
  if len(collided) and dedupe == 'error':
    example = np.flatnonzero(groups == groups[collided[0]]).tolist()
    raise ValueError(
        f'{len(collided)} items share their SID with an earlier item (e.g. items {example} all '
        f'have {codes[example[0]].tolist()}); a SID must name one item. Re-run the tokenizer '
        "with collision handling, or pass dedupe='first' to map each group to its first item")
  reps = np.unique(groups)  # one row per distinct SID
  # prefix_ids[l][j]: id of representative j's length-l prefix among the level-l nodes.
  prefix_ids = [np.zeros(len(reps), np.int64)]
  for level in range(1, num_levels):
    _, ids = np.unique(codes[reps, :level], axis=0, return_inverse=True)
    prefix_ids.append(ids.reshape(-1))
  max_nodes = max(int(ids.max()) + 1 for ids in prefix_ids)
  table = np.full((num_levels, max_nodes, codebook_size), -1, np.int32)
  for level in range(num_levels):
    child = prefix_ids[level + 1] if level + 1 < num_levels else reps
    table[level, prefix_ids[level], codes[reps, level]] = child
  return SidTrie(next_node=jnp.asarray(table), codes=jnp.asarray(codes, jnp.int32),
                 item_to_group=jnp.asarray(groups), num_levels=num_levels,
                 codebook_size=codebook_size, num_items=n)


def valid_mask(trie: SidTrie, level: int | jax.Array, nodes: jax.Array) -> jax.Array:
  """bool `[rows, K]`: which codes continue a catalogue SID from level-`level` `nodes` `[rows]`."""
  chex.assert_rank(nodes, 1)
  return trie.next_node[level, nodes] >= 0


def step(trie: SidTrie, level: int | jax.Array, nodes: jax.Array,
         codes: jax.Array) -> jax.Array:
  """Follows `codes` from level-`level` `nodes` (both int `[rows]`).

  Returns:
    int32 `[rows]`: the level-(level+1) node ids (item ids at the last level); -1 where the code
    is not a catalogue continuation, where it lies outside [0, K), or where `nodes` is -1.
  """
  chex.assert_rank([nodes, codes], 1)
  chex.assert_equal_shape([nodes, codes])
  ok = (nodes >= 0) & (codes >= 0) & (codes < trie.codebook_size)
  # Clip before the gather: JAX clamps out-of-range indices silently, so mask explicitly.
  child = trie.next_node[level, jnp.maximum(nodes, 0),
                         jnp.clip(codes, 0, trie.codebook_size - 1)]
  return jnp.where(ok, child, -1)


def codes_to_items(trie: SidTrie, codes: jax.Array) -> jax.Array:
  """int `[..., L]` SIDs -> int32 item ids `[...]`, -1 where the SID is not in the catalogue."""
  chex.assert_axis_dimension(codes, -1, trie.num_levels)
  flat = codes.reshape(-1, trie.num_levels)
  node = jnp.zeros(flat.shape[:1], jnp.int32)
  for level in range(trie.num_levels):
    node = step(trie, level, node, flat[:, level])
  return node.reshape(codes.shape[:-1])


def items_to_codes(trie: SidTrie, items: jax.Array) -> jax.Array:
  """int item ids `[...]` -> int32 SIDs `[..., L]`; rows of -1 where the item is -1."""
  found = items >= 0
  codes = trie.codes[jnp.where(found, items, 0)]
  return jnp.where(found[..., None], codes, -1)


def save(path: str | os.PathLike, trie: SidTrie) -> None:
  """Writes the trie's item codes and K as npz (the tables are rebuilt by `load`)."""
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, codes=np.asarray(trie.codes), codebook_size=trie.codebook_size)


def load(path: str | os.PathLike) -> SidTrie:
  """Reads a trie written by `save`; collided items keep mapping to their group's first item."""
  path = require_file(path, 'SID trie (.npz)')
  with np.load(path) as data:
    for key in ('codes', 'codebook_size'):
      if key not in data:
        raise DataError('missing array in SID trie file', path=path, field=key)
    codes, codebook_size = data['codes'], int(data['codebook_size'])
  try:
    return build_trie(codes, codebook_size, dedupe='first')
  except ValueError as exc:
    raise DataError(str(exc), path=path, field='codes') from None


def _parse_sid_tokens(tokens, path: str, item: str) -> list[int]:
  """['<a_42>', '<b_80>', '<c_160>'] -> [42, 80, 160]; letters must be a, b, c, ... in order."""
  if not isinstance(tokens, list) or not tokens:
    raise DataError('SID must be a non-empty list of "<x_n>" tokens', path=path,
                    field=f'item {item}', value=tokens, has_value=True)
  codes = []
  for level, token in enumerate(tokens):
    match = _SID_TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
      raise DataError(f'SID token {level} is not of the form "<x_n>"', path=path,
                      field=f'item {item}', value=tokens)
    letter, code = match.groups()
    if letter != chr(ord('a') + level):
      raise DataError(f'SID token {level} is {token!r}: levels must be a, b, c, ... in order',
                      path=path, field=f'item {item}', value=tokens)
    codes.append(int(code))
  return codes


def read_index_json(path: str | os.PathLike,
                    codebook_size: int | None = None) -> tuple[np.ndarray, int]:
  """Reads an official `{"<item id>": ["<a_42>", "<b_80>", "<c_160>"], ...}` file.

  Item ids must be exactly 0..N-1 (row i of the result is item i), every SID must have the same
  number of levels, with letters a, b, c, ... naming levels 0, 1, 2, ... in order.

  Args:
    path: the index.json file.
    codebook_size: K; if None, inferred as the smallest power of two above the largest code
      (codebooks are powers of two; Industrial's codes reach 255, so K = 256).

  Returns:
    (codes int32 `[N, L]`, K). Duplicate SIDs are allowed here; `build_trie` decides on them.
  """
  path = require_file(path, 'SID index.json')
  data = reader.load_json_object(path)
  if not data:
    raise DataError('expected a non-empty JSON object keyed by item id', path=path)
  rows = {}
  for key, tokens in data.items():
    if not _ITEM_ID.fullmatch(key):
      raise DataError('item id is not a non-negative integer without leading zeros',
                      path=path, field='item id', value=key)
    rows[int(key)] = _parse_sid_tokens(tokens, path, key)
  missing = sorted(set(range(len(rows))) - set(rows))
  if missing:
    raise DataError(f'item ids must be 0..{len(rows) - 1} without gaps; id {missing[0]} is '
                    'missing', path=path, field='item id', value=missing[0])
  num_levels = len(rows[0])
  for item, codes in rows.items():
    if len(codes) != num_levels:
      raise DataError(f'SID has {len(codes)} levels, item 0 has {num_levels}', path=path,
                      field=f'item {item}', value=data[str(item)])
  codes = np.asarray([rows[i] for i in range(len(rows))], np.int32)
  largest = int(codes.max())
  if codebook_size is None:
    codebook_size = 1 << largest.bit_length()
  elif largest >= codebook_size:
    item, level = np.argwhere(codes >= codebook_size)[0].tolist()
    raise DataError(f'code {codes[item, level]} at level {level} is >= codebook_size '
                    f'{codebook_size}', path=path, field=f'item {item}', value=data[str(item)])
  return codes, codebook_size
