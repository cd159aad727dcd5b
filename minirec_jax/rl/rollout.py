"""GRPO rollouts: G candidate SIDs per prompt from the current policy, in one jitted function.

Modes: 'beam' (constrained beam search with G beams: G distinct items, the official choice),
'sample' (trie-masked ancestral sampling, may repeat items), 'dynamic' (the paper's dynamic
sampling: draw ceil(oversample*G), keep G distinct ones, the target first if drawn, topping up
with repeats only when fewer than G distinct items came out). `add_target` replaces the last
candidate by the target in groups that miss it (the official `add_gt` option).
"""

from __future__ import annotations

import functools
import math

import flax.struct
import jax
import jax.numpy as jnp

from minirec_jax.data.sid_sequences import SidTokenMap
from minirec_jax.decoding import prompted
from minirec_jax.models.decoder import DecoderConfig
from minirec_jax.semantic_ids.trie import SidTrie

MODES = ('beam', 'sample', 'dynamic')


@flax.struct.dataclass
class Rollout:
  items: jax.Array  # int32 [B, G] representative item ids (-1: missing)
  codes: jax.Array  # int32 [B, G, L]


def _dedupe_keep(items: jax.Array, targets: jax.Array, group_size: int) -> jax.Array:
  """Indices `[B, G]` into the M samples: distinct items first (the target first of all)."""
  m = items.shape[1]
  earlier = jnp.tril(jnp.ones((m, m), bool), k=-1)
  repeat = ((items[:, :, None] == items[:, None, :]) & earlier[None]).any(-1)
  priority = (2.0 * (items == targets[:, None]) + 1.0 * ~repeat
              - jnp.arange(m)[None] / (2.0 * m))  # ties: keep sample order
  return jax.lax.top_k(priority, group_size)[1]


@functools.partial(jax.jit, static_argnames=('config', 'mode', 'group_size', 'temperature',
                                             'oversample', 'add_target'))
def rollout(config: DecoderConfig, params, trie: SidTrie, tokens, positions, mask,
            targets: jax.Array, rng: jax.Array, *, mode: str, group_size: int,
            token_map: SidTokenMap, temperature: float = 1.0, oversample: float = 1.5,
            add_target: bool = False) -> Rollout:
  """Prompts `[B, T]`, targets `[B]` -> Rollout with G = group_size candidates per prompt.

  `token_map` gives the vocabulary ids of the SID tokens (and terminator) of the policy.
  """
  if mode == 'beam':
    result = prompted.beam_search_prompts(config, params, trie, tokens, positions, mask,
                                          beam_size=group_size, token_map=token_map)
    items, codes = result.items, result.codes
  elif mode in ('sample', 'dynamic'):
    draws = group_size if mode == 'sample' else math.ceil(oversample * group_size)
    result = prompted.sample_prompts(config, params, trie, tokens, positions, mask, rng,
                                     num_samples=draws, token_map=token_map,
                                     temperature=temperature)
    items, codes = result.items, result.codes
    if mode == 'dynamic':
      keep = _dedupe_keep(items, trie.item_to_group[targets], group_size)
      items = jnp.take_along_axis(items, keep, axis=1)
      codes = jnp.take_along_axis(codes, keep[..., None], axis=1)
  else:
    raise ValueError(f'unknown rollout mode {mode!r}; use one of {MODES}')
  if add_target:
    target_group = trie.item_to_group[targets]
    missing = ~(items == target_group[:, None]).any(axis=1)
    items = items.at[:, -1].set(jnp.where(missing, target_group, items[:, -1]))
    codes = codes.at[:, -1].set(jnp.where(missing[:, None], trie.codes[target_group],
                                          codes[:, -1]))
  return Rollout(items=items, codes=codes)
