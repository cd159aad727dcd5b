"""One device, jit + sharding over 4, and pmap over 4 follow the same SFT loss trajectory."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from minirec_jax.data import sid_sequences as ss
from minirec_jax.models import decoder as decoder_lib
from minirec_jax.models import variants
from minirec_jax.training import parallel, sft
from minirec_jax.training import state as state_lib


def _packed_batches(vocab, num_batches=3, batch=8, seq_len=24, seed=0):
  rng = np.random.default_rng(seed)
  users, histories, targets = [], [], []
  for u in range(60):
    seq = rng.integers(0, 40, size=rng.integers(2, 8)).tolist()
    for i in range(1, len(seq)):
      users.append(f'u{u}')
      histories.append(seq[max(0, i - 5):i])
      targets.append(seq[i])
  codes = np.stack(np.unravel_index(rng.permutation(vocab.codebook_size ** 3)[:40],
                                    (vocab.codebook_size,) * 3), 1)
  packed = ss.pack_segments(ss.build_segments(users, histories, targets, 5),
                            vocab.item_tokens(codes), seq_len)
  assert len(packed) >= num_batches * batch
  return [{k: v[i * batch:(i + 1) * batch] for k, v in packed.example(slice(None)).items()
           if k != 'rows'} for i in range(num_batches)]


def _setup():
  vocab = ss.SidVocab(3, 8)
  config = variants.decoder_config('tiny', vocab_size=vocab.vocab_size)
  model = decoder_lib.Decoder(config)
  batches = _packed_batches(vocab)
  params = model.init(jax.random.key(0), batches[0]['tokens'], batches[0]['positions'],
                      sft.segment_causal_mask(jnp.asarray(batches[0]['segment_ids'])))['params']
  apply_fn = lambda p, t, pos, m, rng: model.apply({'params': p}, t, pos, m)
  state = state_lib.TrainState.create(apply_fn=None, params=params, tx=optax.adamw(1e-2))
  return apply_fn, state, batches


def _run(step, state, batches, prepare):
  losses = []
  for batch in batches:
    state, metrics = step(state, prepare(batch), jax.random.key(1))
    losses.append(float(np.asarray(metrics['loss']).reshape(-1)[0]))
  return losses


def test_same_loss_trajectory_on_1_device_jit_sharded_and_pmap():
  assert jax.device_count() >= 4, 'conftest should provide 4 CPU devices'
  apply_fn, state, batches = _setup()
  single = jax.jit(sft.make_sft_step(apply_fn))
  base = _run(single, state, batches, lambda b: b)

  mesh = parallel.make_mesh(4)
  sharded = parallel.jit_data_parallel(sft.make_sft_step(apply_fn), mesh)
  _, state2, _ = _setup()
  got_jit = _run(sharded, state2, batches, lambda b: parallel.shard_batch(b, mesh))

  pmapped = parallel.pmap_data_parallel(sft.make_sft_step(apply_fn, axis_name='data'))
  _, state3, _ = _setup()
  got_pmap = _run(pmapped, parallel.replicate(state3, 4), batches,
                  lambda b: parallel.split_for_pmap(b, 4))

  assert base[0] > base[-1]  # it learns
  np.testing.assert_allclose(got_jit, base, rtol=2e-5)
  np.testing.assert_allclose(got_pmap, base, rtol=2e-5)


def test_max_traces_turns_a_recompiling_step_into_an_error():
  apply_fn, state, batches = _setup()
  mesh = parallel.make_mesh()
  # Two traces allowed: the first call's state (python step counter, uncommitted arrays) is
  # not yet in the form the step returns, so the second call traces once more.
  step = parallel.jit_data_parallel(sft.make_sft_step(apply_fn), mesh, max_traces=2)
  prepare = lambda b: parallel.shard_batch(b, mesh)
  for batch in batches + batches:
    state, _ = step(state, prepare(batch), jax.random.key(1))
  shorter = {k: v[:, :-4] for k, v in batches[0].items()}
  with pytest.raises(AssertionError, match='traced 3 times'):
    step(state, prepare(shorter), jax.random.key(1))
  # Each wrapped step counts for itself: a second training run in the process starts at 0.
  again = parallel.jit_data_parallel(sft.make_sft_step(apply_fn), mesh, max_traces=2)
  again(state, prepare(shorter), jax.random.key(1))
