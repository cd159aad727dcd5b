"""GRPO prompts of a language-model policy from MiniOneRec's three RL prompt sources.

The official RL stage (reference section 5.1) prompts with a SID history (every train row),
an item's title or description (item -> SID), or a title history (a sample of rows), as text;
`llm_tasks.rl_prompts` writes them. `prompt_pool` tokenises a selection of sources once into
fixed arrays (`pipeline.array_batches` reads them, so the loop's data state checkpoints as
usual); `bucket_prompts` cuts a batch of them to the smallest width bucket that holds its
longest prompt, so a description of 500 tokens does not pad every batch of 35-token SID
histories, and a jitted step sees at most `len(width_buckets(...))` prompt shapes.

Pool arrays (N prompts):
  tokens int32 [N, W] (left padded), length int32 [N]: prompt token ids, W the longest;
  history int32 [N, H] (PAD_ITEM after the end), history_len int32 [N]: the user's items for
    a collaborative reward (none for item-text prompts: history_len 0);
  target int32 [N]: the item whose SID is the answer; source int32 [N]: index into `sources`.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from minirec_jax.data import llm_tasks
from minirec_jax.data import pipeline
from minirec_jax.data import sid_sequences
from minirec_jax.data.schema import ItemTable
from minirec_jax.data.text_tokenizer import TextTokenizer

MIN_WIDTH = 32


def prompt_pool(rows: Sequence[Mapping], items: ItemTable, tokenizer: TextTokenizer, *,
                sources: Sequence[str], wording: str, max_history: int, max_len: int = 512,
                num_title_history: int = 10_000, seed: int = 0,
                where: str = 'rows') -> dict[str, np.ndarray]:
  """The pool arrays (module docstring) of `sources` over split `rows` ({'history',
  'target'}, histories oldest first) and the item table (with SID strings); prompts longer
  than `max_len` tokens keep their last `max_len` (counted and logged by
  `llm_tasks.tokenize_rl_prompts`)."""
  prompts = llm_tasks.rl_prompts(rows, items, sources=sources, wording=wording,
                                 num_title_history=num_title_history, seed=seed, where=where)
  ids, _ = llm_tasks.tokenize_rl_prompts(prompts, tokenizer, max_len)
  padded = sid_sequences.left_pad(ids)
  n = len(prompts)
  history = np.full((n, max_history), pipeline.PAD_ITEM, np.int32)
  history_len = np.zeros(n, np.int32)
  for i, p in enumerate(prompts):
    if p.source != 'item_text':  # origin is a row of `rows`
      items_seen = np.asarray(rows[p.origin]['history'], np.int32)[-max_history:]
      history[i, :len(items_seen)] = items_seen
      history_len[i] = len(items_seen)
  return {'tokens': padded['tokens'], 'length': np.asarray([len(x) for x in ids], np.int32),
          'history': history, 'history_len': history_len,
          'target': np.asarray([p.item for p in prompts], np.int32),
          'source': np.asarray([list(sources).index(p.source) for p in prompts], np.int32)}


def width_buckets(width: int) -> list[int]:
  """The prompt widths `bucket_prompts` uses for a pool `width` tokens wide: powers of two
  from MIN_WIDTH, the last one `width` itself."""
  buckets = [MIN_WIDTH]
  while buckets[-1] < width:
    buckets.append(buckets[-1] * 2)
  return [b for b in buckets if b < width] + [width]


def bucket_prompts(batch: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Left-padded prompts (tokens, positions, mask `[batch, w]`) of a pool batch, w the
  smallest of `width_buckets` that holds its longest prompt."""
  tokens, length = batch['tokens'], batch['length']
  width = next(b for b in width_buckets(tokens.shape[1]) if b >= int(length.max()))
  tokens = tokens[:, -width:]
  mask = np.arange(width)[None] >= (width - length)[:, None]
  positions = np.maximum(np.cumsum(mask, axis=1) - 1, 0).astype(np.int32)
  return {'tokens': tokens, 'positions': positions, 'mask': mask}
