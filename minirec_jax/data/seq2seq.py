"""Encoder-decoder (TIGER) examples: recent items' SID tokens in, the next item's SID out.

Encoder input, right-aligned (left padding, like the decoder-only prompts of
`sid_sequences.left_pad`), `max_history * L (+ 1)` columns:

  [PAD ... PAD, user token (optional), SID tokens of the last max_history items, oldest first]

with a bool mask False on the padding. The encoder has relative positions only, so the
alignment does not change what a real token computes. TIGER's user token is
`vocab_size + user_bucket(user_id, num_user_buckets)`: one of num_user_buckets embedding rows
above the SID vocabulary (`EncoderDecoderConfig.num_user_buckets`), by a CRC-32 hash of the id,
stable across processes and runs (Python's `hash` of a str is salted per process).

Decoder, teacher-forced over the target's L SID tokens: inputs `[START] + target[:-1]`, labels
`target`, weights 1. START is PAD (0), as T5 starts its decoder with its pad token; it is never
a label, since every SID has exactly L tokens and needs no end token.
"""

from __future__ import annotations

from typing import Mapping, Sequence
import zlib

import numpy as np

from minirec_jax.data import sid_sequences

START_TOKEN = sid_sequences.PAD_TOKEN


def user_bucket(user_id: str | bytes, num_user_buckets: int) -> int:
  """The user's hash bucket in [0, num_user_buckets): CRC-32 of its UTF-8 bytes."""
  if num_user_buckets < 1:
    raise ValueError(f'num_user_buckets must be >= 1, got {num_user_buckets}')
  data = user_id.encode('utf-8') if isinstance(user_id, str) else bytes(user_id)
  return zlib.crc32(data) % num_user_buckets


def encoder_width(max_history: int, num_levels: int, num_user_buckets: int = 0) -> int:
  """Columns of the encoder input: max_history items of L tokens, plus the user token if any."""
  return max_history * num_levels + (1 if num_user_buckets else 0)


def encoder_inputs(histories: Sequence[Sequence[int]], item_tokens: np.ndarray,
                   max_history: int, *, user_ids: Sequence[str | bytes] | None = None,
                   num_user_buckets: int = 0, vocab_size: int = 0) -> dict[str, np.ndarray]:
  """Encoder inputs of histories (item ids, oldest first; the last max_history are kept).

  Args:
    histories: per row, its item ids (at least one).
    item_tokens: int `[num_items, L]` SID token ids of every item.
    max_history: items per row.
    user_ids: per row, the user's id; needed when num_user_buckets > 0.
    num_user_buckets: 0 (no user token) or the number of user-token rows of the model.
    vocab_size: the SID vocabulary size, the first user token's id (needed with user tokens).
  Returns:
    enc_tokens int32 and enc_mask bool, each `[n, encoder_width(...)]`, right-aligned.
  """
  if num_user_buckets and (user_ids is None or vocab_size < 1):
    raise ValueError('user tokens need user_ids and the vocab_size they are numbered above')
  if user_ids is not None and len(user_ids) != len(histories):
    raise ValueError(f'{len(user_ids)} user ids for {len(histories)} histories')
  sequences = []
  for row, history in enumerate(histories):
    items = np.asarray(history, np.int64)[-max_history:]
    if not len(items):
      raise ValueError(f'row {row} has an empty history')
    tokens = item_tokens[items].reshape(-1)
    if num_user_buckets:
      user = vocab_size + user_bucket(user_ids[row], num_user_buckets)
      tokens = np.concatenate([[user], tokens])
    sequences.append(tokens)
  padded = sid_sequences.left_pad(
      sequences, encoder_width(max_history, item_tokens.shape[1], num_user_buckets))
  return {'enc_tokens': padded['tokens'], 'enc_mask': padded['mask']}


def history_encoder_inputs(history: np.ndarray, history_len: np.ndarray, item_tokens: np.ndarray,
                           max_items: int, **user_tokens) -> dict[str, np.ndarray]:
  """`encoder_inputs` of padded histories (the input pipeline's `history [b, H]`,
  `history_len [b]`); `user_tokens`: user_ids, num_user_buckets, vocab_size as there."""
  return encoder_inputs(sid_sequences.recent_items(history, history_len, max_items),
                        item_tokens, max_items, **user_tokens)


def examples(rows: Sequence[Mapping], item_tokens: np.ndarray, max_history: int, *,
             num_user_buckets: int = 0, vocab_size: int = 0) -> dict[str, np.ndarray]:
  """One teacher-forced example per split row, as arrays for `pipeline.array_batches`.

  Args:
    rows: split rows with 'user_id' (str or bytes), 'history' (item ids, oldest first) and
      'target' (item id), e.g. `loops.sft.split_rows` or the dataset's examples.
    item_tokens: int `[num_items, L]`.
    max_history, num_user_buckets, vocab_size: as `encoder_inputs`.
  Returns:
    enc_tokens int32 `[n, S]`, enc_mask bool `[n, S]`, dec_tokens and labels int32 `[n, L]`,
    weights float32 `[n, L]` (all 1).
  """
  users = [row['user_id'] for row in rows] if num_user_buckets else None
  out = encoder_inputs([row['history'] for row in rows], item_tokens, max_history,
                       user_ids=users, num_user_buckets=num_user_buckets, vocab_size=vocab_size)
  targets = np.asarray([int(row['target']) for row in rows], np.int64)
  labels = item_tokens[targets].astype(np.int32).reshape(len(rows), item_tokens.shape[1])
  start = np.full((len(rows), 1), START_TOKEN, np.int32)
  out.update(dec_tokens=np.concatenate([start, labels[:, :-1]], axis=1), labels=labels,
             weights=np.ones(labels.shape, np.float32))
  return out
