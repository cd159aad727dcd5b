"""Mixture-of-experts MLP: routing, dispatch, balance loss, decoder integration, SFT."""

import functools

from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import hf_convert
from minirec_jax.models import moe
from minirec_jax.models import variants
from minirec_jax.training import sft
from minirec_jax.training import state as state_lib

VOCAB = 40
SEQ = 8


def _config(**overrides):
  # Width 32, 8 experts of 32, 2 per token; one layer keeps compiles short.
  return variants.decoder_config('tiny-moe8', VOCAB, **{'depth': 1, **overrides})


CONFIG = _config(moe_aux_weight=0.5)


@functools.cache
def _params():
  ones = jnp.ones((1, SEQ), jnp.int32)
  return jax.jit(decoder_lib.Decoder(CONFIG).init)(jax.random.key(3), ones, ones)['params']


@functools.cache
def _inputs():
  """tokens, positions, valid `[2, SEQ]`; row 1 is left-padded by 3."""
  tokens = np.random.default_rng(1).integers(1, VOCAB, (2, SEQ)).astype(np.int32)
  valid = np.arange(SEQ)[None] >= np.array([[0], [3]])
  return tokens, np.maximum(np.cumsum(valid, 1) - 1, 0), valid


def _moe_mlp(num_experts, k, capacity_factor=0.0, mlp_dim=16):
  return moe.MoeMlp(num_experts, k, mlp_dim, capacity_factor, jnp.float32,
                    jax.nn.initializers.normal(0.5))


X = np.random.default_rng(0).normal(size=(2, SEQ, 32)).astype(np.float32)
VALID = np.ones((2, SEQ), bool)


@functools.cache
def _mlp_params(num_experts, mlp_dim=16):
  """Random `MoeMlp` parameters for width 32 (numpy: no init to compile)."""
  rng = np.random.default_rng(1)
  draw = lambda *shape: rng.normal(0.0, 0.5, shape).astype(np.float32)
  return {'router': {'kernel': draw(32, num_experts)},
          'gate_proj': draw(num_experts, 32, mlp_dim), 'up_proj': draw(num_experts, 32, mlp_dim),
          'down_proj': draw(num_experts, mlp_dim, 32)}


@functools.cache
def _mlp_apply(num_experts, k, capacity_factor=0.0, mlp_dim=16):
  """Jitted apply returning (out, {'intermediates': ...})."""
  return jax.jit(functools.partial(_moe_mlp(num_experts, k, capacity_factor, mlp_dim).apply,
                                   mutable=['intermediates']))


@functools.cache
def _forward(config):
  def apply(params, tokens, positions, valid):
    return decoder_lib.Decoder(config).apply({'params': params}, tokens, positions,
                                             decoder_lib.causal_mask(valid))
  return jax.jit(apply)


def test_dense_config_keeps_its_parameter_tree():
  dense = variants.decoder_config('tiny', VOCAB)
  assert dense.num_experts == 0
  params = jax.tree.map(lambda x: np.zeros(x.shape, x.dtype),
                        decoder_lib.abstract_params(dense))
  paths = traverse_util.flatten_dict(params)
  assert not any('router' in path for path in paths)
  assert {p[2:] for p in paths if p[:2] == ('layers_0', 'mlp')} == {
      ('gate_proj', 'kernel'), ('up_proj', 'kernel'), ('down_proj', 'kernel')}
  # Every parameter still has its HF tensor, so the HF loader is unaffected.
  assert len(hf_convert.params_to_hf_state_dict(params, dense)) == len(paths)
  counts = decoder_lib.count_params(dense)
  assert counts['active_non_embedding_params'] == counts['non_embedding_params']


def test_moe_forward_shapes():
  mlp = _params()['layers_0']['mlp']
  assert mlp['router']['kernel'].shape == (32, 8)
  assert mlp['gate_proj'].shape == mlp['up_proj'].shape == (8, 32, 32)
  assert mlp['down_proj'].shape == (8, 32, 32)
  logits = _forward(CONFIG)(_params(), *_inputs())
  assert logits.shape == (2, SEQ, VOCAB) and logits.dtype == jnp.float32
  assert np.isfinite(logits).all()


def test_gates_renormalise_the_top_k_probabilities():
  probs = jax.nn.softmax(np.random.default_rng(0).normal(size=(5, 7, 6)), axis=-1)
  gates, experts = jax.jit(moe.top_k_gates, static_argnums=1)(probs, 3)
  assert gates.shape == experts.shape == (5, 7, 3)
  np.testing.assert_allclose(gates.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_array_equal(experts, np.argsort(-np.asarray(probs), -1)[..., :3])
  picked = np.take_along_axis(np.asarray(probs), np.asarray(experts), -1)
  np.testing.assert_allclose(gates, picked / picked.sum(-1, keepdims=True), rtol=1e-6)


def test_one_expert_top_1_is_the_dense_swiglu():
  config = variants.decoder_config('tiny', VOCAB)  # dense mlp_dim 64
  params = _mlp_params(1, mlp_dim=64)
  got, _ = _mlp_apply(1, 1, mlp_dim=64)({'params': params}, X, VALID)
  dense = {name: {'kernel': params[name][0]} for name in moe.EXPERT_PARAMS}
  want = jax.jit(decoder_lib.Mlp(config).apply)({'params': dense}, X)
  assert np.abs(want).max() > 0.1
  np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_balance_loss_is_one_when_uniform_and_larger_when_collapsed():
  loss = jax.jit(moe.load_balancing_loss)
  experts = np.random.default_rng(0).integers(0, 8, (4, 6, 2))
  valid = np.ones((4, 6), bool)
  uniform = np.full((4, 6, 8), 1 / 8, np.float32)
  np.testing.assert_allclose(loss(uniform, experts, valid), 1.0, rtol=1e-6)
  collapsed = np.full((4, 6, 8), 1e-4, np.float32)
  collapsed[..., 0] = 1 - 7e-4
  top = np.broadcast_to([0, 1], (4, 6, 2))  # ties among the rest: any second choice
  np.testing.assert_allclose(loss(collapsed, top, valid), 8 / 2, rtol=1e-3)
  # Padding tokens do not count: collapse only them and the loss stays uniform.
  valid[:, 4:] = False
  mixed = np.where(valid[..., None], uniform, collapsed)
  np.testing.assert_allclose(loss(mixed, experts, valid), 1.0, rtol=1e-6)


def test_module_sows_the_balance_loss_of_its_router():
  params, apply = _mlp_params(4), _mlp_apply(4, 2)
  router = np.zeros((32, 4), np.float32)
  _, state = apply({'params': dict(params, router={'kernel': router})}, X, VALID)
  np.testing.assert_allclose(moe.aux_loss(state['intermediates']), 1.0, rtol=1e-6)
  # Positive inputs and a large column 0: every token puts almost all its mass on expert 0.
  collapsed = dict(params, router={'kernel': router + np.eye(4, dtype=np.float32)[0] * 5.0})
  _, state = apply({'params': collapsed}, np.abs(X), VALID)
  np.testing.assert_allclose(moe.aux_loss(state['intermediates']), 4 / 2, rtol=1e-3)
  with pytest.raises(ValueError, match='no .moe_aux_loss'):
    moe.aux_loss({})


def test_gradients_reach_the_router_and_every_expert():
  def loss(p):
    out, state = _moe_mlp(4, 2).apply({'params': p}, X, VALID, mutable=['intermediates'])
    return jnp.sum(out ** 2) + moe.aux_loss(state['intermediates'])

  grads = jax.jit(jax.grad(loss))(_mlp_params(4))
  assert (np.abs(grads['router']['kernel']).sum(axis=0) > 0).all()  # every expert's column
  for name in moe.EXPERT_PARAMS:
    assert (np.abs(grads[name]).sum(axis=(1, 2)) > 0).all(), name


def test_dispatch_keeps_first_choices_first_and_drops_past_capacity():
  assert moe.expert_capacity(10, 4, 2, 0.0) == 10
  assert moe.expert_capacity(10, 4, 2, 1.0) == 5
  assert moe.expert_capacity(10, 4, 2, 9.0) == 10
  # Tokens 0..3 all prefer expert 0; token 3 is padding.
  experts = jnp.array([[0, 1], [0, 2], [0, 1], [0, 1]])
  valid = jnp.array([True, True, True, False])
  slot_token, choice_slot = jax.jit(moe.dispatch_slots, static_argnums=(2, 3))(
      experts, valid, 3, 2)
  np.testing.assert_array_equal(slot_token, [[0, 1], [0, 2], [1, 4]])  # 4 = empty
  # Token 2's first choice overflows expert 0 (dropped: 3 * 2); its second fills slot 1 of 1.
  np.testing.assert_array_equal(choice_slot, [[0, 2], [1, 4], [6, 3], [6, 6]])


def test_capacity_drops_change_outputs_per_row_only():
  params, apply = _mlp_params(4), _mlp_apply(4, 2, capacity_factor=0.5)
  capped, _ = apply({'params': params}, X, VALID)
  dropless, _ = _mlp_apply(4, 2)({'params': params}, X, VALID)
  assert np.abs(capped - dropless).max() > 1e-3  # 2 slots for 16 choices: tokens are dropped
  other, _ = apply({'params': params}, X * np.array([1.0, -3.0])[:, None, None], VALID)
  np.testing.assert_array_equal(other[0], capped[0])  # rows are routed independently


def test_counts_match_active_parameters_of_the_dense_variant():
  moe_config = variants.decoder_config('tiny-moe8', VOCAB)
  moe_counts = decoder_lib.count_params(moe_config)
  dense_counts = decoder_lib.count_params(variants.decoder_config('tiny', VOCAB))
  router = 2 * 32 * 8  # depth x width x experts
  assert moe_counts['active_non_embedding_params'] < moe_counts['non_embedding_params']
  assert (moe_counts['active_non_embedding_params'] ==
          dense_counts['non_embedding_params'] + router)
  experts = 2 * 8 * 3 * 32 * 32
  assert moe_counts['non_embedding_params'] == (
      dense_counts['non_embedding_params'] - 2 * 3 * 32 * 64 + router + experts)
  moe_flops = decoder_lib.flops_per_token(moe_config, SEQ)['forward_flops_per_token']
  dense_flops = decoder_lib.flops_per_token(variants.decoder_config('tiny', VOCAB),
                                            SEQ)['forward_flops_per_token']
  assert moe_flops - dense_flops == 2 * router


def test_variants_and_config_validation():
  small, small_moe = variants.decoder_config('S', 10), variants.decoder_config('S-moe8', 10)
  assert (small_moe.num_experts, small_moe.experts_per_token) == (8, 2)
  assert small_moe.mlp_dim * 2 == small.mlp_dim
  wide, wide_moe = (variants.decoder_config(v, 10, width=512) for v in ('S', 'S-moe8'))
  assert wide_moe.mlp_dim * 2 == wide.mlp_dim
  assert variants.decoder_config('S', 10, num_experts=4).mlp_dim == small.mlp_dim
  for field, value in [('num_experts', -1), ('moe_aux_weight', -0.1),
                       ('moe_capacity_factor', -1.0), ('experts_per_token', 9),
                       ('experts_per_token', 0)]:
    with pytest.raises(ValueError, match=f'{field} must be .*{value}'):
      _config(**{field: value})
  with pytest.raises(ValueError, match='num_experts=8'):
    hf_convert.params_from_hf_state_dict({}, CONFIG)


def _batch():
  tokens, positions, valid = _inputs()
  segment_ids = np.asarray(valid, np.int32)  # row 1's padding is segment 0
  return {'tokens': tokens, 'positions': positions, 'segment_ids': segment_ids,
          'labels': jnp.roll(tokens, -1, axis=1), 'weights': segment_ids.astype(np.float32)}


def test_sft_step_adds_the_penalty_and_reports_aux_scalars():
  batch = _batch()

  def apply_fn(params, tokens, positions, mask, rng):  # a cheap stand-in for a MoE decoder
    del positions, mask, rng
    size = jnp.sum(params['table'] ** 2)
    return params['table'][tokens], {'size': size, sft.PENALTY: 0.5 * size}

  def objective(params):
    logits, aux = apply_fn(params, batch['tokens'], None, None, None)
    sums = sft.weighted_token_loss(logits, batch['labels'], batch['weights'])
    return sums['loss_sum'] / sums['weight_sum'] + aux[sft.PENALTY], aux

  params = {'table': np.random.default_rng(0).normal(size=(VOCAB, VOCAB)).astype(np.float32)}
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.sgd(1.0))
  new_state, metrics = jax.jit(sft.make_sft_step(apply_fn))(state, batch, jax.random.key(0))
  want, aux = jax.jit(jax.grad(objective, has_aux=True))(params)
  np.testing.assert_allclose(params['table'] - new_state.params['table'], want['table'],
                             atol=1e-6, rtol=1e-5)
  np.testing.assert_allclose(metrics['size'], aux['size'], rtol=1e-6)
  np.testing.assert_allclose(metrics[sft.PENALTY], 0.5 * aux['size'], rtol=1e-6)


def test_decoder_apply_fn_returns_the_balance_loss_of_moe_models_only():
  tokens, positions, valid = _inputs()
  args = (tokens, positions, decoder_lib.causal_mask(valid), None)
  dense = variants.decoder_config('tiny', VOCAB)
  out = jax.eval_shape(sft.decoder_apply_fn(decoder_lib.Decoder(dense)),
                       decoder_lib.abstract_params(dense), *args)
  assert out.shape == (2, SEQ, VOCAB)  # plain logits, no aux
  logits, aux = jax.eval_shape(sft.decoder_apply_fn(decoder_lib.Decoder(CONFIG)),
                               decoder_lib.abstract_params(CONFIG), *args)
  assert logits.shape == (2, SEQ, VOCAB) and set(aux) == {moe.AUX_LOSS, sft.PENALTY}


def test_a_few_sft_steps_lower_the_loss():
  step = jax.jit(sft.make_sft_step(sft.decoder_apply_fn(decoder_lib.Decoder(CONFIG))))
  state = state_lib.TrainState.create(apply_fn=None, params=_params(), tx=optax.sgd(1.0))
  batch = _batch()
  losses = []
  for i in range(10):
    state, metrics = step(state, batch, jax.random.key(i))
    losses.append(float(metrics['loss']))
    assert 0.0 < float(metrics[moe.AUX_LOSS]) <= 8 / 2 + 1e-4  # at most experts / k
    np.testing.assert_allclose(metrics[sft.PENALTY], 0.5 * metrics[moe.AUX_LOSS], rtol=1e-6)
  assert losses[-1] < losses[0] - 0.5


def test_prefill_and_decode_match_the_full_forward():
  capped = _config(moe_capacity_factor=0.5)  # its full forward drops tokens; decoding must not
  params, (tokens, positions, valid) = _params(), _inputs()
  full = _forward(CONFIG)(params, tokens, positions, valid)
  assert np.abs(_forward(capped)(params, tokens, positions, valid) - full).max() > 1e-3
  prompt_len = 5
  logits, cache = jax.jit(decoder_lib.prefill, static_argnums=(0, 5))(
      capped, params, tokens[:, :prompt_len], positions[:, :prompt_len],
      valid[:, :prompt_len], SEQ)
  outs = [logits]
  step = jax.jit(functools.partial(decoder_lib.decode_step, capped))
  for j in range(prompt_len, SEQ - 1):
    logits, cache = step(params, cache, tokens[:, j], positions[:, j])
    outs.append(logits)
  np.testing.assert_allclose(jnp.stack(outs, 1), full[:, prompt_len - 1:SEQ - 1], atol=1e-5,
                             rtol=1e-5)
