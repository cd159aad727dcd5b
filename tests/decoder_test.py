"""The Qwen2-architecture decoder: an independent numpy HF reference, masks, KV cache, counts."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.models import attention
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.models import layers
from minirec_jax.models import variants

VOCAB = 50
SEQ = 10


def _config(**overrides):
  # A small RoPE base makes every rotary pair turn noticeably within SEQ positions.
  return variants.decoder_config('tiny', VOCAB, **{'rope_theta': 1e4, **overrides})


@functools.cache
def _random_hf_state_dict(config, seed=0):
  """Random HF-layout tensors (non-zero biases, non-unit norms) for every parameter."""
  rng = np.random.default_rng(seed)
  shapes = hf_convert.params_to_hf_state_dict(
      jax.tree.map(lambda x: np.zeros(x.shape, np.float32),
                   decoder_lib.abstract_params(config)), config)

  def draw(name, shape):
    center = 1.0 if name.endswith('norm.weight') else 0.0  # norm weights scatter around 1
    return (center + rng.normal(0.0, 0.2, shape)).astype(np.float32)

  return {name: draw(name, x.shape) for name, x in shapes.items()}


@functools.cache
def _apply_fn(config):
  """Jitted forward pass, compiled once per config and shape across tests."""
  def apply(params, tokens, positions, mask=None):
    return decoder_lib.Decoder(config).apply({'params': params}, tokens, positions, mask)

  return jax.jit(apply)


_prefill = jax.jit(decoder_lib.prefill, static_argnums=(0, 5))


def _setup(**overrides):
  config = _config(**overrides)
  params = hf_convert.params_from_hf_state_dict(_random_hf_state_dict(config), config)
  apply = _apply_fn(config)
  tokens = jax.random.randint(jax.random.key(1), (3, SEQ), 1, VOCAB)
  positions = jnp.broadcast_to(jnp.arange(SEQ), (3, SEQ))
  mask = decoder_lib.causal_mask(jnp.ones((3, SEQ), bool))
  return config, params, apply, tokens, positions, mask


def _unpadded_reference(apply, params, tokens, pad):
  """Row r's logits without its first pad[r] tokens, from one causal batch of the same shape.

  The kept tokens move to the front and the dropped ones fill the end, where causal attention
  keeps them from affecting the first SEQ - pad[r] logits.
  """
  shifted = np.stack([np.roll(np.asarray(row), -p) for row, p in zip(tokens, pad)])
  batch = shifted.shape[0]
  return apply(params, shifted, np.broadcast_to(np.arange(SEQ), (batch, SEQ)),
               decoder_lib.causal_mask(np.ones((batch, SEQ), bool)))


def _numpy_hf_forward(sd, config, tokens, positions):
  """Qwen2ForCausalLM's forward pass for one unpadded row, written from the HF definition.

  Args:
    sd: HF tensor name -> array (Linear weights `[out, in]`, y = x W^T + b).
    tokens, positions: `[s]`. Causal attention over the s tokens.
  Returns:
    float64 logits `[s, vocab]`.
  """
  c = config
  sd = {k: v.astype(np.float64) for k, v in sd.items()}
  heads, kv_heads, d, s = c.num_heads, c.num_kv_heads, c.head_dim, len(tokens)
  inv_freq = 1.0 / c.rope_theta ** (np.arange(0, d, 2) / d)
  angles = np.concatenate([positions[:, None] * inv_freq] * 2, axis=-1)  # [s, d]

  def rotary(t):  # [h, s, d]; rotate_half pairs dim i with i + d/2
    rotated = np.concatenate([-t[..., d // 2:], t[..., :d // 2]], axis=-1)
    return t * np.cos(angles) + rotated * np.sin(angles)

  def rms_norm(h, weight):
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + c.rms_eps) * weight

  def linear(h, name, bias=False):
    y = h @ sd[name + '.weight'].T
    return y + sd[name + '.bias'] if bias else y

  def split_heads(h, n):
    return h.reshape(s, n, d).transpose(1, 0, 2)

  x = sd['model.embed_tokens.weight'][tokens]
  for i in range(c.depth):
    pre = f'model.layers.{i}.'
    h = rms_norm(x, sd[pre + 'input_layernorm.weight'])
    q = rotary(split_heads(linear(h, pre + 'self_attn.q_proj', c.qkv_bias), heads))
    k = rotary(split_heads(linear(h, pre + 'self_attn.k_proj', c.qkv_bias), kv_heads))
    v = split_heads(linear(h, pre + 'self_attn.v_proj', c.qkv_bias), kv_heads)
    k, v = np.repeat(k, heads // kv_heads, axis=0), np.repeat(v, heads // kv_heads, axis=0)
    scores = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    scores = np.where(np.tril(np.ones((s, s), bool)), scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    attn = (probs @ v).transpose(1, 0, 2).reshape(s, heads * d)
    x = x + linear(attn, pre + 'self_attn.o_proj')
    h = rms_norm(x, sd[pre + 'post_attention_layernorm.weight'])
    gate, up = linear(h, pre + 'mlp.gate_proj'), linear(h, pre + 'mlp.up_proj')
    x = x + linear(gate / (1.0 + np.exp(-gate)) * up, pre + 'mlp.down_proj')
  x = rms_norm(x, sd['model.norm.weight'])
  head = sd['model.embed_tokens.weight'] if c.tie_embeddings else sd['lm_head.weight']
  return x @ head.T


@pytest.mark.parametrize('tie,qkv_bias', [(True, True), (False, False)])
def test_matches_numpy_hf_reference(tie, qkv_bias):
  config = _config(tie_embeddings=tie, qkv_bias=qkv_bias)
  sd = _random_hf_state_dict(config, seed=3)
  params = hf_convert.params_from_hf_state_dict(sd, config)
  tokens = np.array([[4, 17, 9, 33, 2, 41, 8]])
  positions = np.arange(7)[None] + 5  # RoPE must use the given positions, not the index
  logits = _apply_fn(config)(params, tokens, positions)
  want = _numpy_hf_forward(sd, config, tokens[0], positions[0])
  assert logits.shape == (1, 7, VOCAB) and logits.dtype == jnp.float32
  assert np.abs(want).max() > 1.0  # the weights are large enough to make the test sharp
  np.testing.assert_allclose(logits[0], want, atol=2e-5, rtol=1e-5)


def test_parameter_names_and_shapes_follow_hf():
  config, params, *_ = _setup()
  assert jax.tree.leaves(params)[0].dtype == np.float32
  hf = hf_convert.params_to_hf_state_dict(params, config)
  assert hf['model.layers.1.self_attn.q_proj.weight'].shape == (32, 32)   # [out, in]
  assert hf['model.layers.1.self_attn.k_proj.weight'].shape == (16, 32)   # 2 KV heads of 8
  assert hf['model.layers.0.mlp.down_proj.weight'].shape == (32, 64)
  assert 'model.layers.0.self_attn.o_proj.bias' not in hf
  assert 'lm_head.weight' not in hf  # tied
  assert len(hf) == 2 + 2 * 12  # embed, final norm; per layer 4 proj + 3 biases + 3 mlp + 2 norms


def test_default_mask_is_causal_and_future_tokens_do_not_change_past_logits():
  config, params, apply, tokens, positions, mask = _setup()
  logits = apply(params, tokens, positions, mask)
  assert logits.shape == (3, SEQ, VOCAB)
  default = apply(params, tokens, positions)
  np.testing.assert_allclose(default, logits, atol=1e-5, rtol=1e-5)
  changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % VOCAB)
  other = apply(params, changed, positions, mask)
  np.testing.assert_allclose(logits[:, :6], other[:, :6], atol=1e-6)
  assert np.abs(logits[:, 6:] - other[:, 6:]).min(axis=-1).max() > 1e-3


def test_custom_mask_hides_keys():
  _, params, apply, tokens, positions, mask = _setup()
  blocked = mask.at[:, :, 2].set(False).at[:, 2, 2].set(True)  # only token 2 sees itself
  changed = tokens.at[:, 2].set((tokens[:, 2] + 1) % VOCAB)
  logits, other = apply(params, tokens, positions, blocked), apply(params, changed, positions,
                                                                      blocked)
  keep = np.r_[0:2, 3:SEQ]
  np.testing.assert_array_equal(logits[:, keep], other[:, keep])
  assert not np.allclose(logits[:, 2], other[:, 2])


def test_window_mask_limits_receptive_field_per_layer():
  """Keys within the last 3 positions only: with 2 layers, token 2 reaches queries 2..6."""
  _, params, apply, tokens, positions, mask = _setup()
  offset = np.arange(SEQ)[:, None] - np.arange(SEQ)[None]
  window = mask & jnp.asarray((offset < 3))[None]
  changed = tokens.at[:, 2].set((tokens[:, 2] + 1) % VOCAB)
  diff = np.abs(apply(params, tokens, positions, window) -
                apply(params, changed, positions, window)).max(axis=(0, 2))
  np.testing.assert_array_equal(diff[np.r_[0:2, 7:SEQ]], 0.0)
  assert (diff[2:7] > 1e-4).all()


def test_left_padding_matches_unpadded_rows():
  _, params, apply, tokens, _, _ = _setup()
  pad = np.array([0, 2, 5])
  valid = np.arange(SEQ)[None] >= pad[:, None]
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
  padded = jnp.where(valid, tokens, 0)
  logits = apply(params, padded, positions, decoder_lib.causal_mask(valid))
  assert np.isfinite(logits).all()  # fully masked padding rows stay finite
  alone = _unpadded_reference(apply, params, tokens, pad)
  for row in range(3):
    np.testing.assert_allclose(logits[row, pad[row]:], alone[row, :SEQ - pad[row]], atol=1e-5,
                               rtol=1e-5)


def test_gqa_equals_multi_head_attention_with_repeated_kv():
  """kv_heads=2 of 4 heads == 4 KV heads where query head h has KV head h // 2's weights."""
  gqa, params, apply, tokens, positions, mask = _setup()
  mha = _config(num_kv_heads=4)
  sd = hf_convert.params_to_hf_state_dict(params, gqa)
  for name in list(sd):
    if '.k_proj.' in name or '.v_proj.' in name:  # rows are [kv_head, head_dim] blocks
      blocks = sd[name].reshape(gqa.num_kv_heads, gqa.head_dim, *sd[name].shape[1:])
      sd[name] = np.repeat(blocks, 2, axis=0).reshape(-1, *sd[name].shape[1:])
  mha_params = hf_convert.params_from_hf_state_dict(sd, mha)
  want = _apply_fn(mha)(mha_params, tokens, positions, mask)
  np.testing.assert_allclose(apply(params, tokens, positions, mask), want, atol=1e-5, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params_and_logits():
  config, params, apply, tokens, positions, mask = _setup()
  bf16 = _config(dtype='bfloat16')
  bf16_params = decoder_lib.abstract_params(bf16)
  assert {x.dtype for x in jax.tree.leaves(bf16_params)} == {np.dtype(np.float32)}
  logits = _apply_fn(bf16)(params, tokens, positions, mask)
  assert logits.dtype == jnp.float32
  want = apply(params, tokens, positions, mask)
  scale = float(np.abs(want).max())
  assert 0 < np.abs(logits - want).max() < 0.05 * scale  # bf16 rounding, not a different model
  cache = _prefill(bf16, params, tokens, positions, jnp.ones((3, SEQ), bool), 12)[1]
  assert cache.k.dtype == jnp.bfloat16


@pytest.mark.parametrize('tie', [True, False])
def test_prefill_and_decode_match_full_forward_with_left_padding(tie):
  config, params, apply, tokens, _, _ = _setup(tie_embeddings=tie)
  prompt_len, steps = 7, SEQ - 7
  pad = np.array([0, 3, 5])  # per-row left padding of the prompts
  prompt_mask = np.arange(prompt_len)[None] >= pad[:, None]
  positions = np.maximum(np.cumsum(prompt_mask, 1) - 1, 0)
  prompt = jnp.where(prompt_mask, tokens[:, :prompt_len], 0)
  logits, cache = _prefill(config, params, prompt, positions, prompt_mask, SEQ)
  assert cache.k.shape == (2, 3, SEQ, 2, 8) and int(cache.index) == prompt_len
  step = jax.jit(functools.partial(decoder_lib.decode_step, config))
  outs = [logits]
  for j in range(steps):
    logits, cache = step(params, cache, tokens[:, prompt_len + j], positions[:, -1] + 1 + j)
    outs.append(logits)
  assert bool(cache.valid[:, prompt_len:].all())
  full = _unpadded_reference(apply, params, tokens, pad)
  for row in range(3):
    for j in range(steps + 1):
      np.testing.assert_allclose(outs[j][row], full[row, prompt_len - pad[row] - 1 + j],
                                 atol=1e-5, rtol=1e-5)


def test_shared_prefix_cache_matches_a_repeated_prompt_cache():
  config, params, _, tokens, _, _ = _setup()
  prompt_len, group, steps = 7, 2, 3
  pad = np.array([0, 3, 5])
  prompt_mask = jnp.asarray(np.arange(prompt_len)[None] >= pad[:, None])
  positions = jnp.maximum(jnp.cumsum(prompt_mask, 1) - 1, 0)
  prompt = jnp.where(prompt_mask, tokens[:, :prompt_len], 0)
  first, shared = decoder_lib.prefill_shared(config, params, prompt, positions, prompt_mask,
                                             gen_len=steps)
  assert shared.prefix_k.shape == (2, 3, prompt_len, 2, 8) and shared.k.shape[2] == steps
  rep = lambda x: jnp.repeat(x, group, axis=0)
  first_ref, plain = decoder_lib.prefill(config, params, rep(prompt), rep(positions),
                                         rep(prompt_mask), prompt_len + steps)
  np.testing.assert_allclose(rep(first), first_ref, atol=1e-5, rtol=1e-5)
  shared = decoder_lib.reorder_cache(shared, jnp.repeat(jnp.arange(3), group))
  rng = np.random.default_rng(0)
  for j in range(steps):
    # Rows follow other rows of the same prompt, as beams do.
    rows = jnp.asarray(np.repeat(np.arange(3), group) * group
                       + rng.integers(0, group, 3 * group))
    shared, plain = (decoder_lib.reorder_cache(c, rows) for c in (shared, plain))
    fed = jnp.asarray(rng.integers(1, VOCAB, 3 * group), jnp.int32)
    pos = rep(positions[:, -1]) + 1 + j
    got, shared = decoder_lib.decode_step(config, params, shared, fed, pos)
    want, plain = decoder_lib.decode_step(config, params, plain, fed, pos)
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize('tie', [True, False])
def test_output_rows_score_only_those_rows_and_renormalise_over_them(tie):
  config, params, apply, tokens, positions, mask = _setup(tie_embeddings=tie)
  rows = (2, 5, 6, 17, 49)
  restricted = dataclasses.replace(config, output_rows=rows)
  # Same parameters: restricting the head adds or drops none.
  init = lambda c: jax.tree.map(np.shape, decoder_lib.abstract_params(c))
  assert init(restricted) == init(config)
  full = apply(params, tokens, positions, mask)
  got = _apply_fn(restricted)(params, tokens, positions, mask)
  others = np.setdiff1d(np.arange(VOCAB), rows)
  np.testing.assert_allclose(got[..., rows], full[..., rows], atol=1e-5, rtol=1e-5)
  assert np.all(np.asarray(got)[..., others] == decoder_lib.UNSCORED_LOGIT)
  np.testing.assert_allclose(jax.nn.log_softmax(got)[..., rows],
                             jax.nn.log_softmax(full[..., rows]), atol=1e-5, rtol=1e-5)
  # At head positions and in cached decoding too.
  at = jnp.array([[1, 4], [0, 9], [3, 3]])
  picked = decoder_lib.Decoder(restricted).apply({'params': params}, tokens, positions, mask,
                                                 head_positions=at)
  np.testing.assert_allclose(picked, jnp.take_along_axis(got, at[..., None], 1), atol=1e-5)
  first, cache = _prefill(restricted, params, tokens[:, :4], positions[:, :4],
                          jnp.ones((3, 4), bool), SEQ)
  np.testing.assert_allclose(first, got[:, 3], atol=1e-5)
  step, _ = decoder_lib.decode_step(restricted, params, cache, tokens[:, 4], positions[:, 4])
  np.testing.assert_allclose(step, got[:, 4], atol=1e-5)
  # The head's FLOPs are those of the scored rows.
  flops = decoder_lib.flops_per_token(restricted, 16)
  assert flops['train_head_flops_per_token'] == 6 * config.width * len(rows)
  assert (decoder_lib.flops_per_token(config, 16)['forward_flops_per_token']
          - flops['forward_flops_per_token'] == 2 * config.width * (VOCAB - len(rows)))


def test_output_rows_must_be_sorted_unique_vocabulary_ids():
  for rows in ((3, 2), (2, 2), (-1, 4), (4, VOCAB)):
    with pytest.raises(ValueError, match='output_rows must be sorted unique ids'):
      _config(output_rows=rows)


def test_reorder_cache_gathers_rows():
  config, params, _, tokens, positions, _ = _setup()
  _, cache = _prefill(config, params, tokens, positions, jnp.ones((3, SEQ), bool), 12)
  rows = jnp.array([2, 2, 0])
  moved = decoder_lib.reorder_cache(cache, rows)
  np.testing.assert_array_equal(moved.k[:, 1], cache.k[:, 2])
  np.testing.assert_array_equal(moved.v[:, 2], cache.v[:, 0])
  np.testing.assert_array_equal(moved.valid, cache.valid[np.array([2, 2, 0])])
  assert int(moved.index) == SEQ


def test_hf_state_dict_round_trip_and_errors():
  config, params, apply, tokens, positions, mask = _setup(tie_embeddings=False)
  hf = hf_convert.params_to_hf_state_dict(params, config)
  assert hf['lm_head.weight'].shape == (VOCAB, 32)
  back = hf_convert.params_from_hf_state_dict(hf, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  np.testing.assert_array_equal(apply(back, tokens, positions, mask),
                                apply(params, tokens, positions, mask))
  missing = {k: v for k, v in hf.items() if k != 'model.layers.1.mlp.up_proj.weight'}
  with pytest.raises(ValueError, match='no tensor .*layers.1.mlp.up_proj'):
    hf_convert.params_from_hf_state_dict(missing, config)
  with pytest.raises(ValueError, match=r'q_proj.weight.* has shape \(32, 16\)'):
    bad = dict(hf, **{'model.layers.0.self_attn.q_proj.weight': np.zeros((16, 32))})
    hf_convert.params_from_hf_state_dict(bad, config)
  tied = _config()
  with pytest.raises(ValueError, match="'lm_head.weight' has no place"):
    hf_convert.params_from_hf_state_dict(hf, tied)  # a separate head would be dropped
  hf['lm_head.weight'] = hf['model.embed_tokens.weight']  # tied checkpoints may store a copy
  hf['model.layers.0.self_attn.rotary_emb.inv_freq'] = np.ones(4)
  hf_convert.params_from_hf_state_dict(hf, tied)


def test_parameter_counts_of_real_shapes():
  qwen05 = decoder_lib.count_params(
      variants.decoder_config('qwen2.5-0.5b', variants.QWEN2_5_VOCAB))
  # Published as 0.49B total / 0.36B non-embedding; exact figure from the HF config.json shapes.
  assert qwen05 == {'params': 494_032_768, 'embedding_params': 151_936 * 896,
                    'non_embedding_params': 357_898_112,
                    'active_non_embedding_params': 357_898_112}
  qwen15 = decoder_lib.count_params(
      variants.decoder_config('qwen2.5-1.5b', variants.QWEN2_5_VOCAB))
  assert qwen15['params'] == 1_543_714_304  # published as 1.54B (1.31B non-embedding)
  untied = decoder_lib.count_params(_config(tie_embeddings=False))
  assert untied['embedding_params'] == 2 * VOCAB * 32


def test_width_override_and_flops():
  small = variants.decoder_config('S', 1000)
  wide = variants.decoder_config('S', 1000, width=512)
  assert wide.head_dim == small.head_dim == 64 and wide.num_heads == 8
  assert wide.num_kv_heads == 2 and wide.mlp_dim == 1344
  assert variants.decoder_config('S', 1000, depth=7).depth == 7
  assert (decoder_lib.count_params(wide)['non_embedding_params'] >
          3 * decoder_lib.count_params(small)['non_embedding_params'])
  c = _config()  # width 32, depth 2, 4 heads / 2 KV heads of 8, mlp 64, vocab 50
  attn, mlp = 32 * 8 * (2 * 4 + 2 * 2), 3 * 32 * 64
  forward = 2 * (2 * (attn + mlp) + 32 * VOCAB) + 4 * 2 * 16 * 4 * 8
  assert decoder_lib.flops_per_token(c, 16) == {'forward_flops_per_token': forward,
                                                'train_flops_per_token': 3 * forward,
                                                'train_head_flops_per_token': 6 * 32 * VOCAB}


def test_config_errors():
  with pytest.raises(ValueError, match='unknown model variant'):
    variants.decoder_config('XXXL', 10)
  with pytest.raises(ValueError, match='unknown decoder fields'):
    variants.decoder_config('tiny', 10, hidden=3)
  with pytest.raises(ValueError, match='multiple of num_kv_heads'):
    variants.decoder_config('tiny', 10, num_kv_heads=3)
  with pytest.raises(ValueError, match='dtype'):
    variants.decoder_config('tiny', 10, dtype='float16')
  with pytest.raises(ValueError, match='cache length'):
    decoder_lib.init_cache(variants.decoder_config('tiny', 10, max_len=8), 1, 9)


def _segment_causal(b, s, seed):
  """Random packed-segment causal masks `[b, s, s]`, each row ending in padding."""
  rng = np.random.default_rng(seed)
  seg = np.zeros((b, s), np.int32)
  for r in range(b):
    ends = np.sort(rng.choice(np.arange(1, s - 3), size=3, replace=False))
    seg[r, :ends[-1]] = np.searchsorted(ends, np.arange(ends[-1]), side='right') + 1
  same = (seg[:, :, None] == seg[:, None, :]) & (seg[:, :, None] > 0)
  return jnp.asarray(same & np.tril(np.ones((s, s), bool))[None])


@pytest.mark.parametrize('causal', [False, True])
def test_attention_and_its_hand_written_gradient_match_autodiff(causal):
  """Values and q/k/v gradients equal jax.nn.dot_product_attention's, padding rows included;
  s = 80 spans two causal query blocks, the second one short."""
  b, s, heads, kv_heads, d = 2, 80, 4, 2, 8
  keys = jax.random.split(jax.random.key(0), 4)
  q = jax.random.normal(keys[0], (b, s, heads, d))
  k = jax.random.normal(keys[1], (b, s, kv_heads, d))
  v = jax.random.normal(keys[2], (b, s, kv_heads, d))
  probe = jax.random.normal(keys[3], (b, s, heads, d))
  mask = _segment_causal(b, s, seed=1)

  def ours(q, k, v):
    return attention.attend_by_kv_head(q, k, v, mask, causal=causal)

  def reference(q, k, v):
    return jax.nn.dot_product_attention(q, k, v, mask=mask[:, None])

  real = np.asarray(mask.any(-1))  # padding queries see nothing: their output is arbitrary
  np.testing.assert_allclose(np.asarray(ours(q, k, v))[real],
                             np.asarray(reference(q, k, v))[real], atol=1e-5)
  loss = lambda f: lambda *a: jnp.sum(jnp.where(real[..., None, None], f(*a), 0.0) * probe)
  for got, want in zip(jax.grad(loss(ours), (0, 1, 2))(q, k, v),
                       jax.grad(loss(reference), (0, 1, 2))(q, k, v)):
    np.testing.assert_allclose(got, want, atol=1e-5)


def test_causal_promise_skips_only_masked_work():
  config, params, _, _, _, _ = _setup()
  tokens = jax.random.randint(jax.random.key(2), (2, 80), 1, VOCAB)
  positions = jnp.broadcast_to(jnp.arange(80), (2, 80))
  mask = _segment_causal(2, 80, seed=3)
  model = decoder_lib.Decoder(config)
  full = model.apply({'params': params}, tokens, positions, mask)
  blocked = model.apply({'params': params}, tokens, positions, mask, causal=True)
  real = np.asarray(mask.any(-1))
  np.testing.assert_allclose(np.asarray(blocked)[real], np.asarray(full)[real], atol=1e-5)


def test_swiglu_gradient_matches_autodiff():
  gate, up, probe = jax.random.normal(jax.random.key(4), (3, 5, 7))
  reference = lambda g, u: jnp.sum(jax.nn.silu(g) * u * probe)
  ours = lambda g, u: jnp.sum(layers.swiglu(g, u) * probe)
  np.testing.assert_allclose(ours(gate, up), reference(gate, up), rtol=1e-6)
  for got, want in zip(jax.grad(ours, (0, 1))(gate, up), jax.grad(reference, (0, 1))(gate, up)):
    np.testing.assert_allclose(got, want, atol=1e-6)
