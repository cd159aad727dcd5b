"""Tokenizer report: collisions before/after resolution, per-level code use, reconstruction."""

from __future__ import annotations

import math

import numpy as np

from minirec_jax.semantic_ids.collisions import collision_groups


def collision_stats(codes: np.ndarray) -> dict:
  """Items, distinct SIDs, collision rate (N - #distinct) / N, collided items and groups."""
  codes = np.asarray(codes)
  n = len(codes)
  groups = collision_groups(codes)
  unique = n - sum(len(g) - 1 for g in groups)
  return {'items': n, 'unique_sids': unique, 'collision_rate': (n - unique) / n,
          'collided_items': sum(len(g) for g in groups), 'collision_groups': len(groups),
          'max_group': max((len(g) for g in groups), default=1)}


def level_stats(codes: np.ndarray, codebook_size: int) -> list[dict]:
  """Per level: distinct codes, utilisation (distinct / K), entropy of the histogram / log K."""
  codes = np.asarray(codes)
  rows = []
  for level in range(codes.shape[1]):
    counts = np.bincount(codes[:, level], minlength=codebook_size)
    p = counts[counts > 0] / len(codes)
    entropy = float(-(p * np.log(p)).sum() / math.log(codebook_size))
    rows.append({'level': level, 'codes_used': int((counts > 0).sum()),
                 'utilisation': float((counts > 0).sum() / codebook_size),
                 'entropy': entropy})
  return rows


def tokenizer_report(codes_before: np.ndarray, codes_after: np.ndarray, K: int,  # noqa: N803
                     recon_error: float | None = None) -> dict:
  """Summary of a tokenization: `codes_before` plain codes `[n, L]`, `codes_after` the
  collision-free codes `[n, L]` or `[n, L+1]`, K codes per level."""
  codes_before, codes_after = np.asarray(codes_before), np.asarray(codes_after)
  if codes_before.ndim != 2 or codes_after.ndim != 2 or len(codes_before) != len(codes_after):
    raise ValueError(f'codes must be [n, L] for the same n; got {codes_before.shape} and '
                     f'{codes_after.shape}')
  return {'items': len(codes_before), 'codebook_size': K,
          'before': {**collision_stats(codes_before), 'levels': level_stats(codes_before, K)},
          'after': {**collision_stats(codes_after), 'levels': level_stats(codes_after, K)},
          'recon_error': None if recon_error is None else float(recon_error)}


def report_markdown(report: dict) -> str:
  """The report as Markdown: a collision table and a per-level table."""
  lines = [f"**{report['items']} items, {report['codebook_size']} codes per level**", '',
           '| | distinct SIDs | collision rate | collided items / groups | max group |',
           '|---|---|---|---|---|']
  for when in ('before', 'after'):
    s = report[when]
    lines.append(f"| {when} | {s['unique_sids']} | {s['collision_rate']:.2%} | "
                 f"{s['collided_items']} / {s['collision_groups']} | {s['max_group']} |")
  lines += ['', '| level | codes used (before) | utilisation | entropy / log K | '
            'codes used (after) | utilisation | entropy / log K |', '|---|---|---|---|---|---|---|']
  before, after = report['before']['levels'], report['after']['levels']
  for level in range(max(len(before), len(after))):
    cells = [str(level)]
    for rows in (before, after):
      if level < len(rows):
        r = rows[level]
        cells += [str(r['codes_used']), f"{r['utilisation']:.1%}", f"{r['entropy']:.3f}"]
      else:
        cells += ['-', '-', '-']
    lines.append('| ' + ' | '.join(cells) + ' |')
  if report['recon_error'] is not None:
    lines += ['', f"Reconstruction error (MSE): {report['recon_error']:.6g}"]
  if 'collab' in report:
    lines += ['', collab_markdown(report['collab'])]
  return '\n'.join(lines) + '\n'


def collab_markdown(collab: dict) -> str:
  """One paragraph on the codes' agreement with SASRec (stage.collab_report's fields)."""
  prefix = ' / '.join(f'{c:.3f}' for c in collab['prefix_cf_cosine'])
  knn = next(k for k in collab if k.startswith('knn_overlap@'))
  text = (f"Collaborative ({collab['mode']}; {collab['trained_items']} trained items, "
          f"{collab['untrained_items']} untrained left out): SASRec cosine of item pairs sharing "
          f"their first 1..L codes {prefix} (all pairs {collab['all_pairs_cf_cosine']:.3f}); "
          f"{knn} of z_q vs SASRec {collab[knn]:.3f}")
  if 'collab_loss' in collab:
    text += (f"; contrastive loss {collab['collab_loss']:.4f}, code concentration "
             f"{collab['code_concentration']:.4f}")
  return text + '.'
