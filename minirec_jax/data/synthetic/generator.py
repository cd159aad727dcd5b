"""A small synthetic catalogue and user logs with planted, recoverable structure (numpy only).

Items fall into C clusters. An item's title and description use its cluster's vocabulary (a
theme word, product nouns, materials, uses, features) plus item-specific words (brand,
adjective, colour), so a text encoder places same-cluster items together.

Users follow a first-order Markov chain over items:
  * the next cluster is drawn from a fixed transition matrix `T`: stay with P = `stay`, move to
    the preferred next cluster (c + 1) mod C with P = `move_next`, else jump uniformly;
  * inside the same cluster the user takes the current item's fixed successor (a random cycle
    through the cluster) with P = `follow_successor`; otherwise, and always after a cluster
    change, the item is drawn from the cluster's fixed Zipf popularity.
So P(next item | history) depends only on the last item and is known exactly
(`next_item_probs`), which gives the Bayes-optimal ("oracle") ranking as a ceiling for models.

Samples follow the official MiniOneRec rule (`protocols.minionerec_splits`): every position
i >= 1 of a user's time-ordered sequence is a sample, all samples are sorted by time and split
80/10/10.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import numpy as np

from minirec_jax.data import protocols
from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable


class Theme(NamedTuple):
  label: str                # the cluster's word in every title, e.g. 'Kitchen'
  category: str             # Amazon-like category path
  nouns: tuple[str, ...]
  materials: tuple[str, ...]
  uses: str
  features: tuple[str, ...]


THEMES = (
    Theme('Kitchen', 'Home & Kitchen > Kitchen Utensils',
          ('whisk', 'skillet', 'spatula', 'colander', 'kettle', 'grater', 'ladle',
           'cutting board'),
          ('stainless steel', 'silicone', 'cast iron', 'bamboo'),
          'for cooking, baking and everyday meal prep',
          ('dishwasher safe', 'heat resistant up to 450F', 'non-stick coating',
           'easy-grip handle')),
    Theme('Garden', 'Patio, Lawn & Garden',
          ('trowel', 'hose', 'planter', 'pruning shears', 'leaf rake', 'sprinkler', 'seed tray',
           'watering can'),
          ('galvanized steel', 'recycled plastic', 'terracotta', 'aluminum'),
          'for planting, watering and tending flower beds',
          ('rust resistant', 'UV stabilized for outdoor use', 'cushioned grip',
           'drains freely')),
    Theme('Camping', 'Sports & Outdoors > Camping & Hiking',
          ('tent', 'lantern', 'sleeping bag', 'stove', 'hammock', 'compass', 'canteen',
           'trekking pole'),
          ('ripstop nylon', 'anodized aluminum', 'polyester', 'titanium'),
          'for camping, hiking and backpacking trips',
          ('waterproof', 'packs down small', 'rated for three seasons', 'quick trailside setup')),
    Theme('Office', 'Office Products',
          ('stapler', 'notebook', 'ring binder', 'desk lamp', 'pen set', 'label maker', 'ruler',
           'file organizer'),
          ('recycled paper', 'ABS plastic', 'brushed metal', 'faux leather'),
          'for the office, school and home study desk',
          ('refillable', 'acid-free pages', 'jam-free mechanism', 'fits letter-size paper')),
    Theme('Music', 'Musical Instruments',
          ('guitar strings', 'capo', 'clip-on tuner', 'drumsticks', 'metronome', 'pick set',
           'sheet music stand', 'instrument cable'),
          ('phosphor bronze', 'hickory', 'nickel-plated steel', 'maple'),
          'for practice, rehearsal and live performance',
          ('bright balanced tone', 'chromatic tuning', 'low-noise shielding',
           'fits acoustic and electric guitars')),
    Theme('Fitness', 'Sports & Outdoors > Exercise & Fitness',
          ('yoga mat', 'dumbbell', 'jump rope', 'foam roller', 'kettlebell', 'resistance band',
           'gym bag', 'ab wheel'),
          ('natural rubber', 'neoprene', 'TPE foam', 'powder-coated iron'),
          'for home workouts, strength training and stretching',
          ('non-slip texture', 'sweat resistant', 'color-coded weights',
           'includes a workout guide')),
    Theme('Pet', 'Pet Supplies',
          ('dog leash', 'cat tree', 'food bowl', 'chew toy', 'litter box', 'bird feeder',
           'aquarium filter', 'dog bed'),
          ('reflective nylon', 'sisal rope', 'food-grade silicone', 'plush fleece'),
          'for dogs, cats and other household pets',
          ('machine washable', 'vet recommended', 'odor control', 'chew resistant')),
    Theme('Car', 'Automotive',
          ('tire pressure gauge', 'jumper cables', 'wax kit', 'floor mat', 'wiper blade',
           'tow strap', 'seat cover', 'dash cam mount'),
          ('heavy-gauge copper', 'all-weather rubber', 'carnauba', 'polyester webbing'),
          'for cars, trucks and SUVs on the road',
          ('universal fit', 'weatherproof', 'tool-free install', 'reflective safety strip')),
    Theme('Lab', 'Industrial & Scientific > Lab Supplies',
          ('beaker', 'pipette', 'test tube rack', 'microscope slide', 'safety goggles',
           'petri dish', 'funnel', 'graduated cylinder'),
          ('borosilicate glass', 'polypropylene', 'autoclavable plastic', 'stainless steel'),
          'for laboratories, classrooms and research benches',
          ('graduated markings', 'chemical resistant', 'autoclavable', 'sterile packed')),
    Theme('Baby', 'Baby Products',
          ('monitor', 'stroller fan', 'bib set', 'teething ring', 'crib sheet', 'bottle warmer',
           'diaper bag', 'carrier'),
          ('organic cotton', 'BPA-free silicone', 'muslin', 'soft-touch plastic'),
          'for newborns, infants and toddlers',
          ('BPA free', 'hypoallergenic', 'pediatrician approved',
           'gentle on sensitive skin')),
    Theme('Artist', 'Arts, Crafts & Sewing > Painting',
          ('paint brush set', 'canvas pad', 'table easel', 'palette knife', 'acrylic paint set',
           'masking tape', 'drop cloth', 'watercolor palette'),
          ('synthetic bristle', 'cotton canvas', 'beech wood', 'heavy-body pigment'),
          'for artists, hobby painters and art classes',
          ('fast drying', 'non-toxic', 'archival quality', 'blends smoothly')),
    Theme('Bathroom', 'Home & Kitchen > Bath',
          ('shower head', 'bath towel', 'soap dish', 'bath mat', 'loofah', 'toothbrush holder',
           'shower caddy', 'towel rack'),
          ('chrome-plated brass', 'Turkish cotton', 'bamboo', 'memory foam'),
          'for the bathroom, shower and spa days at home',
          ('quick drying', 'mildew resistant', 'rustproof', 'absorbent and soft')),
)
ADJECTIVES = ('Compact', 'Heavy-Duty', 'Portable', 'Deluxe', 'Lightweight', 'Adjustable',
              'Classic', 'Premium', 'Foldable', 'Ergonomic', 'Durable', 'Essential')
COLORS = ('Black', 'White', 'Red', 'Navy Blue', 'Forest Green', 'Gray', 'Teal', 'Orange',
          'Purple', 'Beige')
BRANDS = ('Acme', 'Northwind', 'Zenith', 'Orbit', 'Pioneer', 'Summit', 'Harbor', 'Vertex',
          'Lumen', 'Kestrel')

EPOCH = 1_500_000_000          # first possible timestamp (2017-07-14), seconds
START_SPREAD = 90 * 86_400     # users start uniformly within 90 days, so they overlap in time
GAP_RANGE = (3_600, 7 * 86_400)  # seconds between a user's consecutive interactions


@dataclasses.dataclass(frozen=True)
class SyntheticParams:
  """Every knob of the generator; the TFDS config name hashes all of them."""

  num_items: int = 200
  num_clusters: int = 10
  num_users: int = 300
  min_len: int = 5               # interactions per user, uniform in [min_len, max_len]
  max_len: int = 20
  max_history: int = 10
  stay: float = 0.6              # P(next cluster = current cluster)
  move_next: float = 0.3         # P(next cluster = (c + 1) mod C); the rest jumps uniformly
  follow_successor: float = 0.7  # within a cluster: P(the current item's planted successor)
  popularity_skew: float = 1.0   # Zipf exponent of within-cluster popularity (0 = uniform)
  seed: int = 0

  def __post_init__(self):
    def bad(name, problem):
      raise DataError(problem, field=f'data.{name}', value=getattr(self, name))
    if not 1 <= self.num_clusters <= len(THEMES):
      bad('num_clusters', f'must be in 1..{len(THEMES)} (one vocabulary theme per cluster)')
    if self.num_items < self.num_clusters:
      bad('num_items', f'must be >= num_clusters ({self.num_clusters})')
    if self.num_users < 1:
      bad('num_users', 'must be >= 1')
    if self.min_len < 2:
      bad('min_len', 'must be >= 2 (a user needs two interactions to give a sample)')
    if self.max_len < self.min_len:
      bad('max_len', f'must be >= min_len ({self.min_len})')
    if self.max_history < 1:
      bad('max_history', 'must be >= 1')
    for name in ('stay', 'move_next', 'follow_successor'):
      if not 0.0 <= getattr(self, name) <= 1.0:
        bad(name, 'must be a probability in [0, 1]')
    if self.stay + self.move_next > 1.0 + 1e-9:
      bad('move_next', f'stay + move_next must be <= 1 (stay = {self.stay})')
    if self.popularity_skew < 0:
      bad('popularity_skew', 'must be >= 0')
    if self.seed < 0:
      bad('seed', 'must be >= 0')


@dataclasses.dataclass(frozen=True)
class Planted:
  """The ground truth behind the logs; `next_item_probs` is the exact next-item law."""

  item_cluster: np.ndarray      # int64 [num_items]
  transition: np.ndarray        # float64 [C, C]; rows sum to 1
  successor: np.ndarray         # int64 [num_items]; the same cluster's next item in its cycle
  popularity: np.ndarray        # float64 [num_items]; sums to 1 within each cluster
  follow_successor: float

  @property
  def num_items(self) -> int:
    return len(self.item_cluster)

  def to_metadata(self) -> dict:
    """JSON-ready form (for the TFDS MetadataDict)."""
    return {'item_cluster': self.item_cluster.tolist(), 'transition': self.transition.tolist(),
            'successor': self.successor.tolist(), 'popularity': self.popularity.tolist(),
            'follow_successor': self.follow_successor}

  @classmethod
  def from_metadata(cls, meta: dict) -> 'Planted':
    return cls(item_cluster=np.asarray(meta['item_cluster'], np.int64),
               transition=np.asarray(meta['transition'], np.float64),
               successor=np.asarray(meta['successor'], np.int64),
               popularity=np.asarray(meta['popularity'], np.float64),
               follow_successor=float(meta['follow_successor']))


@dataclasses.dataclass(frozen=True)
class SyntheticData:
  table: ItemTable
  splits: dict[str, list[protocols.Sample]]
  planted: Planted
  num_interactions: int


def transition_matrix(p: SyntheticParams) -> np.ndarray:
  """The planted cluster transition matrix, float64 [C, C]."""
  c = p.num_clusters
  t = np.full((c, c), max(0.0, 1.0 - p.stay - p.move_next) / c)  # max: float round-off
  t[np.arange(c), np.arange(c)] += p.stay
  t[np.arange(c), (np.arange(c) + 1) % c] += p.move_next
  return t


def next_item_probs(planted: Planted, last_items: np.ndarray) -> np.ndarray:
  """P(next item | last item) for each of `last_items` [n] -> float64 [n, num_items]."""
  last_items = np.asarray(last_items, np.int64)
  if last_items.ndim != 1:
    raise ValueError(f'last_items must be 1-D [n], got shape {last_items.shape}')
  cluster = planted.item_cluster
  from_cluster = cluster[last_items]                                  # [n]
  probs = planted.transition[from_cluster][:, cluster] * planted.popularity[None, :]
  same = cluster[None, :] == from_cluster[:, None]                    # [n, num_items]
  follow = planted.follow_successor
  probs = np.where(same, probs * (1.0 - follow), probs)
  stay = planted.transition[from_cluster, from_cluster]               # [n]
  probs[np.arange(len(last_items)), planted.successor[last_items]] += stay * follow
  return probs


def oracle_metrics(planted: Planted, samples: Sequence[protocols.Sample],
                   ks: Sequence[int] = (1, 5, 10)) -> dict[str, float]:
  """HR@K and NDCG@K of the Bayes-optimal ranking (ties broken by lower item id first)."""
  if not samples:
    return {}
  last = np.array([s.history[-1] for s in samples], np.int64)
  target = np.array([s.target for s in samples], np.int64)
  ranks = np.empty(len(samples), np.int64)
  for start in range(0, len(samples), 256):  # bounded memory for big catalogues
    probs = next_item_probs(planted, last[start:start + 256])
    t = target[start:start + 256]
    p_target = probs[np.arange(len(t)), t][:, None]
    ids = np.arange(planted.num_items)[None, :]
    ranks[start:start + 256] = np.sum((probs > p_target) |
                                      ((probs == p_target) & (ids < t[:, None])), axis=1)
  out = {}
  for k in ks:
    hit = ranks < k
    out[f'hr@{k}'] = float(hit.mean())
    out[f'ndcg@{k}'] = float(np.where(hit, 1.0 / np.log2(ranks + 2.0), 0.0).mean())
  return out


def _plant(p: SyntheticParams, rng: np.random.Generator) -> Planted:
  item_cluster = rng.permutation(np.arange(p.num_items) % p.num_clusters)
  successor = np.empty(p.num_items, np.int64)
  popularity = np.empty(p.num_items, np.float64)
  for c in range(p.num_clusters):
    members = np.flatnonzero(item_cluster == c)
    cycle = rng.permutation(members)  # a random item order through the cluster
    successor[cycle] = np.roll(cycle, -1)
    ranks = rng.permutation(len(members))
    weights = 1.0 / (ranks + 1.0) ** p.popularity_skew
    popularity[members] = weights / weights.sum()
  return Planted(item_cluster=item_cluster.astype(np.int64), transition=transition_matrix(p),
                 successor=successor, popularity=popularity,
                 follow_successor=p.follow_successor)


def _sentence_case(text: str) -> str:
  return text[:1].upper() + text[1:]  # str.capitalize would lowercase 'UV', '450F'


def _item_text(item_cluster: np.ndarray, num_clusters: int,
               rng: np.random.Generator) -> ItemTable:
  """Titles distinct by construction: per cluster, distinct (noun, adjective, colour) triples."""
  num_items = len(item_cluster)
  titles, descriptions, brands, categories = ([''] * num_items for _ in range(4))
  for c in range(num_clusters):
    theme = THEMES[c]
    combos = len(theme.nouns) * len(ADJECTIVES) * len(COLORS)
    order = rng.permutation(combos)
    for k, item in enumerate(np.flatnonzero(item_cluster == c)):
      combo = int(order[k % combos])
      noun = theme.nouns[combo % len(theme.nouns)]
      adjective = ADJECTIVES[combo // len(theme.nouns) % len(ADJECTIVES)]
      color = COLORS[combo // (len(theme.nouns) * len(ADJECTIVES))]
      generation = f' (Gen {k // combos + 1})' if k >= combos else ''
      brand = BRANDS[rng.integers(len(BRANDS))]
      material = theme.materials[rng.integers(len(theme.materials))]
      first, second = rng.choice(len(theme.features), size=2, replace=False)
      titles[item] = (f'{brand} {adjective} {theme.label} {noun.title()}, '
                      f'{material.title()}, {color}{generation}')
      descriptions[item] = (
          f'{adjective} {noun} in {color.lower()} {material}, made {theme.uses}. '
          f'{_sentence_case(theme.features[first])} and {theme.features[second]}. '
          f'Part of the {brand} {theme.label.lower()} collection.')
      brands[item] = brand
      categories[item] = theme.category
  return ItemTable(title=titles, description=descriptions, sid=[''] * num_items, brand=brands,
                   categories=categories)


def _walk(p: SyntheticParams, planted: Planted, rng: np.random.Generator):
  """Yields (user_id, item, timestamp) for every interaction, user by user."""
  members = [np.flatnonzero(planted.item_cluster == c) for c in range(p.num_clusters)]
  member_cdf = [np.cumsum(planted.popularity[m]) for m in members]
  cluster_cdf = np.cumsum(planted.transition, axis=1)

  def draw(cdf: np.ndarray) -> int:  # inverse-CDF sampling; min() guards float round-off
    return min(int(np.searchsorted(cdf, rng.random(), side='right')), len(cdf) - 1)

  for u in range(p.num_users):
    length = int(rng.integers(p.min_len, p.max_len + 1))
    cluster = int(rng.integers(p.num_clusters))
    item = int(members[cluster][draw(member_cdf[cluster])])
    clock = EPOCH + int(rng.integers(START_SPREAD))
    for _ in range(length):
      yield f'U{u}', item, clock
      clock += int(rng.integers(*GAP_RANGE))
      current = int(planted.item_cluster[item])
      cluster = draw(cluster_cdf[current])
      if cluster == current and rng.random() < p.follow_successor:
        item = int(planted.successor[item])
      else:
        item = int(members[cluster][draw(member_cdf[cluster])])


def generate(p: SyntheticParams) -> SyntheticData:
  """The whole dataset for `p`; identical for identical `p` (one seeded numpy Generator)."""
  rng = np.random.default_rng(p.seed)
  planted = _plant(p, rng)
  table = _item_text(planted.item_cluster, p.num_clusters, rng)
  users, items, stamps = zip(*_walk(p, planted, rng))
  sequences = protocols.user_sequences(users, items, stamps)
  splits = protocols.minionerec_splits(sequences, p.max_history)
  return SyntheticData(table=table, splits=splits, planted=planted, num_interactions=len(users))


def statistics(data: SyntheticData) -> dict:
  """Row counts, users and the oracle (Bayes-optimal) metrics per split."""
  stats = {'items': data.table.num_items, 'interactions': data.num_interactions,
           'users': len({s.user_id for rows in data.splits.values() for s in rows}),
           'rows': {}, 'split_users': {}, 'history_len_mean': {}, 'oracle': {}}
  for name, rows in data.splits.items():
    stats['rows'][name] = len(rows)
    stats['split_users'][name] = len({s.user_id for s in rows})
    stats['history_len_mean'][name] = (
        float(np.mean([len(s.history) for s in rows])) if rows else 0.0)
    stats['oracle'][name] = oracle_metrics(data.planted, rows)
  return stats
