"""Decoding with the encoder-decoder (TIGER): trie-constrained beam search and target scoring.

These glue `models/encoder_decoder.py` to the model-agnostic search (`beam_search`): encode
each user's history once, feed the decoder start token (PAD, as T5 starts its decoder) to get
the first SID token's logits, then one generated token per row and step from the incremental
decoder, whose cross-attention keys/values stay once per user while the beams' self-attention
caches follow the surviving beams. Encoder inputs are `[batch, S]` tokens and a bool mask
(`data/seq2seq.py` builds them); the token map gives the SID (and terminator) token ids.
"""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp

from minirec_jax.data.seq2seq import START_TOKEN
from minirec_jax.data.sid_sequences import SidTokenMap
from minirec_jax.decoding import beam_search as beam_search_lib
from minirec_jax.models import encoder_decoder as model_lib
from minirec_jax.semantic_ids.trie import SidTrie


def _start(config: model_lib.EncoderDecoderConfig, params, enc_tokens, enc_mask, max_steps: int):
  """(first-token logits `[batch, vocab]`, cache of `batch` rows after the start token)."""
  enc_out = model_lib.encode(config, params, enc_tokens, enc_mask)
  cache = model_lib.init_decode(config, params, enc_out, enc_mask, rows_per_prompt=1,
                                max_steps=max_steps)
  start = jnp.full((enc_tokens.shape[0],), START_TOKEN, jnp.int32)
  return model_lib.decode_step(config, params, cache, start, 0)


def beam_search(config: model_lib.EncoderDecoderConfig, params, trie: SidTrie,
                enc_tokens: jax.Array, enc_mask: jax.Array, *, beam_size: int,
                token_map: SidTokenMap) -> beam_search_lib.BeamResult:
  """The `beam_size` most probable catalogue SIDs per user (trie leaves as items; jittable with
  config and beam_size static).

  Args:
    config, params: the encoder-decoder.
    trie: the catalogue's SID trie.
    enc_tokens: int `[batch, S]` encoder inputs.
    enc_mask: bool `[batch, S]`, False on padding.
    beam_size: beams per user.
    token_map: the SID token ids (and terminator) in the model's vocabulary.
  Returns:
    `beam_search.BeamResult`, best first; scores are full-vocabulary log-probs.
  """
  # Decoder inputs: the start token, then every generated token but the last.
  max_steps = trie.num_levels + len(token_map.terminator)
  first_logits, cache = _start(config, params, enc_tokens, enc_mask, max_steps)

  def logits_fn(cache, tokens, step):
    # Generated token number `step` is decoder input number step + 1 (after the start token).
    return model_lib.decode_step(config, params, cache, tokens, step + 1)

  return beam_search_lib.constrained_beam_search(first_logits, cache, logits_fn,
                                                 model_lib.reorder_cache, trie,
                                                 beam_size=beam_size, token_map=token_map)


def completion_log_probs(config: model_lib.EncoderDecoderConfig, params, enc_tokens: jax.Array,
                         enc_mask: jax.Array, completion: jax.Array) -> jax.Array:
  """Teacher-forced log p(completion token l | encoder input, earlier completion tokens).

  Each user is encoded once and its cross-attention keys/values shared by its completions.

  Args:
    enc_tokens, enc_mask: `[B, S]` encoder inputs (mask False on padding).
    completion: int `[B, L]` or `[B, G, L]` target token ids (e.g. `item_tokens[target]`).
  Returns:
    float32 log-probs of the shape of `completion` (log-softmax over the full vocabulary); their
    sum over L is the target's log-likelihood, its mean negation the log of the per-token
    perplexity.
  """
  chex.assert_rank(enc_tokens, 2)
  grouped = completion if completion.ndim == 3 else completion[:, None]
  b, g, num = grouped.shape
  chex.assert_axis_dimension(enc_tokens, 0, b)
  flat = grouped.reshape(b * g, num).astype(jnp.int32)
  dec_tokens = jnp.concatenate([jnp.full((b * g, 1), START_TOKEN, jnp.int32), flat[:, :-1]],
                               axis=1)
  enc_out = model_lib.encode(config, params, enc_tokens, enc_mask)
  logits = model_lib.decode(config, params, enc_out, enc_mask, dec_tokens)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(log_probs, flat[..., None], axis=-1)
  return picked.reshape(completion.shape)
