"""Where the SFT training step's time goes on CPU: the step's op classes, XLA vs PyTorch eager.

  python experiments/bench_cpu_ops.py [--output=docs/bench/cpu_ops.json]

Needs the 'bench' extra (torch CPU); the library never imports torch. Each row times one
operation class of the model-S SFT step (batch 32 x 128 tokens = 4,096 rows, width 256, MLP 704,
4 query heads over 2 KV heads of 64) in isolation, on both sides with the same shapes and float32:
jitted XLA (median of --repeats after a warm-up call) and eager torch with os.cpu_count() threads.
Rows:
  dense_*        one [4096, 256] x [256, 704] layer: forward, input gradient, kernel gradient
                 (the kernel gradient contracts the 4,096 rows, a transposed operand);
  attn_*         the attention matmuls as batched [64 x (256 x 64)] products: scores, and the
                 value gradient (contracts the query axis, a transposed operand);
  softmax_grad   forward + backward of a softmax over [32, 4, 128, 128] scores;
  swiglu         silu(gate) * up over [4096, 704] (elementwise, memory-bound).
`xla_over_torch` > 1 means XLA is slower. The training-step comparison itself is
experiments/bench_hf.py; this explains its ratio.
"""

import json
import os
import statistics
from typing import Callable

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import torch

from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing

_REPEATS = flags.DEFINE_integer('repeats', 15, 'Timed calls per op and side (median kept).')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')

_ROWS, _WIDTH, _MLP = 4096, 256, 704
_BATCH, _HEADS, _SEQ, _HEAD_DIM, _GROUPS = 32, 4, 128, 64, 64  # groups = batch x KV heads


def _median_s(fn: Callable[[], object], repeats: int) -> float:
  return statistics.median(timing.timed_calls(fn, repeats))


def _xla(fn, *args) -> Callable[[], object]:
  jitted = jax.jit(fn)
  args = [jnp.asarray(a) for a in args]
  return lambda: jax.block_until_ready(jitted(*args))


def _torch(fn, *args) -> Callable[[], object]:
  args = [torch.from_numpy(np.ascontiguousarray(a)) for a in args]

  def run():
    with torch.no_grad():
      return fn(*args)

  return run


def _softmax_grad_torch(scores):
  scores = scores.clone().requires_grad_(True)
  with torch.enable_grad():
    probs = torch.softmax(scores, dim=-1)
    (grad,) = torch.autograd.grad(probs, scores, probs)
  return grad


def op_rows(repeats: int) -> list[dict]:
  rs = np.random.default_rng(0)
  r = lambda *shape: rs.standard_normal(shape, dtype=np.float32)
  x, w, g = r(_ROWS, _WIDTH), r(_WIDTH, _MLP), r(_ROWS, _MLP)
  q, k = r(_GROUPS, 2 * _SEQ, _HEAD_DIM), r(_GROUPS, _SEQ, _HEAD_DIM)
  p, dout = r(_GROUPS, 2 * _SEQ, _SEQ), r(_GROUPS, 2 * _SEQ, _HEAD_DIM)
  scores = r(_BATCH, _HEADS, _SEQ, _SEQ)
  gate, up = r(_ROWS, _MLP), r(_ROWS, _MLP)
  softmax_vjp = lambda s: jax.vjp(lambda t: jax.nn.softmax(t, axis=-1), s)[1](
      jax.nn.softmax(s, axis=-1))[0]
  ops = {
      'dense_forward': (lambda a, b: a @ b, lambda a, b: a @ b, (x, w)),
      'dense_input_grad': (lambda a, b: a @ b.T, lambda a, b: a @ b.T, (g, w)),
      'dense_kernel_grad': (lambda a, b: a.T @ b, lambda a, b: a.T @ b, (x, g)),
      'attn_scores': (lambda a, b: jnp.einsum('gqd,gkd->gqk', a, b),
                      lambda a, b: a @ b.transpose(1, 2), (q, k)),
      'attn_value_grad': (lambda a, b: jnp.einsum('gqk,gqd->gkd', a, b),
                          lambda a, b: a.transpose(1, 2) @ b, (p, dout)),
      'softmax_grad': (softmax_vjp, _softmax_grad_torch, (scores,)),
      'swiglu': (lambda a, b: jax.nn.silu(a) * b,
                 lambda a, b: torch.nn.functional.silu(a) * b, (gate, up)),
  }
  rows = []
  for name, (ours, theirs, args) in ops.items():
    xla_s = _median_s(_xla(ours, *args), repeats)
    torch_s = _median_s(_torch(theirs, *args), repeats)
    rows.append({'op': name, 'xla_ms': round(1e3 * xla_s, 3), 'torch_ms': round(1e3 * torch_s, 3),
                 'xla_over_torch': round(xla_s / torch_s, 3)})
    print(json.dumps(rows[-1]), flush=True)
  return rows


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  torch.set_num_threads(os.cpu_count())
  load_before = os.getloadavg()
  rows = op_rows(_REPEATS.value)
  result = {**timing.machine_record(),
            'load_average_before': list(load_before), 'load_average_after': list(os.getloadavg()),
            'versions': {'jax': jax.__version__, 'torch': torch.__version__},
            'torch_threads': torch.get_num_threads(), 'ops': rows}
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, result)


if __name__ == '__main__':
  app.run(main)
