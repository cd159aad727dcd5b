"""Reads a sweep's workdirs, fits scaling laws, writes plots (PNG) and a Markdown table.

  python experiments/sweep_report.py --root=workdirs/sweep --output=docs/sweep

Per run: (active) non-embedding parameters N, training compute C = train FLOPs/token x tokens seen,
the best validation loss, and test HR@10/NDCG@10 of the kept checkpoint. Fits: loss vs N and
loss vs C (power laws with 95% intervals), and loss vs (N, D) when several data fractions
were run. Plots need matplotlib (`pip install matplotlib`; not a runtime dependency).
"""

import glob
import json
import os

from absl import app
from absl import flags

from minirec_jax.evaluation import scaling
from minirec_jax.infra import io_utils
from minirec_jax.infra import metric_logging
from minirec_jax.loops import artifacts

_ROOT = flags.DEFINE_string('root', 'workdirs/sweep', 'Sweep folder.')
_OUTPUT = flags.DEFINE_string('output', 'docs/sweep', 'Folder for plots, table and fits.')


def collect(root: str) -> list[dict]:
  rows = []
  for results_path in sorted(glob.glob(os.path.join(root, '*', 'results.json'))):
    workdir = os.path.dirname(results_path)
    with open(results_path) as f:
      results = json.load(f)
    config = artifacts.workdir_config(workdir)
    metrics = metric_logging.read_metrics(workdir)
    model = next(m for m in metrics if 'model/non_embedding_params' in m)
    losses = [m['valid/loss'] for m in metrics if 'valid/loss' in m]
    train_rows = [m for m in metrics if 'train/loss' in m]
    steps = max((m['step'] for m in train_rows), default=0)
    tokens = steps * config.train.batch_size * config.train.seq_len
    rows.append({
        'run': os.path.basename(workdir), 'width': model.get('model/width', None),
        # Active parameters (equal to all non-embedding ones for dense models), so dense and
        # mixture-of-experts runs compare at matched per-token size.
        'non_embedding_params': model.get('model/active_non_embedding_params',
                                          model['model/non_embedding_params']),
        'variant': config.model.get('variant'),
        'params': model['model/params'], 'data_fraction': config.train.get('data_fraction', 1.0),
        'tokens': tokens, 'compute': model['model/train_flops_per_token'] * tokens,
        'best_valid_loss': min(losses), 'test_hr@10': results['test']['hr@10'],
        'test_ndcg@10': results['test']['ndcg@10']})
  return rows


def plot(rows, fits, folder):
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.ticker
  import matplotlib.pyplot as plt
  full = [r for r in rows if r['data_fraction'] == max(x['data_fraction'] for x in rows)]
  panels = [('non_embedding_params', 'best_valid_loss', 'loss_vs_params.png', 'params'),
            ('compute', 'best_valid_loss', 'loss_vs_compute.png', 'compute'),
            ('non_embedding_params', 'test_hr@10', 'hr10_vs_params.png', None)]
  for x_key, y_key, name, fit_key in panels:
    fig, ax = plt.subplots(figsize=(5, 3.5))
    data = full if fit_key != 'compute' else rows
    xs = [r[x_key] for r in data]
    ax.plot(xs, [r[y_key] for r in data], 'o')
    if fit_key and fit_key in fits:
      grid, fit = sorted(xs), fits[fit_key]
      ax.plot(grid, scaling.predict(fit, grid), '-',
              label=f"alpha={fit['alpha']:.3f}±{1.96 * fit['alpha_stderr']:.3f}")
      ax.legend()
    ax.set_xscale('log')
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # unreadable when dense
    ax.set_xlabel(x_key.replace('_', ' '))
    ax.set_ylabel(y_key.replace('_', ' '))
    fig.tight_layout()
    with io_utils.atomic_path(os.path.join(folder, name)) as tmp:
      fig.savefig(tmp, dpi=120, format='png')
    plt.close(fig)


def main(argv):
  del argv
  rows = collect(_ROOT.value)
  if len(rows) < 2:
    raise SystemExit(f'need >= 2 finished runs under {_ROOT.value}, found {len(rows)}')
  full = [r for r in rows if r['data_fraction'] == max(x['data_fraction'] for x in rows)]
  fits = {}
  if len(full) >= 2:
    fits['params'] = scaling.fit_power_law([r['non_embedding_params'] for r in full],
                                           [r['best_valid_loss'] for r in full])
  fits['compute'] = scaling.fit_power_law([r['compute'] for r in rows],
                                          [r['best_valid_loss'] for r in rows])
  if (len({r['data_fraction'] for r in rows}) > 1
      and len({r['non_embedding_params'] for r in rows}) > 1):
    fits['params_and_data'] = scaling.fit_two_variable(
        [r['non_embedding_params'] for r in rows], [r['tokens'] for r in rows],
        [r['best_valid_loss'] for r in rows])
  os.makedirs(_OUTPUT.value, exist_ok=True)
  lines = ['| run | non-emb params | data | tokens | compute (FLOPs) | best valid loss | '
           'test HR@10 | test NDCG@10 |', '|---|---|---|---|---|---|---|---|']
  for r in sorted(rows, key=lambda r: (r['data_fraction'], r['non_embedding_params'])):
    lines.append(f"| {r['run']} | {r['non_embedding_params']:,} | {r['data_fraction']} | "
                 f"{r['tokens']:,} | {r['compute']:.3g} | {r['best_valid_loss']:.4f} | "
                 f"{r['test_hr@10']:.4f} | {r['test_ndcg@10']:.4f} |")
  table = '\n'.join(lines)
  io_utils.write_text(os.path.join(_OUTPUT.value, 'table.md'), table + '\n')
  io_utils.write_json(os.path.join(_OUTPUT.value, 'fits.json'), fits)
  print(table)
  print(json.dumps(fits, indent=2))
  try:
    plot(rows, fits, _OUTPUT.value)
  except ImportError:
    print('matplotlib is not installed: no plots (pip install matplotlib)')


if __name__ == '__main__':
  app.run(main)
