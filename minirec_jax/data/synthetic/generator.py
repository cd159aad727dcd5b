"""A small synthetic catalogue and user logs with planted, recoverable structure.

Items fall into clusters; an item's text uses its cluster's theme words, so a text encoder
places same-cluster items together. Users walk between clusters by a fixed transition matrix
(stay, move to the next cluster, or jump anywhere) and, inside a cluster, usually go to the
current item's fixed successor. The planted truth (item -> cluster, transition matrix,
successor map) is returned so tests can check that later stages recover it.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from minirec_jax.data.protocols import Sample, minionerec_splits, user_sequences
from minirec_jax.data.schema import ItemTable

THEMES = (
    ('kitchen', ('whisk', 'skillet', 'spatula', 'colander', 'kettle', 'grater', 'ladle')),
    ('garden', ('trowel', 'hose', 'planter', 'pruner', 'rake', 'sprinkler', 'seed tray')),
    ('camping', ('tent', 'lantern', 'sleeping bag', 'stove', 'hammock', 'compass', 'canteen')),
    ('office', ('stapler', 'notebook', 'binder', 'desk lamp', 'pen set', 'label maker', 'ruler')),
    ('music', ('guitar strings', 'capo', 'tuner', 'drumsticks', 'metronome', 'pick set',
               'music stand')),
    ('fitness', ('yoga mat', 'dumbbell', 'jump rope', 'foam roller', 'kettlebell',
                 'resistance band', 'gym bag')),
    ('pets', ('dog leash', 'cat tree', 'pet bowl', 'chew toy', 'litter box', 'bird feeder',
              'aquarium filter')),
    ('automotive', ('tire gauge', 'jumper cables', 'car wax', 'floor mat', 'wiper blade',
                    'tow strap', 'seat cover')),
    ('lab', ('beaker', 'pipette', 'test tube rack', 'microscope slide', 'lab goggles',
             'petri dish', 'funnel')),
    ('baby', ('baby monitor', 'stroller fan', 'bib set', 'teething ring', 'crib sheet',
              'bottle warmer', 'diaper bag')),
    ('painting', ('paint brush', 'canvas pad', 'easel', 'palette knife', 'acrylic set',
                  'masking tape', 'drop cloth')),
    ('bath', ('shower head', 'bath towel', 'soap dish', 'bath mat', 'loofah', 'toothbrush holder',
              'shower caddy')),
)
ADJECTIVES = ('compact', 'heavy-duty', 'stainless', 'portable', 'deluxe', 'lightweight',
              'adjustable', 'classic', 'premium', 'foldable', 'ergonomic', 'durable')
BRANDS = ('Acme', 'Northwind', 'Zenith', 'Orbit', 'Pioneer', 'Summit', 'Harbor', 'Vertex')


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  num_items: int = 200
  num_clusters: int = 10
  num_users: int = 300
  min_len: int = 5
  max_len: int = 20
  max_history: int = 10
  stay: float = 0.6          # P(next item from the same cluster)
  move_next: float = 0.3     # P(next cluster = (c + 1) mod C); the rest jumps uniformly
  follow_successor: float = 0.7  # inside a cluster: P(the current item's successor)
  seed: int = 0


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  table: ItemTable
  splits: dict[str, list[Sample]]
  item_cluster: np.ndarray      # int [num_items]
  transition: np.ndarray        # float [C, C], rows sum to 1
  successor: np.ndarray         # int [num_items]: the planted next item within the cluster


def transition_matrix(p: SyntheticParams) -> np.ndarray:
  c = p.num_clusters
  jump = (1.0 - p.stay - p.move_next) / c
  t = np.full((c, c), jump)
  t[np.arange(c), np.arange(c)] += p.stay
  t[np.arange(c), (np.arange(c) + 1) % c] += p.move_next
  return t


def generate(p: SyntheticParams) -> SyntheticData:
  if p.num_clusters > len(THEMES) or p.num_items < p.num_clusters:
    raise ValueError(f'need num_clusters <= {len(THEMES)} and num_items >= num_clusters')
  if not 2 <= p.min_len <= p.max_len:
    raise ValueError('need 2 <= min_len <= max_len')
  rng = np.random.default_rng(p.seed)
  item_cluster = rng.permutation(np.arange(p.num_items) % p.num_clusters)
  members = [np.flatnonzero(item_cluster == c) for c in range(p.num_clusters)]
  successor = np.empty(p.num_items, np.int64)
  for items in members:  # a random cycle through each cluster
    cycle = rng.permutation(items)
    successor[cycle] = np.roll(cycle, -1)
  titles, descriptions = [], []
  for item in range(p.num_items):
    theme, nouns = THEMES[item_cluster[item]]
    noun = nouns[item % len(nouns)]
    adjective = ADJECTIVES[rng.integers(len(ADJECTIVES))]
    brand = BRANDS[rng.integers(len(BRANDS))]
    titles.append(f'{brand} {adjective} {noun} {theme} model {item:04d}')
    descriptions.append(f'A {adjective} {noun} for {theme} use. Part of the {brand} {theme} '
                        f'line; pairs well with other {theme} gear.')
  transition = transition_matrix(p)
  users, items, stamps = [], [], []
  for u in range(p.num_users):
    length = rng.integers(p.min_len, p.max_len + 1)
    item = rng.integers(p.num_items)
    clock = int(rng.integers(0, 20_000))  # users overlap in time, as in real logs
    for _ in range(length):
      users.append(f'U{u}')
      items.append(int(item))
      stamps.append(clock)
      clock += int(rng.integers(1, 5_000))
      cluster = rng.choice(p.num_clusters, p=transition[item_cluster[item]])
      if cluster == item_cluster[item] and rng.random() < p.follow_successor:
        item = successor[item]
      else:
        item = rng.choice(members[cluster])
  splits = minionerec_splits(user_sequences(users, items, stamps), p.max_history)
  table = ItemTable(title=titles, description=descriptions, sid=[''] * p.num_items)
  return SyntheticData(table, splits, item_cluster, transition, successor)
