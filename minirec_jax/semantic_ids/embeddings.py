"""Item embeddings: batched, jitted text encoding with a disk cache, or a user-supplied matrix."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from minirec_jax import io_utils
from minirec_jax import metric_logging
from minirec_jax.data.errors import DataError
from minirec_jax.data.schema import ItemTable
from minirec_jax.semantic_ids import item_text as item_text_lib

LENGTH_BUCKET = 32  # pad token lengths up to a multiple of this: few distinct compiled shapes


def embed_texts(texts: list[str], encoder, *, batch_size: int = 128) -> np.ndarray:
  """Encodes texts `[n]` -> float32 `[n, hidden]`, in the input order.

  Texts are sorted by token length so each batch pads little; every batch has `batch_size`
  rows and a length rounded up to LENGTH_BUCKET, so the jitted encoder compiles a handful of
  shapes, not one per batch.
  """
  ids = encoder.tokenize(texts)
  order = np.argsort([len(x) for x in ids], kind='stable')
  out = np.zeros((len(texts), encoder.config.hidden), np.float32)
  starts = range(0, len(texts), batch_size)
  for start in metric_logging.track(starts, desc='embed items', unit='batch'):
    rows = order[start:start + batch_size]
    width = -(-max(len(ids[r]) for r in rows) // LENGTH_BUCKET) * LENGTH_BUCKET
    batch = np.zeros((batch_size, width), np.int32)
    mask = np.zeros((batch_size, width), bool)
    for j, r in enumerate(rows):
      batch[j, :len(ids[r])] = ids[r]
      mask[j, :len(ids[r])] = True
    mask[len(rows):, 0] = True  # padding rows: one dummy token keeps the pooling finite
    out[rows] = np.asarray(encoder.encode_batch(batch, mask))[:len(rows)]
  return out


def texts_key(texts: list[str], encoder_name: str) -> str:
  digest = hashlib.sha256()
  digest.update(encoder_name.encode())
  for text in texts:
    digest.update(text.encode())
    digest.update(b'\0')
  return digest.hexdigest()[:16]


def item_embeddings(items: ItemTable, dataset_name: str, cache_dir: str, encoder=None, *,
                    batch_size: int = 128) -> np.ndarray:
  """Embeddings of every item's text, cached as `<cache_dir>/<dataset>-<encoder>-<hash>.npy`.

  The hash covers the encoder name and every item text, so a changed catalogue or encoder
  never reuses a stale file. `encoder` is loaded (MiniLM) only on a cache miss.
  """
  from minirec_jax.semantic_ids import text_encoder
  texts = item_text_lib.item_texts(items)
  name = encoder.name if encoder is not None else text_encoder.NAME
  safe = dataset_name.replace('/', '_')
  path = os.path.join(cache_dir, f'{safe}-{name}-{texts_key(texts, name)}.npy')
  if os.path.isfile(path):
    return np.load(path)
  encoder = encoder or text_encoder.TextEncoder.load()
  vectors = embed_texts(texts, encoder, batch_size=batch_size)
  with io_utils.atomic_path(path) as tmp:
    with open(tmp, 'wb') as f:
      np.save(f, vectors)
  return vectors


def load_user_embeddings(path: str, num_items: int) -> np.ndarray:
  """A user-supplied `[num_items, d]` .npy (e.g. the official Qwen3 embeddings).

  Unlike the official loader, which silently replaces NaN/Inf by 0, a non-finite row is an
  error naming the row: a zero vector would quietly collide items in the tokenizer.
  """
  if not os.path.isfile(path):
    raise DataError('missing embeddings file', path=path)
  try:
    matrix = np.load(path)
  except ValueError as exc:
    raise DataError(f'not a .npy array ({exc})', path=path) from None
  if matrix.ndim != 2 or matrix.shape[0] != num_items:
    raise DataError(f'expected shape [{num_items}, d], got {list(matrix.shape)}', path=path,
                    field='shape', value=list(matrix.shape))
  bad = np.flatnonzero(~np.isfinite(matrix).all(axis=1))
  if len(bad):
    raise DataError(f'{len(bad)} rows contain NaN or Inf', path=path, field=f'row {bad[0]}',
                    value=matrix[bad[0]][:4].tolist())
  return matrix.astype(np.float32)
