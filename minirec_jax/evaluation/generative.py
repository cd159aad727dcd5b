"""Evaluating and serving the generative recommender: trie-constrained beam search.

For every sample the prompt is its last <= `prompt_items` history items as SID tokens (or a
language model's text prompt of them, `Recommender.prompt_fn`); the model
generates `beam_size` distinct catalogue SIDs ranked by log-probability, reading the SID token
ids (and the terminator a language model ends a SID with) from the recommender's token map.
Each SID then stands for its items (several when items share a SID, most popular first:
`item_lists`), so the model's output is a ranked item list. Metrics come at both levels of
`item_lists`: item level ('hr@K', ...: the item list, primary) and SID level ('sid_hr@K', ...:
the target's SID among the generated SIDs, the official metric). Also reports the perplexity
of the target SID (its L SID tokens; a terminator is not scored).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from typing import Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.data import pipeline
from minirec_jax.data import seq2seq
from minirec_jax.data import sid_sequences
from minirec_jax.decoding import encoder_decoder as seq2seq_decoding
from minirec_jax.decoding import prompted
from minirec_jax.evaluation import item_lists
from minirec_jax.evaluation import predictions
from minirec_jax.evaluation import ranking
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import encoder_decoder
from minirec_jax.semantic_ids import catalogue as catalogue_lib
from minirec_jax.semantic_ids import trie as trie_lib


@functools.partial(jax.jit, static_argnames=('config', 'beam_size'))
def generate(config: decoder_lib.DecoderConfig, params, trie: trie_lib.SidTrie,
             group_items: jax.Array, tokens: jax.Array, positions: jax.Array, mask: jax.Array,
             *, beam_size: int,
             token_map: sid_sequences.SidTokenMap) -> tuple[jax.Array, jax.Array]:
  """Prompts `[batch, T]` -> (item ids int32 `[batch, beam]`, log-probs `[batch, beam]`).

  `group_items[leaf]` maps a trie leaf to its representative item; -1 marks missing beams.
  Log-probs include the token map's terminator tokens (see decoding/beam_search.py).
  """
  chex.assert_equal_shape([tokens, positions, mask])
  result = prompted.beam_search_prompts(config, params, trie, tokens, positions, mask,
                                        beam_size=beam_size, token_map=token_map)
  items = jnp.where(result.items >= 0, group_items[jnp.maximum(result.items, 0)], -1)
  return items, result.scores


target_log_probs = jax.jit(prompted.completion_log_probs, static_argnames=('config',))


@functools.partial(jax.jit, static_argnames=('config', 'beam_size'))
def generate_seq2seq(config: encoder_decoder.EncoderDecoderConfig, params,
                     trie: trie_lib.SidTrie, group_items: jax.Array, enc_tokens: jax.Array,
                     enc_mask: jax.Array, *, beam_size: int,
                     token_map: sid_sequences.SidTokenMap) -> tuple[jax.Array, jax.Array]:
  """`generate` for the encoder-decoder: encoder inputs `[batch, S]` -> (item ids, log-probs)
  `[batch, beam]`."""
  result = seq2seq_decoding.beam_search(config, params, trie, enc_tokens, enc_mask,
                                        beam_size=beam_size, token_map=token_map)
  items = jnp.where(result.items >= 0, group_items[jnp.maximum(result.items, 0)], -1)
  return items, result.scores


seq2seq_target_log_probs = jax.jit(seq2seq_decoding.completion_log_probs,
                                   static_argnames=('config',))


@dataclasses.dataclass(eq=False)
class Recommender:
  """A trained decoder plus the SID catalogue: histories in, ranked items out.

  `popularity` `[num_items]` (e.g. `item_lists.train_popularity`) orders the items that share
  a SID. `token_map` gives the decoder's SID token ids (and terminator): None means our SID-only
  vocabulary (`sid_sequences.SidVocab`); a language model extended with SID tokens passes its
  own (`models.vocab_extension`), and its `prompt_fn` (history `[batch, H]`, history_len
  `[batch]`) -> tokens, positions, mask `[batch, T]` (e.g. `llm_tasks.NextSidPrompts`); None
  prompts with the last `prompt_items` items' SID tokens.
  """

  config: decoder_lib.DecoderConfig
  sids: catalogue_lib.SidCatalogue
  prompt_items: int
  popularity: np.ndarray
  token_map: sid_sequences.SidTokenMap | None = None
  prompt_fn: Callable[[np.ndarray, np.ndarray], dict[str, np.ndarray]] | None = None

  def __post_init__(self):
    if self.token_map is None:
      self.token_map = sid_sequences.SidVocab(self.sids.num_levels,
                                              self.sids.codebook_size).token_map
    # On the host, once: inside the jitted search the table is traced and cannot be checked.
    self.item_tokens = self.token_map.item_tokens(self.sids.codes)
    if self.token_map.max_id() >= self.config.vocab_size:
      raise ValueError(f'token id {self.token_map.max_id()} of the token map is outside the '
                       f'decoder vocabulary of {self.config.vocab_size}')
    groups = np.unique(self.sids.item_to_group)
    self.trie = trie_lib.build_trie(self.sids.codes[groups], self.sids.codebook_size)
    self.group_items = jnp.asarray(groups, jnp.int32)
    self.members = item_lists.members_by_popularity(self.sids.item_to_group, self.popularity)

  def prompts(self, history: np.ndarray, history_len: np.ndarray) -> dict[str, np.ndarray]:
    if self.prompt_fn is not None:
      return self.prompt_fn(history, history_len)
    return sid_sequences.history_prompts(history, history_len, self.item_tokens,
                                         self.prompt_items)

  def recommend(self, params, history: np.ndarray, history_len: np.ndarray,
                k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-k item ids `[batch, k]` (best first; -1 where fewer) and their SIDs' log-probs for
    padded histories: the top-k SIDs, each expanded into its items, cut at k items."""
    p = self.prompts(np.asarray(history), np.asarray(history_len))
    items, scores = item_lists.expand(*self.rank(params, p, k), members=self.members)
    return items[:, :k], scores[:, :k]

  def target_log_probs(self, params, prompts: dict[str, np.ndarray],
                       completion: np.ndarray) -> jax.Array:
    """log p(completion token l | prompt, earlier ones) `[batch, L]`."""
    return target_log_probs(self.config, params, prompts['tokens'], prompts['positions'],
                            prompts['mask'], completion)

  def rank(self, params, prompts: dict[str, np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
    """The top-k SIDs for prompts made by `prompts`, as group ids (`sids.item_to_group`
    values) `[batch, k]` (-1: no SID left) and their log-probs `[batch, k]`."""
    items, scores = generate(self.config, params, self.trie, self.group_items,
                             prompts['tokens'], prompts['positions'], prompts['mask'],
                             beam_size=k, token_map=self.token_map)
    return np.asarray(items), np.asarray(scores)


@dataclasses.dataclass(eq=False)
class Seq2SeqRecommender(Recommender):
  """The encoder-decoder (TIGER) as a `Recommender`: the history's SID tokens are the encoder
  input (`data/seq2seq.py`), the SID is decoded under the same trie. A config with user
  tokens needs each row's user id (`prompts(..., users=)`), which `recommend` does not have."""

  def prompts(self, history: np.ndarray, history_len: np.ndarray,
              users=None) -> dict[str, np.ndarray]:
    return seq2seq.history_encoder_inputs(
        history, history_len, self.item_tokens, self.prompt_items, user_ids=users,
        num_user_buckets=self.config.num_user_buckets, vocab_size=self.config.vocab_size)

  def target_log_probs(self, params, prompts, completion):
    return seq2seq_target_log_probs(self.config, params, prompts['enc_tokens'],
                                    prompts['enc_mask'], completion)

  def rank(self, params, prompts, k):
    items, scores = generate_seq2seq(self.config, params, self.trie, self.group_items,
                                     prompts['enc_tokens'], prompts['enc_mask'], beam_size=k,
                                     token_map=self.token_map)
    return np.asarray(items), np.asarray(scores)


@dataclasses.dataclass
class EvalResult:
  metrics: dict[str, float]
  predictions: list[dict]


def params_fingerprint(params) -> float:
  """A float64 sum over every parameter: tells apart the parameters a partial evaluation was
  made with from others (a resumed run must evaluate the same checkpoint)."""
  return float(sum(np.asarray(leaf, np.float64).sum() for leaf in jax.tree.leaves(params)))


class _PartialEvaluation:
  """The running sums of an evaluation, saved to `path` at most every `every_s` seconds
  (atomically) so that a killed evaluation resumes after its last saved batch with identical
  results; `path=None` keeps nothing."""

  def __init__(self, path: str | None, header: dict, every_s: float):
    self.path, self.header, self.every_s = path, header, every_s
    self.batches, self.token_nll, self.totals, self.rows = 0, 0.0, {}, []
    self.last_save = time.monotonic()
    if path and os.path.isfile(path):
      with open(path, encoding='utf-8') as f:
        state = json.load(f)
      if state['header'] != header:
        raise ValueError(f'{path}: a partial evaluation of another run (field header: '
                         f'{state["header"]} != {header}); delete it to start over')
      self.batches, self.token_nll, self.rows = (state['batches'], state['token_nll'],
                                                 state['rows'])
      self.totals = {level: ranking.RankCounts(np.asarray(c['hits_at'], np.int64), c['count'])
                     for level, c in state['totals'].items()}

  def add(self, totals, token_nll: float, rows: list[dict]) -> None:
    self.batches += 1
    self.totals = item_lists.add_counts(self.totals, totals)
    self.token_nll += token_nll
    self.rows.extend(rows)
    if self.path and time.monotonic() - self.last_save >= self.every_s:
      io_utils.write_json(self.path, {
          'header': self.header, 'batches': self.batches, 'token_nll': self.token_nll,
          'totals': {level: {'hits_at': c.hits_at.tolist(), 'count': c.count}
                     for level, c in self.totals.items()}, 'rows': self.rows}, indent=None)
      self.last_save = time.monotonic()

  def remove(self) -> None:
    if self.path and os.path.isfile(self.path):
      os.remove(self.path)


def evaluate(recommender: Recommender, params, source, *, beam_size: int, batch_size: int,
             ks: Sequence[int], max_examples: int = 0, split: str = '',
             keep_predictions: bool = False, resume_file: str | None = None,
             save_every_s: float = 60.0) -> EvalResult:
  """HR/NDCG/MRR@K, target perplexity per token and per item, and prediction rows.

  `resume_file`: where the running sums are saved every `save_every_s` seconds; an evaluation
  of the same rows, settings and parameters (`params_fingerprint`) found there resumes after
  its saved batches, and the file is removed once the evaluation is complete.
  """
  n = min(len(source), max_examples) if max_examples else len(source)
  subset = source if n == len(source) else [source[i] for i in range(n)]
  spec = pipeline.BatchSpec(batch_size, max_history=recommender.prompt_items,
                            drop_remainder=False)
  to_group = recommender.sids.item_to_group
  ks = ranking.usable_ks(ks, beam_size)
  partial = _PartialEvaluation(resume_file, {
      'split': split, 'examples': n, 'beam_size': beam_size, 'batch_size': batch_size,
      'keep_predictions': keep_predictions,
      'params': params_fingerprint(params) if resume_file else 0.0}, save_every_s)
  batches = pipeline.batched(subset, spec)
  tracked = metric_logging.track(batches, desc=f'eval {split}', unit='batch')
  for number, batch in enumerate(tracked):
    if number < partial.batches:  # done before a restart (the batches come in a fixed order)
      continue
    valid = batch['valid']
    users = None
    if getattr(recommender.config, 'num_user_buckets', 0):  # TIGER's user tokens
      users = [subset[int(i)]['user_id'] for i in batch['index']]
    p = (recommender.prompts(batch['history'], batch['history_len']) if users is None
         else recommender.prompts(batch['history'], batch['history_len'], users=users))
    items, scores = item_lists.expand(*recommender.rank(params, p, beam_size),
                                      members=recommender.members)
    log_probs = recommender.target_log_probs(params, p,
                                             recommender.item_tokens[batch['target']])
    rows = []
    if keep_predictions:
      for r in np.flatnonzero(valid):
        index = int(batch['index'][r])
        keep = items[r] >= 0
        rows.append(predictions.make_row(subset[index]['user_id'].decode(), batch['target'][r],
                                         items[r][keep], scores[r][keep], sample_index=index,
                                         split=split))
    partial.add(item_lists.level_counts(items, batch['target'], to_group, valid=valid),
                -float(np.sum(np.asarray(log_probs) * valid[:, None])), rows)
  metrics = item_lists.level_means(partial.totals, ks, list_length=beam_size)
  metrics['ppl_token'] = float(np.exp(partial.token_nll / (n * recommender.sids.num_levels)))
  metrics['ppl_item'] = float(np.exp(partial.token_nll / n))
  metrics['examples'] = n
  partial.remove()
  return EvalResult(metrics, partial.rows)
