"""Tokenizer benchmark: code utilisation, collisions and time of each semantic-ID method.

  python experiments/bench_tokenizer.py [--embeddings items.npy] [--methods rqvae_fast,...]
      [--set epochs=300,eval_every=25] [--output docs/bench/tokenizer.json]

Without --embeddings it uses a synthetic stand-in for MiniLM item vectors (3,686 unit vectors
of 384 dims: a shared domain direction, Zipf-sized topics and subtopics, anisotropic noise).
Methods: rqvae_fast (anti-collapse remedies on), rqvae_baseline (the fast model with the
remedies off, i.e. the official recipe on a smaller MLP), rqvae_official (the official config;
slow), rqkmeans, rqkmeans_balanced. `--set` overrides RQ-VAE config fields. Every method's
codes go through the official Sinkhorn collision handling; the report compares before/after.
"""

import ast
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

from minirec_jax.infra import host_memory
from minirec_jax.infra import timing
from minirec_jax.infra import io_utils
from minirec_jax.semantic_ids import collisions
from minirec_jax.semantic_ids import report as report_lib
from minirec_jax.semantic_ids import rqkmeans
from minirec_jax.semantic_ids import rqvae

_EMBEDDINGS = flags.DEFINE_string('embeddings', None, 'Item embeddings .npy [n, d].')
_METHODS = flags.DEFINE_list('methods', ['rqvae_fast', 'rqvae_baseline', 'rqkmeans'],
                             'Methods to run.')
_SET = flags.DEFINE_string('set', '', 'RQ-VAE config overrides, e.g. epochs=300,lr=3e-3.')
_SEED = flags.DEFINE_integer('seed', 0, 'PRNG seed.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def minilm_like(n: int = 3686, d: int = 384, seed: int = 0) -> np.ndarray:
  """Synthetic unit vectors `[n, d]` with MiniLM-like cosine statistics (mean about 0.4)."""
  rng = np.random.default_rng(seed)

  def unit(a):
    return a / np.linalg.norm(a, axis=-1, keepdims=True)

  spectrum = 1.0 / np.sqrt(np.arange(1, d + 1))
  basis = np.linalg.qr(rng.normal(size=(d, d)))[0]

  def anisotropic(size):
    return (rng.normal(size=(size, d)) * spectrum) @ basis.T

  topics = unit(anisotropic(40)) * 0.5
  subtopics = unit(anisotropic(400)) * 0.35
  topic_of = rng.integers(0, 40, 400)
  popularity = 1.0 / np.arange(1, 401) ** 0.8
  sub = rng.choice(400, n, p=popularity / popularity.sum())
  x = (unit(rng.normal(size=d)) * 0.6 + topics[topic_of[sub]] + subtopics[sub] +
       unit(anisotropic(n)) * 0.45)
  return unit(x).astype(np.float32)


def _overrides(text: str) -> dict:
  out = {}
  for part in filter(None, text.split(',')):
    key, _, value = part.partition('=')
    out[key.strip()] = ast.literal_eval(value.strip())
  return out


def _run_rqvae(x, name, key):
  config = rqvae.rqvae_config('official' if name == 'rqvae_official' else 'fast')
  if name == 'rqvae_baseline':
    config.update(dict(ae_warmup_epochs=0, reseed_every=0, reseed_until=0))
  config.update(_overrides(_SET.value))
  params, history = rqvae.train_rqvae(x, config, key, log_fn=lambda row: print(
      f"  epoch {row['epoch']}: loss {row['loss']:.5f} collisions "
      f"{row['collision_rate']:.4f} codes used {row['codes_used']}", flush=True))
  codes = np.asarray(rqvae.encode(params, x))
  residuals = np.asarray(rqvae.last_level_residuals(params, x))
  return (codes, residuals, np.asarray(params['codebooks'][-1]),
          float(rqvae.reconstruction_error(params, x)), config.codebook_size)


def _run_rqkmeans(x, name, key):
  fit = rqkmeans.residual_kmeans(x, 3, 256, key, balanced=name == 'rqkmeans_balanced')
  residuals = rqkmeans.last_level_residuals(fit.codebooks, x, fit.codes)
  return (np.asarray(fit.codes), np.asarray(residuals), np.asarray(fit.codebooks[-1]),
          fit.recon_error, 256)


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  x = (np.load(_EMBEDDINGS.value).astype(np.float32) if _EMBEDDINGS.value
       else minilm_like(seed=_SEED.value))
  results = {**timing.machine_record(),
             'embeddings': _EMBEDDINGS.value or 'synthetic minilm_like', 'shape': x.shape,
             'methods': {}}
  for name in _METHODS.value:
    print(f'== {name}', flush=True)
    key = jax.random.key(_SEED.value)
    start = time.perf_counter()
    if name.startswith('rqvae_'):
      codes, residuals, last_book, recon, k = _run_rqvae(x, name, key)
    elif name.startswith('rqkmeans'):
      codes, residuals, last_book, recon, k = _run_rqkmeans(x, name, key)
    else:
      raise app.UsageError(f'unknown method {name!r}')
    fit_s = time.perf_counter() - start
    resolved = collisions.resolve_sinkhorn(codes, residuals, last_book)
    report = report_lib.tokenizer_report(codes, resolved.codes, k, recon_error=recon)
    report.update(fit_seconds=round(fit_s, 1), sinkhorn_rounds=resolved.sinkhorn_rounds,
                  fallback_moves=resolved.fallback_moves, appended=resolved.appended)
    results['methods'][name] = report
    print(report_lib.report_markdown(report))
    print(f'fit {fit_s:.1f} s; Sinkhorn rounds {resolved.sinkhorn_rounds}, fallback moves '
          f'{resolved.fallback_moves}, extra level {resolved.appended}\n', flush=True)
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, json.loads(json.dumps(results, default=list)))


if __name__ == '__main__':
  app.run(main)
