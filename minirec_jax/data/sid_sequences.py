"""Histories as SID-token sequences: the SID token map, exact packing for SFT, eval prompts.

Token map (`SidTokenMap`): the vocabulary id of every (level, code) as a table, plus the tokens
that close a generated SID (the terminator). Decoding, rollouts and prompts read token ids from
this table only, so they work on any vocabulary that has one token per SID code: ours
(`SidVocab`), or a language model's extended with SID tokens (models/vocab_extension.py).

Our SID-only vocabulary (`SidVocab`): token 0 is PAD; the SID token of (level l, code c) is
`1 + l*K + c`. An item is its L SID tokens; a history is its items' tokens, oldest first. No
BOS/EOS is needed: every SID has exactly L tokens, so the model predicts the next item's first
code from the last history token (its terminator is empty).

Exact packing for SFT. The official data has one row per (history of <= H items -> target).
Training every row as its own sequence repeats most tokens (a user's rows share prefixes). We
pack without changing what any row sees:

* Rows of one user are chained in file order while a row's history equals the whole chain so
  far: such a chain `i_0 .. i_m` supervises target i_j with history i_0..i_{j-1} -- exactly the
  row -- under plain causal attention. A chain is closed at H+1 items, or when the next row's
  history is not the chain (e.g. a sliding window of the last H items), which then starts a
  new chain. Each row becomes exactly one supervised item of exactly one chain.
* Chains (segments) are packed first-fit into fixed-length sequences; attention is causal and
  confined to the segment (segment ids), and positions restart at 0 in every segment. With
  RoPE this makes every supervised prediction bit-for-bit the computation of the stand-alone
  row, so the supervised (history -> target) pairs are exactly the train split's rows.
  `unpack_pairs` recovers them from the packed arrays; tests check it against the split.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import chex
import jax
import numpy as np

PAD_TOKEN = 0


def sid_token_name(level: int, code: int) -> str:
  """The official text of the SID token of (level, code): '<a_12>' is level 0, code 12."""
  if not 0 <= level < 26:
    raise ValueError(f'SID levels are named a..z; level {level} has no letter')
  return f'<{chr(ord("a") + level)}_{code}>'


@functools.partial(jax.tree_util.register_dataclass, data_fields=['table'],
                   meta_fields=['terminator'])
@dataclasses.dataclass(frozen=True, eq=False)
class SidTokenMap:
  """Vocabulary ids of the SID tokens (a pytree: pass it to jitted functions as an argument).

  Attributes:
    table: int32 `[L, K]`: the token id of (level l, code c); -1 where the vocabulary has no
      token for that code (an official checkpoint adds only the codes its catalogue uses).
    terminator: token ids generated after every complete SID, in order (static): () for our
      SID-only vocabulary, e.g. ('\\n' id, eos id) for a language model (official format).

  No checks at construction (JAX rebuilds pytrees with placeholder leaves); the decoders check
  the map against the trie and the vocabulary.
  """

  table: np.ndarray
  terminator: tuple[int, ...] = ()

  @property
  def num_levels(self) -> int:
    return self.table.shape[0]

  @property
  def codebook_size(self) -> int:
    return self.table.shape[1]

  def max_id(self) -> int:
    """The largest token id of the map (SID tokens and terminator); needs a concrete table."""
    return max((int(np.max(self.table)),) + self.terminator)

  def generated_ids(self) -> tuple[int, ...]:
    """Every token id a SID answer is made of (the SID tokens and the terminator), sorted: the
    rows a head restricted to SID answers scores (`DecoderConfig.output_rows`)."""
    table = np.asarray(self.table)
    return tuple(sorted(set(table[table >= 0].tolist()) | set(self.terminator)))

  def item_tokens(self, codes: np.ndarray) -> np.ndarray:
    """Codes `[n, L]` -> token ids int32 `[n, L]`; every code must have a token."""
    codes = np.asarray(codes)
    chex.assert_shape(codes, (None, self.num_levels))
    if codes.min() < 0 or codes.max() >= self.codebook_size:
      raise ValueError(f'codes must lie in [0, {self.codebook_size})')
    tokens = np.asarray(self.table)[np.arange(self.num_levels), codes]
    if tokens.min() < 0:
      item, level = np.argwhere(tokens < 0)[0].tolist()
      raise ValueError(f'code {codes[item, level]} of level {level} (row {item}) has no token '
                       'in this vocabulary')
    return tokens.astype(np.int32)

  def token_codes(self, tokens: np.ndarray) -> np.ndarray:
    """Token ids `[..., L]` (level l's token at index l) -> codes int32 `[..., L]`, -1 where a
    token is not a SID token of its level."""
    tokens = np.asarray(tokens)
    chex.assert_axis_dimension(tokens, -1, self.num_levels)
    table = np.asarray(self.table)
    hit = (tokens[..., None] == table) & (table >= 0)                        # [..., L, K]
    return np.where(hit.any(-1), hit.argmax(-1), -1).astype(np.int32)


@dataclasses.dataclass(frozen=True)
class SidVocab:
  """Our SID-only token layout for L levels of K codes (PAD below the SID tokens)."""

  num_levels: int
  codebook_size: int

  sid_offset: int = 1

  @property
  def vocab_size(self) -> int:
    return self.sid_offset + self.num_levels * self.codebook_size

  @property
  def token_map(self) -> SidTokenMap:
    """Token `sid_offset + l*K + c` for (level l, code c); no terminator."""
    levels = np.arange(self.num_levels)[:, None] * self.codebook_size
    return SidTokenMap((self.sid_offset + levels + np.arange(self.codebook_size)).astype(np.int32))

  def item_tokens(self, codes: np.ndarray) -> np.ndarray:
    """Codes `[n, L]` -> token ids `[n, L]`."""
    return self.token_map.item_tokens(codes)


@dataclasses.dataclass(frozen=True)
class Segment:
  """A chain of one user's items; items[j] for j >= first_target are supervised."""

  items: tuple[int, ...]
  first_target: int
  rows: tuple[int, ...]  # train-split row of each supervised item, in order


def build_segments(users: Sequence[str], histories: Sequence[Sequence[int]],
                   targets: Sequence[int], max_history: int) -> list[Segment]:
  """Chains the rows of a split into segments (see module docstring); order is deterministic."""
  if not len(users) == len(histories) == len(targets):
    raise ValueError('users, histories and targets must have the same length')
  open_chains: dict[str, list] = {}  # user -> [items, first_target, rows]
  done: list[list] = []
  for row, (user, history, target) in enumerate(zip(users, histories, targets)):
    history = [int(i) for i in history]
    if not 1 <= len(history) <= max_history:
      raise ValueError(f'row {row}: history length {len(history)} not in [1, {max_history}]')
    chain = open_chains.get(user)
    if chain is not None and chain[0] == history:
      chain[0].append(int(target))
      chain[2].append(row)
    else:
      if chain is not None:
        done.append(chain)
      chain = [history + [int(target)], len(history), [row]]
      open_chains[user] = chain
    if len(chain[0]) > max_history:
      done.append(open_chains.pop(user))
  done.extend(open_chains.values())
  done.sort(key=lambda c: c[2][0])  # by first row: deterministic and close to file order
  return [Segment(tuple(items), first, tuple(rows)) for items, first, rows in done]


@dataclasses.dataclass(frozen=True)
class PackedSequences:
  """Fixed-length packed training sequences; all arrays `[num_sequences, seq_len]`.

  tokens:      input token ids (PAD_TOKEN in unused slots)
  positions:   position of each token within its segment (restarts at 0)
  segment_ids: 1-based segment index within the sequence, 0 for unused slots
  labels:      the next token (the prediction target at this position)
  weights:     1.0 where the label is a token of a supervised item, else 0.0
  rows:        train-split row whose target the label belongs to, -1 elsewhere
  """

  tokens: np.ndarray
  positions: np.ndarray
  segment_ids: np.ndarray
  labels: np.ndarray
  weights: np.ndarray
  rows: np.ndarray

  def __len__(self) -> int:
    return self.tokens.shape[0]

  def example(self, i: int) -> dict[str, np.ndarray]:
    return {f.name: getattr(self, f.name)[i] for f in dataclasses.fields(self)}


def pack_segments(segments: Sequence[Segment], item_tokens: np.ndarray,
                  seq_len: int) -> PackedSequences:
  """First-fit packs segments into sequences of `seq_len` tokens.

  Args:
    segments: from `build_segments`.
    item_tokens: `[num_items, L]` token ids of every item (`SidTokenMap.item_tokens`).
    seq_len: tokens per packed sequence; must hold the longest segment.
  """
  num_levels = item_tokens.shape[1]
  lengths = [len(s.items) * num_levels for s in segments]
  if max(lengths, default=0) > seq_len:
    raise ValueError(f'seq_len {seq_len} cannot hold a segment of {max(lengths)} tokens')
  bins: list[list[int]] = []
  free: list[int] = []
  for index, length in enumerate(lengths):
    for b, space in enumerate(free):  # first fit
      if space >= length:
        bins[b].append(index)
        free[b] -= length
        break
    else:
      bins.append([index])
      free.append(seq_len - length)
  shape = (len(bins), seq_len)
  tokens = np.full(shape, PAD_TOKEN, np.int32)
  positions = np.zeros(shape, np.int32)
  segment_ids = np.zeros(shape, np.int32)
  labels = np.full(shape, PAD_TOKEN, np.int32)
  weights = np.zeros(shape, np.float32)
  rows = np.full(shape, -1, np.int32)
  for b, members in enumerate(bins):
    start = 0
    for slot, index in enumerate(members, start=1):
      segment = segments[index]
      seg_tokens = item_tokens[np.asarray(segment.items)].reshape(-1)
      n = len(seg_tokens)
      span = slice(start, start + n)
      tokens[b, span] = seg_tokens
      positions[b, span] = np.arange(n)
      segment_ids[b, span] = slot
      # Position t predicts token t+1 of the same segment.
      labels[b, start:start + n - 1] = seg_tokens[1:]
      first_label = segment.first_target * num_levels - 1
      weights[b, start + first_label:start + n - 1] = 1.0
      target_rows = np.repeat(np.asarray(segment.rows, np.int32), num_levels)
      rows[b, start + first_label:start + n - 1] = target_rows
      start += n
  return PackedSequences(tokens, positions, segment_ids, labels, weights, rows)


def unpack_pairs(packed: PackedSequences, num_levels: int) -> dict[int, tuple[tuple, tuple]]:
  """Recovers {row: (history tokens, target tokens)} from packed sequences.

  The history of a supervised item is every token of its segment before the item, which is
  what causal attention confined to the segment lets the prediction see.
  """
  pairs = {}
  for b in range(len(packed)):
    for t in np.flatnonzero(packed.weights[b]):
      row = int(packed.rows[b, t])
      if row in pairs:
        continue
      segment = packed.segment_ids[b]
      start = int(np.flatnonzero(segment == segment[t])[0])
      history = tuple(packed.tokens[b, start:t + 1].tolist())
      target = tuple(packed.labels[b, t:t + num_levels].tolist())
      pairs[row] = (history, target)
  return pairs


def segment_attention_mask(segment_ids: np.ndarray) -> np.ndarray:
  """Causal attention within segments: `[batch, seq] -> bool [batch, seq, seq]`."""
  same = segment_ids[..., :, None] == segment_ids[..., None, :]
  causal = np.tril(np.ones(segment_ids.shape[-1:] * 2, dtype=bool))
  return same & causal & (segment_ids[..., :, None] > 0)


def left_pad(sequences: Sequence[np.ndarray], width: int | None = None) -> dict[str, np.ndarray]:
  """Token sequences as left-padded prompts.

  Args:
    sequences: int token ids per row.
    width: columns (default: the longest sequence); longer sequences raise.
  Returns:
    tokens `[batch, width]` (PAD on the left), positions `[batch, width]` (0 at the first real
    token), mask `[batch, width]` (True on real tokens).
  """
  lengths = [len(seq) for seq in sequences]
  width = max(lengths, default=0) if width is None else width
  if max(lengths, default=0) > width:
    raise ValueError(f'a prompt of {max(lengths)} tokens does not fit {width} columns')
  tokens = np.full((len(sequences), width), PAD_TOKEN, np.int32)
  mask = np.zeros((len(sequences), width), bool)
  for b, seq in enumerate(sequences):
    if len(seq):
      tokens[b, width - len(seq):] = seq
      mask[b, width - len(seq):] = True
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return {'tokens': tokens, 'positions': positions, 'mask': mask}


def recent_items(history: np.ndarray, history_len: np.ndarray, max_items: int) -> list[np.ndarray]:
  """The last `max_items` real items of each padded history `[batch, H]` (oldest first)."""
  return [history[b, max(0, int(n) - max_items):int(n)] for b, n in enumerate(history_len)]


def history_prompts(history: np.ndarray, history_len: np.ndarray, item_tokens: np.ndarray,
                    max_items: int) -> dict[str, np.ndarray]:
  """Left-padded prompts from padded histories (the pipeline's batch format).

  Args:
    history: `[batch, H]` item ids, oldest first, padded with negative ids after the end.
    history_len: `[batch]` number of real items.
    item_tokens: `[num_items, L]`.
    max_items: prompt length in items (the most recent `max_items` are kept).
  Returns:
    `left_pad` of the items' tokens, `max_items * L` columns wide.
  """
  seqs = [item_tokens[items].reshape(-1) for items in recent_items(history, history_len,
                                                                   max_items)]
  return left_pad(seqs, max_items * item_tokens.shape[1])
