"""Item-text embeddings from a pretrained language model: its mean-pooled last hidden states.

`MeanPoolEncoder(spec)` is an `embeddings.Encoder` for any backbone spec of `backbones`
('smollm2-135m', 'gguf:<file>', 'hf:<folder>'): the tokenizer's ids (no special tokens, at most
`max_tokens`), one causal forward pass, the final-normed hidden states averaged over the text's
tokens and scaled to unit length (as the sentence encoders' own pipelines do). The backbone is
read on first use, so an embedding cache hit never loads it.
"""

from __future__ import annotations

import dataclasses
import functools
import os

import chex
import jax
import jax.numpy as jnp
import numpy as np

from minirec_jax.models import backbones
from minirec_jax.models import decoder as decoder_lib


def encoder_name(spec: str) -> str:
  """The embedding cache's name for `spec`: 'smollm2-135m-mean', '<file or folder>-mean'."""
  _, path = backbones.parse(spec)
  return f'{os.path.basename(os.path.normpath(path)) if path else spec}-mean'


@dataclasses.dataclass(eq=False)
class MeanPoolEncoder:
  """A backbone as a text encoder (`embeddings.Encoder`): `tokenize`, then `encode_batch`."""

  spec: str
  max_tokens: int = 256

  def __post_init__(self):
    self.name = encoder_name(self.spec)  # also checks the spec before anything is loaded

  @functools.cached_property
  def _backbone(self) -> backbones.Backbone:
    backbone = backbones.load(self.spec)
    return backbone._replace(params=jax.tree.map(jnp.asarray, backbone.params))

  @property
  def hidden(self) -> int:
    return self._backbone.config.width

  def tokenize(self, texts: list[str]) -> list[list[int]]:
    """Each text's token ids, its first `max_tokens`."""
    ids = self._backbone.tokenizer.encode_batch(texts, add_special_tokens=False)
    empty = [i for i, row in enumerate(ids) if not row]
    if empty:
      raise ValueError(f'{len(empty)} texts have no tokens to embed (first: text {empty[0]})')
    return [row[:self.max_tokens] for row in ids]

  def encode_batch(self, ids: np.ndarray, mask: np.ndarray) -> jax.Array:
    """`[batch, seq]` int32 ids + bool mask (right padding) -> unit `[batch, width]` float32."""
    return _mean_pool(self._backbone.config, self._backbone.params, ids, mask)


@functools.partial(jax.jit, static_argnums=0)
def _mean_pool(config: decoder_lib.DecoderConfig, params, ids: jax.Array,
               mask: jax.Array) -> jax.Array:
  chex.assert_equal_shape([ids, mask])
  positions = jnp.broadcast_to(jnp.arange(ids.shape[1]), ids.shape)
  hidden = decoder_lib.Decoder(config).apply(
      {'params': params}, ids, positions, decoder_lib.causal_mask(mask), causal=True,
      hidden_only=True)
  weights = mask.astype(jnp.float32)[..., None]
  pooled = (hidden * weights).sum(1) / jnp.maximum(weights.sum(1), 1.0)
  return pooled / jnp.maximum(jnp.linalg.norm(pooled, axis=-1, keepdims=True), 1e-12)
