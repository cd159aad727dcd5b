"""The Qwen2-architecture decoder: masking, KV-cache equivalence, HF names, counts."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants

VOCAB = 50


def _setup(**overrides):
  config = variants.decoder_config('tiny', VOCAB, **overrides)
  model = decoder_lib.Decoder(config)
  tokens = jax.random.randint(jax.random.key(1), (3, 10), 1, VOCAB)
  positions = jnp.broadcast_to(jnp.arange(10), (3, 10))
  mask = jnp.broadcast_to(jnp.tril(jnp.ones((10, 10), bool)), (3, 10, 10))
  params = model.init(jax.random.key(0), tokens, positions, mask)['params']
  return config, model, params, tokens, positions, mask


def test_causal_future_tokens_do_not_change_past_logits():
  _, model, params, tokens, positions, mask = _setup()
  logits = model.apply({'params': params}, tokens, positions, mask)
  assert logits.shape == (3, 10, VOCAB) and logits.dtype == jnp.float32
  changed = tokens.at[:, 6:].set((tokens[:, 6:] + 1) % VOCAB)
  other = model.apply({'params': params}, changed, positions, mask)
  np.testing.assert_allclose(logits[:, :6], other[:, :6], atol=1e-6)
  assert not np.allclose(logits[:, 6:], other[:, 6:])


def test_custom_mask_hides_keys():
  _, model, params, tokens, positions, mask = _setup()
  blocked = mask.at[:, :, 2].set(False).at[:, 2, 2].set(True)  # nobody else sees token 2
  logits = model.apply({'params': params}, tokens, positions, blocked)
  changed = tokens.at[:, 2].set((tokens[:, 2] + 1) % VOCAB)
  other = model.apply({'params': params}, changed, positions, blocked)
  keep = np.r_[0:2, 3:10]
  np.testing.assert_allclose(logits[:, keep], other[:, keep], atol=1e-6)


@pytest.mark.parametrize('tie', [True, False])
def test_prefill_and_decode_match_full_forward_with_left_padding(tie):
  config, model, params, tokens, _, _ = _setup(tie_embeddings=tie)
  pad = np.array([0, 3, 5])  # per-row left padding of the 7-token prompt
  prompt_mask = np.arange(7)[None] >= pad[:, None]
  positions = np.maximum(np.cumsum(prompt_mask, 1) - 1, 0)
  prompt = jnp.where(prompt_mask, tokens[:, :7], 0)
  logits, cache = jax.jit(decoder_lib.prefill, static_argnums=(0, 5))(
      config, params, prompt, positions, prompt_mask, 10)
  step = jax.jit(decoder_lib.decode_step, static_argnums=0)
  outs = [logits]
  for j in range(3):
    logits, cache = step(config, params, cache, tokens[:, 7 + j], positions[:, -1] + 1 + j)
    outs.append(logits)
  for row in range(3):  # reference: the unpadded row alone, full causal forward
    seq = tokens[row:row + 1, pad[row]:]
    n = seq.shape[1]
    full = model.apply({'params': params}, seq, jnp.arange(n)[None],
                       jnp.tril(jnp.ones((1, n, n), bool)))
    for j in range(4):
      np.testing.assert_allclose(outs[j][row], full[0, 7 - pad[row] - 1 + j], atol=2e-5)


def test_reorder_cache_gathers_rows():
  config, _, params, tokens, positions, _ = _setup()
  _, cache = decoder_lib.prefill(config, params, tokens, positions, jnp.ones((3, 10), bool), 12)
  rows = jnp.array([2, 2, 0])
  moved = decoder_lib.reorder_cache(cache, rows)
  np.testing.assert_array_equal(moved['k'][:, 0], cache['k'][:, 2])
  np.testing.assert_array_equal(moved['valid'][2], cache['valid'][0])


def test_gqa_and_bfloat16():
  _, model, params, tokens, positions, mask = _setup(dtype='bfloat16')
  assert jax.tree.leaves(params)[0].dtype == jnp.float32
  logits = model.apply({'params': params}, tokens, positions, mask)
  assert logits.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(logits)))
  q = params['layers_0']['self_attn']['q_proj']['kernel']
  k = params['layers_0']['self_attn']['k_proj']['kernel']
  assert q.shape[1] == 2 * k.shape[1]  # 4 query heads share 2 KV heads


def test_hf_state_dict_round_trip():
  config, model, params, tokens, positions, mask = _setup(tie_embeddings=False)
  hf = decoder_lib.params_to_hf(params, config)
  assert hf['model.layers.1.self_attn.q_proj.weight'].shape == (32, 32)
  assert 'model.layers.0.self_attn.o_proj.bias' not in hf
  back = decoder_lib.params_from_hf(hf, config)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  np.testing.assert_array_equal(model.apply({'params': back}, tokens, positions, mask),
                                model.apply({'params': params}, tokens, positions, mask))


def test_parameter_counts_of_real_shapes():
  counts = decoder_lib.count_params(variants.decoder_config('qwen2.5-0.5b', 151_936))
  assert counts['params'] == 494_032_768  # Qwen2.5-0.5B's published parameter count
  small = variants.decoder_config('S', 1000)
  wide = variants.decoder_config('S', 1000, width=512)
  assert wide.head_dim == small.head_dim == 64 and wide.num_heads == 8
  assert (decoder_lib.count_params(wide)['non_embedding_params'] >
          3 * decoder_lib.count_params(small)['non_embedding_params'])
  flops = decoder_lib.flops_per_token(small, 64)
  assert flops['train_flops_per_token'] == 3 * flops['forward_flops_per_token']
  with pytest.raises(ValueError, match='unknown model variant'):
    variants.decoder_config('XXL', 10)
