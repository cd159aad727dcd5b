"""minirec-jax as a library: your own loop around our pure SFT step, jitted over all devices."""
import jax
import numpy as np
import optax

import minirec_jax as mr

vocab = mr.SidVocab(num_levels=3, codebook_size=16)  # SID token = 1 + level * 16 + code
item_tokens = vocab.item_tokens(np.random.default_rng(0).integers(0, 16, (100, 3)))  # 100 items
model = mr.Decoder(mr.decoder_config('tiny', vocab_size=vocab.vocab_size))


def random_batch(seed, users=8, items=11):  # a row: one history; every next SID token a target
  tokens = item_tokens[np.random.default_rng(seed).integers(0, 100, (users, items))]
  tokens, seq = tokens.reshape(users, -1), items * vocab.num_levels - 1
  return {'tokens': tokens[:, :-1], 'labels': tokens[:, 1:],
          'positions': np.tile(np.arange(seq), (users, 1)),
          'segment_ids': np.ones((users, seq), np.int32),
          'weights': np.ones((users, seq), np.float32)}


batch = random_batch(0)
params = model.init(jax.random.key(0), batch['tokens'], batch['positions'])['params']
state = mr.TrainState.create(apply_fn=None, params=params, tx=optax.adamw(3e-3))
apply_fn = lambda p, tokens, positions, mask, rng: model.apply({'params': p}, tokens, positions,
                                                               mask)
mesh = mr.make_mesh()  # all devices; each step's batch is split over them
train_step = mr.jit_data_parallel(mr.make_sft_step(apply_fn), mesh)
losses = []
for step in range(30):
  state, metrics = train_step(state, mr.shard_batch(random_batch(step), mesh), jax.random.key(0))
  losses.append(float(metrics['loss']))
  print(f'step {step:2d}  loss {losses[-1]:.3f}')
