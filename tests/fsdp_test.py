"""FSDP over a (2 data x 2 fsdp) mesh matches replicated data parallelism; states compile once."""

import types

import chex
import jax
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from minirec_jax.infra.config_utils import optimizer_config
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.training import parallel, sft

SEQ = 24


def _batch(vocab_size=25, rows=8):
  rng = np.random.default_rng(0)
  tokens = rng.integers(1, vocab_size, (rows, SEQ + 1)).astype(np.int32)
  return {'tokens': tokens[:, :-1], 'labels': tokens[:, 1:],
          'positions': np.tile(np.arange(SEQ, dtype=np.int32), (rows, 1)),
          'segment_ids': np.ones((rows, SEQ), np.int32),
          'weights': (rng.random((rows, SEQ)) < 0.7).astype(np.float32)}


def _train(mesh, num_steps=3):
  """init_state on `mesh` + the jitted SFT step, as sft_loop runs them; fails on a retrace.

  Adam's eps is large so that gradients that are rounding noise (the key bias has none in exact
  arithmetic) do not become full-size updates whose sign depends on the reduction order.
  """
  model = decoder_lib.Decoder(variants.decoder_config('tiny', vocab_size=25, depth=1))
  config = ml_collections.ConfigDict({'train': {'seq_len': SEQ},
                                      'optim': optimizer_config(lr=1e-2, weight_decay=0.01,
                                                                eps=1e-4)})
  setup = types.SimpleNamespace(model=model, model_config=model.config, language_model=None)
  state = sft_loop.init_state(setup, config, num_steps, jax.random.key(0), mesh)
  chex.clear_trace_counter()  # counts are per wrapping site, shared by calls of _train
  step = chex.assert_max_traces(sft.make_sft_step(sft.decoder_apply_fn(model)), n=1)
  step = parallel.jit_data_parallel(step, mesh,
                                    state_sharding=parallel.state_sharding(state, mesh))
  losses = []
  for _ in range(num_steps):  # one batch, so the loss must fall as it is memorised
    state, metrics = step(state, parallel.shard_batch(_batch(), mesh), jax.random.key(1))
    losses.append(float(metrics['loss']))
  return state, losses


def test_fsdp_matches_replicated_and_shards_params_and_moments():
  assert jax.device_count() >= 4, 'conftest should provide 4 CPU devices'
  repl_state, repl_losses = _train(parallel.make_mesh(4))
  fsdp_mesh = parallel.make_mesh(4, fsdp=2)
  assert dict(fsdp_mesh.shape) == {'data': 2, 'fsdp': 2}
  fsdp_state, fsdp_losses = _train(fsdp_mesh)

  assert repl_losses[-1] < repl_losses[0]
  np.testing.assert_allclose(fsdp_losses, repl_losses, rtol=1e-5)
  chex.assert_trees_all_close(fsdp_state.params, repl_state.params, rtol=1e-4, atol=1e-6)

  kernel = fsdp_state.params['layers_0']['mlp']['up_proj']['kernel']  # [32, 64]
  assert kernel.sharding.spec == P(None, 'fsdp')
  assert {s.data.shape for s in kernel.addressable_shards} == {(32, 32)}
  assert repl_state.params['layers_0']['mlp']['up_proj']['kernel'].sharding.spec == P()
  sharded = [x for x in jax.tree.leaves(fsdp_state) if 'fsdp' in x.sharding.spec]
  small = [x for x in jax.tree.leaves(fsdp_state) if x.size < parallel.MIN_FSDP_SIZE]
  # Each sharded parameter has an Adam mu and nu of the same layout.
  assert len(sharded) == 3 * sum(x.size >= parallel.MIN_FSDP_SIZE
                                 for x in jax.tree.leaves(fsdp_state.params))
  assert small and all(x.sharding.spec == P() for x in small)


def test_batch_is_split_over_both_mesh_axes():
  mesh = parallel.make_mesh(4, fsdp=2)
  tokens = parallel.shard_batch(_batch(), mesh)['tokens']
  assert tokens.sharding.spec == P(('data', 'fsdp'))
  assert {s.data.shape for s in tokens.addressable_shards} == {(2, SEQ)}


def test_fsdp_spec_splits_the_largest_divisible_dimension():
  assert parallel.fsdp_spec((3, 64), 2, min_size=1) == P(None, 'fsdp')
  assert parallel.fsdp_spec((64, 32, 3), 2, min_size=1) == P('fsdp')
  assert parallel.fsdp_spec((3, 5), 2, min_size=1) == P()
  assert parallel.fsdp_spec((64, 64), 2, min_size=10_000) == P()
  assert parallel.fsdp_spec((64, 64), 1, min_size=1) == P()


def test_fsdp_axis_must_divide_the_devices():
  with pytest.raises(ValueError, match='fsdp axis size 3'):
    parallel.make_mesh(4, fsdp=3)
