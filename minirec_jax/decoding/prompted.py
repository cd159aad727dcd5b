"""Decoding from SID prompts with the decoder's KV cache: beam search, sampling, scoring.

These glue the model-agnostic searches (`beam_search`, `sampling`) to the decoder: prefill the
left-padded prompts, then feed one SID token per row and step. Prompts are `[batch, T]` token
ids, positions and a bool mask (False on left padding), as made by
`sid_sequences.history_prompts`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from minirec_jax.decoding import beam_search
from minirec_jax.decoding import sampling
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.semantic_ids.trie import SidTrie


def _prefill(config, params, trie: SidTrie, tokens, positions, mask, rows_per_prompt: int):
  logits, cache = decoder_lib.prefill(config, params, tokens, positions, mask,
                                      max_len=tokens.shape[1] + trie.num_levels)
  next_position = jnp.repeat(positions[:, -1] + 1, rows_per_prompt)

  def logits_fn(cache, token, level):
    return decoder_lib.decode_step(config, params, cache, token, next_position + level)

  return logits, cache, logits_fn


def beam_search_prompts(config: decoder_lib.DecoderConfig, params, trie: SidTrie, tokens,
                        positions, mask, *, beam_size: int,
                        sid_offset: int) -> beam_search.BeamResult:
  """The `beam_size` most probable catalogue SIDs after each prompt (trie leaves as items)."""
  logits, cache, logits_fn = _prefill(config, params, trie, tokens, positions, mask, beam_size)
  return beam_search.constrained_beam_search(logits, cache, logits_fn,
                                             decoder_lib.reorder_cache, trie,
                                             beam_size=beam_size, sid_offset=sid_offset)


def sample_prompts(config: decoder_lib.DecoderConfig, params, trie: SidTrie, tokens, positions,
                   mask, rng, *, num_samples: int, sid_offset: int,
                   temperature: float = 1.0) -> sampling.SampleResult:
  """`num_samples` trie-masked ancestral samples per prompt."""
  logits, cache, logits_fn = _prefill(config, params, trie, tokens, positions, mask, num_samples)
  return sampling.masked_sample(logits, cache, logits_fn, decoder_lib.reorder_cache, trie, rng,
                                num_samples=num_samples, sid_offset=sid_offset,
                                temperature=temperature)


def completion_log_probs(config: decoder_lib.DecoderConfig, params, tokens, positions, mask,
                         completion) -> jax.Array:
  """Teacher-forced log p(completion token l | prompt, earlier completion tokens).

  Args:
    tokens, positions, mask: prompts `[rows, T]`.
    completion: `[rows, L]` token ids following each prompt.
  Returns:
    float32 `[rows, L]` (log-softmax over the full vocabulary).
  """
  num = completion.shape[1]
  full = jnp.concatenate([tokens, completion], axis=1)
  full_pos = jnp.concatenate([positions, positions[:, -1:] + 1 + jnp.arange(num)[None]], axis=1)
  valid = jnp.concatenate([mask, jnp.ones_like(completion, bool)], axis=1)
  seq = full.shape[1]
  attn = jnp.tril(jnp.ones((seq, seq), bool))[None] & valid[:, None, :]
  logits = decoder_lib.Decoder(config).apply({'params': params}, full, full_pos, attn)
  log_probs = jax.nn.log_softmax(logits[:, -num - 1:-1].astype(jnp.float32))
  return jnp.take_along_axis(log_probs, completion[..., None], axis=-1)[..., 0]
