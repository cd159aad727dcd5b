"""The semantic-ID stage: item embeddings -> RQ-VAE or RQ-KMeans codes -> collision-free SIDs.

Writes to a workdir: `sids.npz` (the item -> SID table read by `catalogue.load_sids`),
`trie.npz`, `report.json` / `report.md` (collisions before/after, per-level utilisation and
entropy, reconstruction error, timings, and with a SASRec table the codes' agreement with it
under 'collab'), the tokenizer's parameters (`tokenizer_params.npz`) and `config.json`.
"""

from __future__ import annotations

import os
import time
from typing import Callable

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from minirec_jax.data import loading
from minirec_jax.infra import io_utils
from minirec_jax.semantic_ids import catalogue
from minirec_jax.semantic_ids import collaborative
from minirec_jax.semantic_ids import collisions
from minirec_jax.semantic_ids import embeddings as embeddings_lib
from minirec_jax.semantic_ids import report as report_lib
from minirec_jax.semantic_ids import rqkmeans
from minirec_jax.semantic_ids import rqvae
from minirec_jax.semantic_ids import text_encoder
from minirec_jax.semantic_ids import trie as trie_lib


EncoderLoader = Callable[[str], embeddings_lib.Encoder]


def item_vectors(config: ml_collections.ConfigDict, dataset: loading.Dataset,
                 load_encoder: EncoderLoader | None = None) -> np.ndarray:
  """Embeddings of the item texts (cached): by a packaged sentence encoder when
  `embeddings.source` is a key of `text_encoder.MODELS` ('minilm', 'mpnet'), a user-supplied
  .npy for 'npy', else by `load_encoder(source)` (a language-model backbone spec read by
  `models.lm_embeddings.MeanPoolEncoder`, which the binaries pass in)."""
  source = config.embeddings.source
  if source == 'npy':
    return embeddings_lib.load_user_embeddings(config.embeddings.path, dataset.num_items)
  if source in text_encoder.MODELS:
    encoder = source
  elif load_encoder is not None:
    encoder = load_encoder(source)
  else:
    raise ValueError(f"embeddings.source={source!r} is not one of {', '.join(text_encoder.MODELS)}"
                     " or 'npy'; a language-model source needs an encoder loader "
                     '(models.lm_embeddings.MeanPoolEncoder)')
  cache = config.embeddings.cache_dir or os.path.join(
      os.environ.get('MINIREC_CACHE', os.path.join(os.getcwd(), '.cache')), 'embeddings')
  return embeddings_lib.item_embeddings(dataset.items, dataset.name, cache, encoder)


def collab_targets(config: ml_collections.ConfigDict, dataset: loading.Dataset,
                   load_table: collaborative.TableLoader | None,
                   ) -> collaborative.Targets | None:
  """SASRec's item embeddings (read by `load_table`) and trained-item mask when
  `config.collab` uses them, or only measures them (mode 'none' with a sasrec_workdir); else
  None."""
  collab = config.collab
  if collab.mode not in collaborative.MODES:
    raise ValueError(f'collab.mode must be one of {collaborative.MODES}, got {collab.mode!r}')
  if collab.mode == 'letter' and config.method != 'rqvae':
    raise ValueError(f"collab.mode='letter' regularises the RQ-VAE; method is {config.method!r}")
  if not collab.sasrec_workdir:
    if collab.mode != 'none':
      raise ValueError(f'collab.mode={collab.mode!r} needs collab.sasrec_workdir')
    return None
  if load_table is None:
    raise ValueError('collab.sasrec_workdir is set: pass the stage a SASRec table loader '
                     '(loops.artifacts.sasrec_item_embeddings)')
  return collaborative.load_targets(collab.sasrec_workdir, dataset, load_table)


def fit_codes(config, x: np.ndarray, key,
              collab: collaborative.Regulariser | None = None,
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, dict]:
  """(plain codes [n, L], last-level residuals [n, e], last codebook [K, e], recon MSE, params);
  `collab` regularises the RQ-VAE."""
  if config.method == 'rqvae':
    rq_config = rqvae.rqvae_config(config.rqvae.preset)
    rq_config.update({k: v for k, v in config.rqvae.overrides.items()})
    params, history = rqvae.train_rqvae(
        x, rq_config, key, log_fn=lambda row: logging.info('rq-vae %s', row), collab=collab)
    codes = np.asarray(rqvae.encode(params, x))
    residuals = np.asarray(rqvae.last_level_residuals(params, x))
    last_book = np.asarray(params['codebooks'][-1])
    recon = float(rqvae.reconstruction_error(params, x))
    return codes, residuals, last_book, recon, {'params': params, 'history': history}
  if config.method == 'rqkmeans':
    result = rqkmeans.residual_kmeans(x, config.num_levels, config.codebook_size, key,
                                      balanced=config.rqkmeans.balanced)
    codes = np.asarray(result.codes)
    residuals = np.asarray(rqkmeans.last_level_residuals(result.codebooks, x, result.codes))
    return (codes, residuals, np.asarray(result.codebooks[-1]), float(result.recon_error),
            {'params': {'codebooks': result.codebooks}, 'history': []})
  raise ValueError(f"method must be 'rqvae' or 'rqkmeans', got {config.method!r}")


def collab_report(config: ml_collections.ConfigDict, x: np.ndarray, codes: np.ndarray,
                  params: dict, targets: collaborative.Targets,
                  regulariser: collaborative.Regulariser | None) -> dict:
  """The plain codes' agreement with SASRec (`collaborative.alignment_metrics`) and, for
  'letter', the regulariser's terms over all items under the returned params."""
  quantized = collaborative.quantized_from_codes(params['codebooks'], codes)
  report = {'mode': config.collab.mode, 'sasrec_workdir': config.collab.sasrec_workdir,
            'trained_items': int(targets.trained.sum()),
            'untrained_items': int((~targets.trained).sum()),
            **collaborative.alignment_metrics(codes, quantized, targets)}
  if regulariser is not None:
    batch = collaborative.Batch(jnp.asarray(x), jnp.asarray(targets.embeddings),
                                jnp.asarray(targets.trained))
    terms = rqvae.regulariser_terms(params, batch, regulariser.settings)
    report.update({k: float(v) for k, v in terms.items()})
  return report


def run(config: ml_collections.ConfigDict, workdir: str,
        load_table: collaborative.TableLoader | None = None,
        load_encoder: EncoderLoader | None = None) -> dict:
  """Runs the stage into `workdir`; returns the report. `load_table` reads the SASRec item
  table of `config.collab.sasrec_workdir` (`loops.artifacts.sasrec_item_embeddings`);
  `load_encoder` a language-model embeddings source (`item_vectors`)."""
  os.makedirs(workdir, exist_ok=True)
  io_utils.write_text(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  dataset = loading.load(config.data)
  targets = collab_targets(config, dataset, load_table)
  regulariser = None
  if config.collab.mode == 'letter':
    regulariser = collaborative.Regulariser(collaborative.Settings(
        config.collab.weight, config.collab.temperature, config.collab.diversity_weight), targets)
  t0 = time.perf_counter()
  x = item_vectors(config, dataset, load_encoder)
  if config.collab.mode == 'fuse':
    x = collaborative.fused_inputs(x, targets, config.collab.fuse_weight)
  t1 = time.perf_counter()
  plain, residuals, last_book, recon, fitted = fit_codes(config, x, jax.random.key(config.seed),
                                                         regulariser)
  t2 = time.perf_counter()
  k = config.codebook_size
  if config.collisions == 'sinkhorn':
    resolution = collisions.resolve_sinkhorn(plain, residuals, last_book)
    codes = resolution.codes
    extra = {'sinkhorn_rounds': resolution.sinkhorn_rounds,
             'fallback_moves': resolution.fallback_moves,
             'extra_level_appended': resolution.appended}
  elif config.collisions == 'extra_code':
    codes = collisions.append_rank(plain, k) if collisions.collision_groups(plain) else plain
    extra = {'extra_level_appended': codes.shape[1] > plain.shape[1]}
  else:
    raise ValueError(f"collisions must be 'sinkhorn' or 'extra_code', got {config.collisions!r}")
  report = report_lib.tokenizer_report(plain, codes, k, recon_error=recon)
  report.update(extra)
  report['timing_s'] = {'embeddings': t1 - t0, 'fit': t2 - t1,
                        'collisions': time.perf_counter() - t2}
  report['method'] = config.method
  if targets is not None:
    report['collab'] = collab_report(config, x, plain, fitted['params'], targets, regulariser)
  table = catalogue.SidCatalogue.from_codes(codes, k)
  catalogue.save(os.path.join(workdir, catalogue.SIDS_FILE), table)
  trie_lib.save(os.path.join(workdir, 'trie.npz'), trie_lib.build_trie(codes, k))
  flat = {'/'.join(str(getattr(p, 'key', p)) for p in path): np.asarray(v)
          for path, v in jax.tree_util.tree_flatten_with_path(fitted['params'])[0]}
  with io_utils.atomic_path(os.path.join(workdir, 'tokenizer_params.npz')) as tmp:
    with open(tmp, 'wb') as f:
      np.savez(f, **flat)
  io_utils.write_json(os.path.join(workdir, 'report.json'),
                      {**report, 'history': fitted['history']})
  io_utils.write_text(os.path.join(workdir, 'report.md'), report_lib.report_markdown(report) + '\n')
  return report
