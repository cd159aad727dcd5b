"""The item -> SID table used by SFT, decoding and evaluation, from either source.

* 'official': the SIDs shipped with the dataset (index.json, carried in the dataset's item
  table as strings like '<a_42><b_80><c_160>'). They contain collisions (Industrial: 3,686
  items, 3,670 distinct SIDs), so items sharing a SID form a group represented by its first
  item; a generated SID then names the group, exactly as the official string matching does.
* 'tokenizer': the collision-free codes written by experiments/train_tokenizer.py
  (`<workdir>/sids.npz`, array `codes` [num_items, L] and scalar `codebook_size`).
"""

from __future__ import annotations

import dataclasses
import os
import re

import numpy as np

from minirec_jax.data.errors import DataError

_TOKEN = re.compile(r'<([a-z])_(\d+)>')
SIDS_FILE = 'sids.npz'


@dataclasses.dataclass(frozen=True)
class SidCatalogue:
  """codes: int32 [num_items, L]; item_to_group: int32 [num_items] (first item with that SID)."""

  codes: np.ndarray
  codebook_size: int
  item_to_group: np.ndarray

  @property
  def num_items(self) -> int:
    return self.codes.shape[0]

  @property
  def num_levels(self) -> int:
    return self.codes.shape[1]

  @property
  def num_collided_items(self) -> int:
    return int(np.sum(self.item_to_group != np.arange(self.num_items)))

  @classmethod
  def from_codes(cls, codes: np.ndarray, codebook_size: int) -> 'SidCatalogue':
    codes = np.asarray(codes, np.int32)
    if codes.ndim != 2 or codes.min() < 0 or codes.max() >= codebook_size:
      raise ValueError(f'codes must be [num_items, L] in [0, {codebook_size}); got '
                       f'shape {codes.shape}, range [{codes.min()}, {codes.max()}]')
    _, first, inverse = np.unique(codes, axis=0, return_index=True, return_inverse=True)
    return cls(codes=codes, codebook_size=codebook_size,
               item_to_group=first[inverse.reshape(-1)].astype(np.int32))


def parse_sid(sid: str, *, where: str = 'sid', item: int | None = None) -> list[int]:
  """'<a_42><b_80><c_160>' -> [42, 80, 160]; levels must be a, b, c, ... in order."""
  tokens = _TOKEN.findall(sid)
  if not tokens or ''.join(f'<{l}_{c}>' for l, c in tokens) != sid:
    raise DataError('not a SID string of <x_n> tokens', path=where, field=f'item {item}',
                    value=sid)
  letters = [l for l, _ in tokens]
  if letters != [chr(ord('a') + i) for i in range(len(letters))]:
    raise DataError('SID levels must be a, b, c, ... in order', path=where,
                    field=f'item {item}', value=sid)
  return [int(c) for _, c in tokens]


def from_sid_strings(sids, *, codebook_size: int | None = None,
                     where: str = 'sid') -> SidCatalogue:
  rows = [parse_sid(s, where=where, item=i) for i, s in enumerate(sids)]
  if len({len(r) for r in rows}) != 1:
    raise DataError('SIDs have different lengths; pad them to one length first', path=where)
  codes = np.asarray(rows, np.int32)
  k = codebook_size or int(2 ** np.ceil(np.log2(codes.max() + 1)))
  return SidCatalogue.from_codes(codes, k)


def save(path: str, catalogue: SidCatalogue) -> None:
  from minirec_jax.infra import io_utils
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, codes=catalogue.codes, codebook_size=catalogue.codebook_size)


def load(path: str) -> SidCatalogue:
  if not os.path.isfile(path):
    raise DataError('missing SID table (run experiments/train_tokenizer.py first)', path=path)
  with np.load(path) as data:
    return SidCatalogue.from_codes(data['codes'], int(data['codebook_size']))


def load_sids(cfg, dataset) -> SidCatalogue:
  """The catalogue named by a `sids` config section (source, path) for `dataset`."""
  if cfg.source == 'official':
    if not dataset.items.has_sids:
      raise DataError(f'dataset {dataset.name} ships no official SIDs; set '
                      'sids.source=tokenizer and sids.path to a tokenizer workdir',
                      field='sids.source', value=cfg.source)
    return from_sid_strings(dataset.items.sid, where=f'{dataset.name} item table')
  if cfg.source == 'tokenizer':
    catalogue = load(os.path.join(cfg.path, SIDS_FILE))
    if catalogue.num_items != dataset.num_items:
      raise DataError(f'SID table has {catalogue.num_items} items, dataset {dataset.name} has '
                      f'{dataset.num_items}', path=os.path.join(cfg.path, SIDS_FILE))
    return catalogue
  raise DataError("unknown SID source; use 'official' or 'tokenizer'", field='sids.source',
                  value=cfg.source)
