"""A pretrained language model's vocabulary extended with one token per SID code.

Owns MiniOneRec's recipe for putting SIDs into a language model (reference §4.1, §6):
* `sid_vocabulary`: the SID token strings `<a_0>`, `<b_7>`, ... (level l is the l-th letter) in
  the order the official code adds them, sorted as strings (`<a_0>, <a_1>, <a_10>, <a_100>`):
  every (level, code), or only the codes a catalogue uses (the official set, whose ids then
  match an official checkpoint's);
* `add_sid_tokens`: a copy of a `TextTokenizer` with those tokens added as normal (not special)
  added tokens, so each is one atomic token and survives decoding that skips special tokens;
* `extend_params`: the decoder's embedding, and a separate LM head the same way, grown to the
  tokenizer's size with new rows equal to the mean of all existing rows (transformers' mean
  resizing, which the official code gets), plus optional seeded noise (absolute, or in units
  of each matrix's own element std, which fits any checkpoint's scale). Rows the checkpoint
  already has beyond its tokenizer (Qwen2.5 pads 151,665 tokens to 151,936 rows) are reused as
  they are, so only ids past the matrix get new rows;
* `sid_token_map`: the `SidTokenMap` of a tokenizer with SID tokens (one extended here, or an
  official checkpoint's), its terminator the '\\n' and eos that close a generated SID;
* `extend`: all of it, from a loaded checkpoint (models/checkpoints.py) and its tokenizer;
* `title_rows`: optionally, each SID token's rows from the titles of the items using its code;
* `trainable_mask`: the new rows and the top blocks, for training with the rest frozen;
* `new_row_lr_scales`: a larger learning rate for the new rows than for the pretrained body.
Parameters come back as numpy arrays, as the checkpoint readers return them.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any, NamedTuple

import jax
import numpy as np
import tokenizers

from minirec_jax.data import sid_sequences
from minirec_jax.data.text_tokenizer import TextTokenizer
from minirec_jax.models import decoder as decoder_lib


def sid_vocabulary(num_levels: int, codebook_size: int,
                   codes: np.ndarray | None = None) -> list[str]:
  """SID token strings, sorted as strings (the official order of addition).

  Args:
    num_levels: L.
    codebook_size: K.
    codes: None for all L * K tokens; an int `[num_items, L]` catalogue for only the
      (level, code) pairs it uses, as the official code adds them.
  """
  if codes is None:
    pairs = itertools.product(range(num_levels), range(codebook_size))
  else:
    codes = np.asarray(codes)
    if codes.ndim != 2 or codes.shape[1] != num_levels:
      raise ValueError(f'codes must be [num_items, {num_levels}], got shape {codes.shape}')
    if codes.min() < 0 or codes.max() >= codebook_size:
      raise ValueError(f'codes must lie in [0, {codebook_size})')
    pairs = {(level, int(code)) for level in range(num_levels) for code in codes[:, level]}
  return sorted(sid_sequences.sid_token_name(level, code) for level, code in pairs)


def add_sid_tokens(tokenizer: TextTokenizer, num_levels: int, codebook_size: int,
                   codes: np.ndarray | None = None) -> TextTokenizer:
  """A copy of `tokenizer` with the SID tokens of `sid_vocabulary` added as normal added tokens.

  New tokens get consecutive ids from `tokenizer.vocab_size` in string order; tokens the
  tokenizer already has keep their ids. `tokenizer` itself is not changed.
  """
  names = [name for name in sid_vocabulary(num_levels, codebook_size, codes)
           if tokenizer.token_to_id(name) is None]
  inner = tokenizers.Tokenizer.from_str(tokenizer.tokenizer.to_str())
  inner.add_tokens(names)
  return dataclasses.replace(tokenizer, tokenizer=inner)


def sid_token_map(tokenizer: TextTokenizer, num_levels: int, codebook_size: int, *,
                  end_text: str = '\n') -> sid_sequences.SidTokenMap:
  """The token map of a tokenizer that has SID tokens.

  Args:
    tokenizer: with SID tokens (`add_sid_tokens`, or an official checkpoint's tokenizer), and
      an eos token.
    num_levels, codebook_size: L, K of the table.
    end_text: the text generated after a SID, before eos (the official '\\n').

  Returns:
    table[l, c] = the id of level l's token for code c (-1 where the tokenizer has none:
    codes no catalogue item uses); terminator = the ids of `end_text`, then eos.

  Raises:
    DataError: a SID token that does not encode as its own single token.
    ValueError: no SID token at all, or no eos token.
  """
  table = np.full((num_levels, codebook_size), -1, np.int32)
  present = {}
  for level, code in itertools.product(range(num_levels), range(codebook_size)):
    name = sid_sequences.sid_token_name(level, code)
    if tokenizer.token_to_id(name) is not None:
      present[name] = (level, code)
  if not present:
    raise ValueError(f'{tokenizer.source} has no SID tokens (<a_0>, ...); add_sid_tokens first')
  for (level, code), token_id in zip(present.values(),
                                     tokenizer.require_tokens(list(present), 'SID tokens')):
    table[level, code] = token_id
  if tokenizer.eos_id is None:
    raise ValueError(f'{tokenizer.source} has no eos token, which ends every generated SID')
  end = tokenizer.encode(end_text, add_special_tokens=False)
  return sid_sequences.SidTokenMap(table, tuple(end) + (tokenizer.eos_id,))


def extend_params(config: decoder_lib.DecoderConfig, params: dict[str, Any], vocab_size: int,
                  *, noise_scale: float = 0.0, noise_relative: bool = False,
                  seed: int = 0) -> tuple[decoder_lib.DecoderConfig, dict[str, Any]]:
  """The decoder's token rows grown to `vocab_size` (see the module docstring).

  Args:
    config: the checkpoint's config; `config.vocab_size` rows.
    params: its parameters (numpy or jax arrays); `embed_tokens.embedding` `[rows, width]` and,
      untied, `lm_head.kernel` `[width, rows]`.
    vocab_size: the tokenizer's size after the extension; nothing changes if the matrix
      already has that many rows.
    noise_scale: standard deviation of Gaussian noise added to every new row (0: exact mean).
    noise_relative: `noise_scale` in units of the element std of the matrix the row joins
      (the embedding, or the untied head), so 1.0 gives new rows the spread of the old ones.
    seed: the noise's seed.

  Returns:
    (config with the new vocab_size, params with the grown matrices as numpy arrays; every
    other leaf is the same object).
  """
  rows = config.vocab_size
  embedding = np.asarray(params['embed_tokens']['embedding'])
  if embedding.shape[0] != rows:
    raise ValueError(f'embedding has {embedding.shape[0]} rows, config.vocab_size is {rows}')
  if vocab_size <= rows:
    return config, params
  rng = np.random.default_rng(seed)

  def grow(matrix: np.ndarray) -> np.ndarray:
    """`[rows, width]` -> `[vocab_size, width]`, new rows the mean of the old ones."""
    new = np.broadcast_to(matrix.mean(0, dtype=np.float64), (vocab_size - rows,
                                                              matrix.shape[1]))
    if noise_scale:
      scale = noise_scale * (matrix.std(dtype=np.float64) if noise_relative else 1.0)
      new = new + scale * rng.standard_normal(new.shape)
    return np.concatenate([matrix, new.astype(matrix.dtype)])

  params = {**params, 'embed_tokens': {'embedding': grow(embedding)}}
  if not config.tie_embeddings:
    params['lm_head'] = {'kernel': grow(np.asarray(params['lm_head']['kernel']).T).T}
  return dataclasses.replace(config, vocab_size=vocab_size), params


def title_rows(config: decoder_lib.DecoderConfig, params: dict[str, Any],
               token_map: sid_sequences.SidTokenMap, codes: np.ndarray,
               title_ids: list[list[int]]) -> dict[str, Any]:
  """`params` with each SID token's rows set from the item titles that use its code.

  The row of (level l, code c) becomes the mean, over the items whose code at level l is c, of
  the mean row of the item's title tokens: a SID token then starts near the words of its items
  instead of at one shared mean row. Codes no item uses keep their rows. An untied head's rows
  are set the same way from its own rows.

  Args:
    config, params: an extended model (`extend`); numpy or jax leaves.
    token_map: its SID token map.
    codes: int `[num_items, L]`, the catalogue's codes.
    title_ids: each item's title token ids (none empty), `num_items` lists.

  Returns:
    params with new `embed_tokens` (and untied `lm_head`) numpy arrays; other leaves the same.
  """
  codes = np.asarray(codes)
  if codes.ndim != 2 or codes.shape[1] != token_map.num_levels or len(title_ids) != len(codes):
    raise ValueError(f'codes {codes.shape} and {len(title_ids)} titles do not match a '
                     f'{token_map.num_levels}-level token map')
  empty = [i for i, ids in enumerate(title_ids) if not ids]
  if empty:
    raise ValueError(f'{len(empty)} item titles have no tokens (first: item {empty[0]})')
  table = np.asarray(token_map.table)

  def set_rows(matrix: np.ndarray) -> np.ndarray:
    """`[vocab, width]` with the SID rows replaced."""
    matrix = np.array(matrix)
    items = np.stack([matrix[ids].mean(0, dtype=np.float64) for ids in title_ids])
    for level in range(token_map.num_levels):
      used = np.unique(codes[:, level])
      sums = np.zeros((token_map.codebook_size, matrix.shape[1]))
      np.add.at(sums, codes[:, level], items)
      counts = np.bincount(codes[:, level], minlength=token_map.codebook_size)
      rows = table[level, used]
      if (rows < 0).any():
        raise ValueError(f'level {level}: codes without a token: {used[rows < 0][:5].tolist()}')
      matrix[rows] = (sums[used] / counts[used, None]).astype(matrix.dtype)
    return matrix

  params = {**params, 'embed_tokens': {'embedding': set_rows(params['embed_tokens']['embedding'])}}
  if not config.tie_embeddings:
    params['lm_head'] = {'kernel': set_rows(np.asarray(params['lm_head']['kernel']).T).T}
  return params


class Extended(NamedTuple):
  """A language model ready to generate SIDs (`extend`)."""

  tokenizer: TextTokenizer
  config: decoder_lib.DecoderConfig
  params: dict[str, Any]
  token_map: sid_sequences.SidTokenMap


def extend(tokenizer: TextTokenizer, config: decoder_lib.DecoderConfig, params: dict[str, Any],
           num_levels: int, codebook_size: int, *, codes: np.ndarray | None = None,
           end_text: str = '\n', noise_scale: float = 0.0, noise_relative: bool = False,
           seed: int = 0) -> Extended:
  """Tokenizer, config and params with the SID tokens added, and their token map.

  `codes` (the catalogue) limits the tokens to the codes it uses, as the official code does;
  see `sid_vocabulary`, `extend_params` and `sid_token_map` for the rest.
  """
  tokenizer = add_sid_tokens(tokenizer, num_levels, codebook_size, codes)
  config, params = extend_params(config, params, tokenizer.vocab_size, noise_scale=noise_scale,
                                 noise_relative=noise_relative, seed=seed)
  return Extended(tokenizer, config, params,
                  sid_token_map(tokenizer, num_levels, codebook_size, end_text=end_text))


def _row_tree(config: decoder_lib.DecoderConfig, rows: np.ndarray,
              other: Any) -> dict[str, Any]:
  """A tree like the params: `rows` ([vocab] per token row) as a `[rows, 1]` column on the
  embedding and a `[1, rows]` row on an untied head; `other(top_level_name)` elsewhere."""
  rows = rows.astype(np.float32)

  def leaf(path, _):
    top = path[0].key
    if top == 'embed_tokens':
      return rows[:, None]
    if top == 'lm_head':
      return rows[None, :]
    return np.float32(other(top))

  return jax.tree_util.tree_map_with_path(leaf, decoder_lib.abstract_params(config))


def trainable_mask(config: decoder_lib.DecoderConfig, new_from: int,
                   top_layers: int) -> dict[str, Any]:
  """Which parameters train when the pretrained body is frozen (`optim.freeze`'s mask).

  Args:
    config: the extended decoder's config.
    new_from: the first new token row (the checkpoint's vocabulary size before `extend`).
    top_layers: how many of the last blocks train too (their final norm with them when > 0).
  Returns:
    A tree like the params: float32 `[rows, 1]` row masks for the embedding (and
    `[1, rows]` for an untied head: only rows >= `new_from` train), scalars 1.0 / 0.0 for
    every other leaf.
  """
  if not 0 <= top_layers <= config.depth:
    raise ValueError(f'top_layers must lie in [0, {config.depth}], got {top_layers}')
  first_trained = config.depth - top_layers

  def block_or_norm(top):
    if top.startswith('layers_'):
      return int(top.split('_')[1]) >= first_trained
    return top_layers > 0  # the final norm

  return _row_tree(config, np.arange(config.vocab_size) >= new_from, block_or_norm)


def new_row_lr_scales(config: decoder_lib.DecoderConfig, new_from: int,
                      scale: float) -> dict[str, Any]:
  """`optim.scale_updates`' tree: `scale` on the new token rows (>= `new_from`), 1 elsewhere.

  New rows start at the mean row (all equal), while a pretrained row differs from it by about
  the embedding's element std per element; AdamW moves an element by about lr per step, so at a
  fine-tuning lr and a CPU-sized step budget the new rows hardly separate. A larger step for
  them alone leaves the pretrained body at its fine-tuning lr.
  """
  if not scale > 0:
    raise ValueError(f'the new rows\' lr scale must be > 0, got {scale}')
  rows = np.where(np.arange(config.vocab_size) >= new_from, scale, 1.0)
  return _row_tree(config, rows, lambda top: 1.0)
