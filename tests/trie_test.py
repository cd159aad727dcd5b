"""The dense SID trie accepts exactly the catalogue's SIDs."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.semantic_ids import trie as trie_lib


def _codes(n=20, levels=3, k=4, seed=0):
  rng = np.random.default_rng(seed)
  flat = rng.permutation(k ** levels)[:n]
  return np.stack(np.unravel_index(flat, (k,) * levels), axis=1)


def test_accepts_exactly_the_catalogue():
  codes = _codes()
  trie = trie_lib.build_trie(codes, 4)
  assert trie.next_node.shape[0] == 3 and trie.next_node.shape[2] == 4
  catalogue = {tuple(c): i for i, c in enumerate(codes.tolist())}
  paths = np.array(list(itertools.product(range(4), repeat=3)))
  items = np.asarray(trie_lib.codes_to_items(trie, jnp.asarray(paths)))
  for path, item in zip(paths.tolist(), items.tolist()):
    assert item == catalogue.get(tuple(path), -1)


def test_valid_codes_at_the_root_are_the_first_codes():
  codes = _codes()
  trie = trie_lib.build_trie(codes, 4)
  mask = np.asarray(trie_lib.valid_codes(trie, 0, jnp.zeros((1,), jnp.int32)))[0]
  assert set(np.flatnonzero(mask)) == set(codes[:, 0])


def test_collisions_are_an_error_naming_the_items():
  codes = np.array([[0, 1], [2, 3], [0, 1]])
  with pytest.raises(ValueError, match=r'items \[0, 2\] all have \[0, 1\]'):
    trie_lib.build_trie(codes, 4)


def test_save_and_load(tmp_path):
  trie = trie_lib.build_trie(_codes(), 4)
  trie_lib.save(tmp_path / 'trie.npz', trie)
  loaded = trie_lib.load(tmp_path / 'trie.npz')
  np.testing.assert_array_equal(loaded.next_node, trie.next_node)
  assert (loaded.num_levels, loaded.codebook_size, loaded.num_items) == (3, 4, 20)
