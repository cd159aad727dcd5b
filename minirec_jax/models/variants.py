"""Named model sizes, so a width sweep is one flag (`--config.model.variant=M`).

Widths grow by ~1.5x per step; head_dim is 64 from S up (32 for tiny); GQA with 2 KV heads
up to L; MLP width ~ 8/3 x width rounded to 64 (SwiGLU keeps the parameter count of a 4x MLP).
`width=`/`depth=` overrides rescale any of them (see `decoder_config`). The 'qwen2.5-*'
entries are the published Qwen2.5 shapes (HF config.json) and 'smollm2-135m' SmolLM2-135M's
(a Llama: no q/k/v bias), for loading those checkpoints (checkpoints.py).

'<size>-moe8' is <size> with 8 SwiGLU experts, 2 per token, each half as wide as the dense MLP:
the same active parameters (plus a width x 8 router per layer), 4x the MLP parameters.
"""

from __future__ import annotations

import dataclasses

from minirec_jax.models.decoder import DecoderConfig

_QWEN2 = dict(rope_theta=1e6, rms_eps=1e-6, qkv_bias=True, tie_embeddings=True, max_len=32768)
_SMOLLM2 = dict(rope_theta=1e5, rms_eps=1e-5, qkv_bias=False, tie_embeddings=True, max_len=8192)

VARIANTS = {
    #            width depth heads kv  mlp
    'tiny': dict(width=32, depth=2, num_heads=4, num_kv_heads=2, mlp_dim=64),
    'XS': dict(width=128, depth=2, num_heads=2, num_kv_heads=1, mlp_dim=384),
    'S': dict(width=256, depth=4, num_heads=4, num_kv_heads=2, mlp_dim=704),
    'M': dict(width=384, depth=4, num_heads=6, num_kv_heads=2, mlp_dim=1024),
    'L': dict(width=512, depth=6, num_heads=8, num_kv_heads=2, mlp_dim=1408),
    'XL': dict(width=768, depth=8, num_heads=12, num_kv_heads=4, mlp_dim=2048),
    'XXL': dict(width=1024, depth=8, num_heads=16, num_kv_heads=4, mlp_dim=2752),
    # Qwen2.5 (vocab 151,936 in the checkpoints; passed separately like every variant).
    'qwen2.5-0.5b': dict(width=896, depth=24, num_heads=14, num_kv_heads=2, mlp_dim=4864,
                         **_QWEN2),
    'qwen2.5-1.5b': dict(width=1536, depth=28, num_heads=12, num_kv_heads=2, mlp_dim=8960,
                         **_QWEN2),
    # SmolLM2-135M(-Instruct), vocab 49,152.
    'smollm2-135m': dict(width=576, depth=30, num_heads=9, num_kv_heads=3, mlp_dim=1536,
                         **_SMOLLM2),
}

QWEN2_5_VOCAB = 151_936
SMOLLM2_VOCAB = 49_152
_MOE_SIZES = ('tiny', 'XS', 'S', 'M', 'L', 'XL', 'XXL')


def _moe(dense: dict, num_experts: int, experts_per_token: int) -> dict:
  """The dense shape with its MLP split over the experts_per_token active experts."""
  return dict(dense, num_experts=num_experts, experts_per_token=experts_per_token,
              mlp_dim=dense['mlp_dim'] // experts_per_token)


VARIANTS.update({f'{size}-moe8': _moe(VARIANTS[size], 8, 2) for size in _MOE_SIZES})


def decoder_config(variant: str, vocab_size: int, **overrides) -> DecoderConfig:
  """The variant's config with `overrides` (any DecoderConfig field) applied.

  Overriding `width` without `num_heads` keeps the variant's head_dim: heads become
  width // head_dim, KV heads stay if they still divide them (else 1), and mlp_dim becomes
  ~8/3 x width (rounded to 64) unless given, divided by experts_per_token for a MoE (so the
  active parameters stay those of the dense model). Overriding num_experts alone keeps
  mlp_dim as the per-expert width.

  Raises:
    ValueError: unknown variant or field, or an inconsistent result.
  """
  if variant not in VARIANTS:
    raise ValueError(f'unknown model variant {variant!r}; choose one of {sorted(VARIANTS)}')
  fields = dict(VARIANTS[variant])
  overrides = dict(overrides)
  if 'width' in overrides and 'num_heads' not in overrides:
    head_dim = fields['width'] // fields['num_heads']
    overrides['num_heads'] = max(1, overrides['width'] // head_dim)
    kv = overrides.get('num_kv_heads', fields['num_kv_heads'])
    overrides['num_kv_heads'] = kv if overrides['num_heads'] % kv == 0 else 1
    merged = {**fields, **overrides}
    active = (merged.get('experts_per_token', DecoderConfig.experts_per_token)
              if merged.get('num_experts') else 1)
    overrides.setdefault('mlp_dim',
                         max(64, round(overrides['width'] * 8 / 3 / 64) * 64) // active)
  fields.update(overrides)
  known = {f.name for f in dataclasses.fields(DecoderConfig)} - {'vocab_size'}
  unknown = set(fields) - known
  if unknown:
    raise ValueError(f'unknown decoder fields {sorted(unknown)}; known: {sorted(known)}')
  return DecoderConfig(vocab_size=vocab_size, **fields)
