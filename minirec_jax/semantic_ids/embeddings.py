"""Item embeddings: batched, jitted text encoding with a disk cache, or a user-supplied matrix.

`embed_texts` sorts texts by token count, pads each batch to a fixed number of rows and to a
length rounded up to LENGTH_BUCKET tokens, so the jitted encoder compiles at most
max_seq_length / LENGTH_BUCKET shapes (8 for MiniLM, 12 for MPNet) however many batches there
are. `item_embeddings` caches the result per dataset, encoder and exact item texts.
"""

from __future__ import annotations

import hashlib
import os
from typing import Protocol

from absl import logging
import numpy as np

from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.semantic_ids import item_text as item_text_lib
from minirec_jax.semantic_ids import text_encoder

LENGTH_BUCKET = 32  # token lengths are padded up to a multiple of this
_ROW_MULTIPLE = 8  # small inputs use a batch rounded up to this, not the full batch size


class Encoder(Protocol):
  """What `embed_texts` needs; `text_encoder.TextEncoder` is one, a language model's
  `models.lm_embeddings.MeanPoolEncoder` another."""

  name: str
  hidden: int  # embedding width

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    ...

  def encode_batch(self, ids: np.ndarray, mask: np.ndarray):
    ...


def _round_up(n: int, multiple: int) -> int:
  return -(-n // multiple) * multiple


def _padded_batch(token_ids: list[list[int]], rows: int) -> tuple[np.ndarray, np.ndarray]:
  """Ids `[rows, width]` int32 and mask `[rows, width]` bool, width a LENGTH_BUCKET multiple.

  Rows past `len(token_ids)` are filler with one unmasked token, so their pooling stays
  finite; their outputs are dropped.
  """
  width = _round_up(max(len(t) for t in token_ids), LENGTH_BUCKET)
  ids = np.zeros((rows, width), np.int32)
  mask = np.zeros((rows, width), bool)
  for j, tokens in enumerate(token_ids):
    ids[j, :len(tokens)] = tokens
    mask[j, :len(tokens)] = True
  mask[len(token_ids):, 0] = True
  return ids, mask


def embed_texts(texts: list[str], encoder: Encoder | None = None, *,
                batch_size: int = 256) -> np.ndarray:
  """Encodes `texts` `[n]` -> float32 `[n, hidden]`, rows in the input order.

  `encoder` defaults to all-MiniLM-L6-v2 (`TextEncoder.load()`). Progress (items/s, ETA) goes
  to stderr on a terminal, else to the log every 30 s.
  """
  encoder = encoder or text_encoder.TextEncoder.load()
  token_ids = encoder.tokenize(texts)
  # Longest first: the slowest, largest-shape batch compiles and runs first, so the ETA of
  # the progress line only improves.
  order = np.argsort([-len(t) for t in token_ids], kind='stable')
  rows = min(batch_size, _round_up(max(len(texts), 1), _ROW_MULTIPLE))
  out = np.zeros((len(texts), encoder.hidden), np.float32)
  progress = metric_logging.Progress(len(texts), f'embed texts ({encoder.name})', unit='items')

  def collect(chunk, result):
    out[chunk] = np.asarray(result)[:len(chunk)]
    progress.update(len(chunk))

  # Batch i is fetched only after batch i + 1 is dispatched, so padding the next batch on the
  # host overlaps with the device computing the current one.
  pending = None
  for start in range(0, len(texts), rows):
    chunk = order[start:start + rows]
    result = encoder.encode_batch(*_padded_batch([token_ids[i] for i in chunk], rows))
    if pending is not None:
      collect(*pending)
    pending = chunk, result
  if pending is not None:
    collect(*pending)
  progress.close()
  return out


def texts_key(texts: list[str], encoder_name: str) -> str:
  """16 hex digits of sha256 over the encoder name and every text (order matters)."""
  digest = hashlib.sha256(encoder_name.encode('utf-8') + b'\0')
  for text in texts:
    digest.update(text.encode('utf-8') + b'\0')
  return digest.hexdigest()[:16]


def cache_path(texts: list[str], dataset_name: str, encoder_name: str, cache_dir: str) -> str:
  """`<cache_dir>/<dataset>-<encoder>-<hash of encoder name and texts>.npy`."""
  safe = dataset_name.replace(os.sep, '_').replace('/', '_')
  return os.path.join(cache_dir, f'{safe}-{encoder_name}-{texts_key(texts, encoder_name)}.npy')


def item_embeddings(items: ItemTable, dataset_name: str, cache_dir: str,
                    encoder: Encoder | str = text_encoder.DEFAULT, *,
                    batch_size: int = 256) -> np.ndarray:
  """Embeddings `[num_items, hidden]` float32 of every item's text (`item_text.item_texts`).

  `encoder` is an Encoder or a key of `text_encoder.MODELS` (default 'minilm',
  all-MiniLM-L6-v2), loaded only on a cache miss. Cached in `cache_path(...)`: the hash
  covers the encoder name and every item text, so a changed catalogue, text rule or encoder
  never reuses a stale file; the file is written atomically.
  """
  texts = item_text_lib.item_texts(items)
  if isinstance(encoder, str):
    name = text_encoder.packaged_model(encoder).name
  else:
    name = encoder.name
  path = cache_path(texts, dataset_name, name, cache_dir)
  if os.path.isfile(path):
    vectors = np.load(path)
    if vectors.ndim == 2 and vectors.shape[0] == len(texts) and vectors.dtype == np.float32:
      return vectors
    logging.warning('%s holds %s %s, not [%d, d] float32; recomputing', path, vectors.dtype,
                    list(vectors.shape), len(texts))
  if isinstance(encoder, str):
    encoder = text_encoder.TextEncoder.load(encoder)
  vectors = embed_texts(texts, encoder, batch_size=batch_size)
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, vectors)
  return vectors


def load_user_embeddings(path: str, num_items: int) -> np.ndarray:
  """A user-supplied float matrix `[num_items, d]` from a .npy file (e.g. the official Qwen3).

  The official `EmbDataset` silently replaces NaN/Inf by 0; here a non-finite row is a
  DataError naming the row, because zero vectors would quietly collapse those items onto
  one semantic ID. Wrong rank, row count, or a non-numeric dtype are DataErrors too.
  """
  if not os.path.isfile(path):
    raise DataError('missing item embeddings file (.npy [num_items, d])', path=path)
  try:
    matrix = np.load(path, allow_pickle=False)
  except (ValueError, OSError, EOFError) as exc:
    raise DataError(f'not a readable .npy array ({exc})', path=path) from None
  if not isinstance(matrix, np.ndarray):
    raise DataError('expected a single .npy array, got an .npz archive', path=path)
  if not np.issubdtype(matrix.dtype, np.number) or np.issubdtype(matrix.dtype, np.complexfloating):
    raise DataError('embeddings must be real numbers', path=path, field='dtype',
                    value=str(matrix.dtype))
  if matrix.ndim != 2 or matrix.shape[0] != num_items or matrix.shape[1] == 0:
    raise DataError(f'expected shape [{num_items}, d] with d >= 1 (one row per item)',
                    path=path, field='shape', value=list(matrix.shape))
  with np.errstate(over='ignore'):  # values beyond float32 become Inf, reported below
    matrix = matrix.astype(np.float32)
  bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
  if len(bad):
    raise DataError(f'{len(bad)} rows hold NaN or Inf as float32 (rows {bad[:10].tolist()}'
                    f'{", ..." if len(bad) > 10 else ""}); fix or drop those items',
                    path=path, field=f'row {bad[0]}', value=matrix[bad[0]][:4].tolist())
  return matrix
