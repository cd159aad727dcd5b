"""The dense SID trie accepts exactly the catalogue's SIDs; collisions, files and index.json."""

import itertools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.data.errors import DataError
from minirec_jax.semantic_ids import trie as trie_lib


def _codes(n, levels, k, seed=0):
  """`n` distinct random SIDs `[n, levels]` with codes in [0, k)."""
  flat = np.random.default_rng(seed).permutation(k ** levels)[:n]
  return np.stack(np.unravel_index(flat, (k,) * levels), axis=1)


def _walk(trie, paths):
  """Items reached by following `paths` `[m, L]` level by level with valid_mask and step."""
  node = jnp.zeros(len(paths), jnp.int32)
  ok = np.ones(len(paths), bool)
  for level in range(trie.num_levels):
    mask = np.asarray(trie_lib.valid_mask(trie, level, jnp.maximum(node, 0)))
    ok &= mask[np.arange(len(paths)), paths[:, level]]
    node = trie_lib.step(trie, level, node, jnp.asarray(paths[:, level]))
  return np.where(ok, np.asarray(node), -1)


@pytest.mark.parametrize('n,levels,k', [(20, 3, 4), (40, 4, 3), (5, 1, 8), (64, 3, 4)])
def test_accepts_exactly_the_catalogue(n, levels, k):
  codes = _codes(n, levels, k, seed=n)
  trie = trie_lib.build_trie(codes, k)
  assert (trie.num_levels, trie.codebook_size, trie.num_items) == (levels, k, n)
  catalogue = {tuple(c): i for i, c in enumerate(codes.tolist())}
  paths = np.array(list(itertools.product(range(k), repeat=levels)))
  expected = np.array([catalogue.get(tuple(p), -1) for p in paths.tolist()])
  np.testing.assert_array_equal(trie_lib.codes_to_items(trie, jnp.asarray(paths)), expected)
  np.testing.assert_array_equal(_walk(trie, paths), expected)


def test_valid_mask_lists_the_children_of_every_prefix():
  codes = _codes(30, 3, 4)
  trie = trie_lib.build_trie(codes, 4)
  root = np.asarray(trie_lib.valid_mask(trie, 0, jnp.zeros((1,), jnp.int32)))[0]
  assert set(np.flatnonzero(root)) == set(codes[:, 0])
  for item in range(len(codes)):
    node = trie_lib.step(trie, 0, jnp.zeros((1,), jnp.int32), jnp.asarray(codes[item, :1]))
    mask = np.asarray(trie_lib.valid_mask(trie, 1, node))[0]
    siblings = codes[codes[:, 0] == codes[item, 0], 1]
    assert set(np.flatnonzero(mask)) == set(siblings)


def test_step_rejects_out_of_range_codes_and_dead_nodes():
  trie = trie_lib.build_trie(np.array([[0, 1], [3, 3]]), 4)
  nodes = jnp.array([0, 0, 0, -1, 0], jnp.int32)
  codes = jnp.array([0, 4, -1, 0, 3], jnp.int32)
  out = np.asarray(trie_lib.step(trie, 0, nodes, codes))
  assert out[0] >= 0 and out[4] >= 0 and (out[1:4] == -1).all()
  # Code 4 would be clamped to 3 by a plain gather and wrongly reach item 1.
  assert trie_lib.codes_to_items(trie, jnp.array([[3, 4]])).tolist() == [-1]


def test_items_to_codes_round_trip_and_jit():
  codes = _codes(20, 3, 4)
  trie = trie_lib.build_trie(codes, 4)
  items = jnp.array([[3, -1], [19, 0]])
  got = np.asarray(jax.jit(trie_lib.items_to_codes)(trie, items))
  np.testing.assert_array_equal(got[0, 0], codes[3])
  np.testing.assert_array_equal(got[0, 1], [-1, -1, -1])
  back = jax.jit(trie_lib.codes_to_items)(trie, jnp.asarray(got))
  np.testing.assert_array_equal(back, [[3, -1], [19, 0]])


def test_collisions_are_an_error_naming_an_example():
  codes = np.array([[0, 1], [2, 3], [0, 1], [2, 2]])
  with pytest.raises(ValueError, match=r"1 items .* items \[0, 2\] all have \[0, 1\].*dedupe"):
    trie_lib.build_trie(codes, 4)


def test_dedupe_first_maps_each_group_to_its_first_item():
  codes = np.array([[1, 1], [2, 3], [1, 1], [2, 3], [1, 1], [0, 0]])
  trie = trie_lib.build_trie(codes, 4, dedupe='first')
  np.testing.assert_array_equal(trie.item_to_group, [0, 1, 0, 1, 0, 5])
  np.testing.assert_array_equal(trie_lib.codes_to_items(trie, jnp.asarray(codes)),
                                [0, 1, 0, 1, 0, 5])
  np.testing.assert_array_equal(trie_lib.items_to_codes(trie, jnp.arange(6)), codes)
  np.testing.assert_array_equal(trie.item_to_group, trie_lib.item_groups(codes))


def test_bad_arguments():
  with pytest.raises(ValueError, match=r'codes\[1, 0\] = 4'):
    trie_lib.build_trie(np.array([[0, 1], [4, 0]]), 4)
  with pytest.raises(ValueError, match='dedupe'):
    trie_lib.build_trie(np.array([[0, 1]]), 4, dedupe='last')


def test_save_and_load(tmp_path):
  codes = np.array([[1, 1, 0], [2, 3, 1], [1, 1, 0], [0, 2, 2]])
  trie = trie_lib.build_trie(codes, 4, dedupe='first')
  trie_lib.save(tmp_path / 'trie.npz', trie)
  loaded = trie_lib.load(tmp_path / 'trie.npz')
  for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(trie)):
    np.testing.assert_array_equal(a, b)
  assert (loaded.num_levels, loaded.codebook_size, loaded.num_items) == (3, 4, 4)
  with pytest.raises(DataError, match='missing SID trie'):
    trie_lib.load(tmp_path / 'absent.npz')
  np.savez(tmp_path / 'bad.npz', codes=codes)
  with pytest.raises(DataError, match=r"bad.npz: field 'codebook_size'"):
    trie_lib.load(tmp_path / 'bad.npz')


def _write(tmp_path, data, name='x.index.json'):
  path = tmp_path / name
  path.write_text(data if isinstance(data, str) else json.dumps(data))
  return str(path)


def test_read_index_json(tmp_path):
  path = _write(tmp_path, {'1': ['<a_3>', '<b_0>'], '0': ['<a_1>', '<b_9>']})
  codes, k = trie_lib.read_index_json(path)
  np.testing.assert_array_equal(codes, [[1, 9], [3, 0]])
  assert k == 16
  assert trie_lib.read_index_json(path, codebook_size=10)[1] == 10


@pytest.mark.parametrize('data,match', [
    ({'0': ['<a_1>', '<c_2>']}, r"field 'item 0' = \['<a_1>', '<c_2>'\]: SID token 1 is '<c_2>'"),
    ({'0': ['<a_1>'], '2': ['<a_2>']}, r"field 'item id' = 1: .* 0..1 without gaps"),
    ({'0': ['<a_1>'], 'x': ['<a_2>']}, r"field 'item id' = 'x'"),
    ({'0': ['<a_1>'], '1': ['<a_2>', '<b_0>']}, r"field 'item 1' .* 2 levels, item 0 has 1"),
    ({'0': ['<a_1>'], '1': 'a_2'}, r"field 'item 1' = 'a_2': SID must be"),
    ({'0': ['<a_1>', '<b_x>']}, r"field 'item 0' .*token 1 is not"),
    ('{"0": [', r'x.index.json:1: invalid JSON'),
])
def test_read_index_json_errors_name_file_item_and_value(tmp_path, data, match):
  with pytest.raises(DataError, match=match):
    trie_lib.read_index_json(_write(tmp_path, data))


def test_read_index_json_given_codebook_too_small(tmp_path):
  path = _write(tmp_path, {'0': ['<a_1>', '<b_2>'], '1': ['<a_7>', '<b_9>']})
  with pytest.raises(DataError, match=r"field 'item 1' .*code 9 at level 1 is >= codebook_size 8"):
    trie_lib.read_index_json(path, codebook_size=8)


def test_official_industrial_index(amazon18_dir):
  path = os.path.join(amazon18_dir, 'index', 'Industrial_and_Scientific.index.json')
  if not os.path.isfile(path):
    pytest.skip(f'{path} not found')
  codes, k = trie_lib.read_index_json(path)
  assert codes.shape == (3686, 3) and k == 256
  with pytest.raises(ValueError, match='16 items share their SID'):
    trie_lib.build_trie(codes, k)
  trie = trie_lib.build_trie(codes, k, dedupe='first')
  groups = np.asarray(trie.item_to_group)
  assert len(np.unique(groups)) == 3670 and (groups != np.arange(3686)).sum() == 16
  np.testing.assert_array_equal(trie_lib.codes_to_items(trie, jnp.asarray(codes)), groups)
  with open(path) as f:
    first = json.load(f)['1']
  assert codes[1].tolist() == [int(t.split('_')[1][:-1]) for t in first]
