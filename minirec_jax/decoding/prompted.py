"""Decoding from SID prompts with the decoder's KV cache: beam search, sampling, scoring.

These glue the model-agnostic searches (`beam_search`, `sampling`) to the decoder: prefill the
left-padded prompts, then feed one generated token (SID, then terminator) per row and step.
Prompts are `[batch, T]` token ids, positions and a bool mask (False on left padding), as made
by `sid_sequences.history_prompts` or by a language model's prompt builder; the token map says
which vocabulary ids the SID and terminator tokens have.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from minirec_jax.data.sid_sequences import SidTokenMap
from minirec_jax.decoding import beam_search
from minirec_jax.decoding import sampling
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.semantic_ids.trie import SidTrie


def _prefill(config, params, trie: SidTrie, token_map: SidTokenMap, tokens, positions, mask,
             rows_per_prompt: int):
  # Every generated token but the last is fed back: L SID tokens, then the terminator.
  fed = trie.num_levels + len(token_map.terminator) - 1
  logits, cache = decoder_lib.prefill_shared(config, params, tokens, positions, mask,
                                             gen_len=max(fed, 1))
  next_position = jnp.repeat(positions[:, -1] + 1, rows_per_prompt)

  def logits_fn(cache, token, step):
    return decoder_lib.decode_step(config, params, cache, token, next_position + step)

  return logits, cache, logits_fn


def beam_search_prompts(config: decoder_lib.DecoderConfig, params, trie: SidTrie, tokens,
                        positions, mask, *, beam_size: int,
                        token_map: SidTokenMap) -> beam_search.BeamResult:
  """The `beam_size` most probable catalogue SIDs after each prompt (trie leaves as items)."""
  logits, cache, logits_fn = _prefill(config, params, trie, token_map, tokens, positions, mask,
                                      beam_size)
  return beam_search.constrained_beam_search(logits, cache, logits_fn,
                                             decoder_lib.reorder_cache, trie,
                                             beam_size=beam_size, token_map=token_map)


def sample_prompts(config: decoder_lib.DecoderConfig, params, trie: SidTrie, tokens, positions,
                   mask, rng, *, num_samples: int, token_map: SidTokenMap,
                   temperature: float = 1.0) -> sampling.SampleResult:
  """`num_samples` trie-masked ancestral samples per prompt."""
  logits, cache, logits_fn = _prefill(config, params, trie, token_map, tokens, positions, mask,
                                      num_samples)
  return sampling.masked_sample(logits, cache, logits_fn, decoder_lib.reorder_cache, trie, rng,
                                num_samples=num_samples, token_map=token_map,
                                temperature=temperature)


def completion_log_probs(config: decoder_lib.DecoderConfig, params, tokens, positions, mask,
                         completion, *, with_entropy: bool = False):
  """Teacher-forced log p(completion token l | prompt, earlier completion tokens).

  Each prompt is read once and its KV cache shared by all of its completions, so scoring G
  candidates per prompt costs one prompt pass plus G * L tokens, not G * (T + L) (GRPO scores
  16 candidates of 3 tokens after prompts of ~30).

  Args:
    tokens, positions, mask: prompts `[B, T]` (left padding False in `mask`).
    completion: `[B, L]` or `[B, G, L]` token ids following each prompt.
  Returns:
    float32 log-probs of the shape of `completion` (log-softmax over the full vocabulary); with
    `with_entropy`, also the entropy of the next-token distribution at each of those positions
    (same shape; full vocabulary, no trie mask).
  """
  grouped = completion if completion.ndim == 3 else completion[:, None]
  b, g, num = grouped.shape
  first_logits, cache = decoder_lib.prefill_shared(config, params, tokens, positions, mask,
                                                   gen_len=max(num - 1, 1))
  first_logits = jnp.repeat(first_logits, g, axis=0)[:, None]
  if num > 1:
    cache = decoder_lib.reorder_cache(cache, jnp.repeat(jnp.arange(b), g))
    feed = grouped[:, :, :-1].reshape(b * g, num - 1)
    feed_pos = jnp.repeat(positions[:, -1:] + 1 + jnp.arange(num - 1)[None], g, axis=0)
    # Completion token j sees the whole prompt (shared prefix) and completion tokens 0..j.
    own = jnp.broadcast_to(jnp.tril(jnp.ones((num - 1, num - 1), bool)),
                           (b * g, num - 1, num - 1))
    rest, _ = decoder_lib.Decoder(config).apply({'params': params}, feed, feed_pos, own, cache)
    logits = jnp.concatenate([first_logits, rest], axis=1)
  else:
    logits = first_logits
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32))
  picked = jnp.take_along_axis(log_probs, grouped.reshape(b * g, num, 1), axis=-1)
  picked = picked.reshape(completion.shape)
  if not with_entropy:
    return picked
  entropy = -(jnp.exp(log_probs) * log_probs).sum(-1)
  return picked, entropy.reshape(completion.shape)
