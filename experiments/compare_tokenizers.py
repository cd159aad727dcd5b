"""Tokenizers side by side: their code statistics and the SFT trained on each, on valid.

  python experiments/compare_tokenizers.py \
      --runs=rqvae:workdirs/sft_tok_rqvae,letter:workdirs/sft_tok_letter,official:workdirs/sft_off \
      --baseline=rqvae [--split=valid] [--ks=3,10] [--output=tokenizers.json]

Each run is an SFT workdir (ablation runs: `--config.eval.report_splits="('valid',)"`, so test is
never decoded); its tokenizer is the one its config.json names (`sids.path`'s report.json), or
the official SIDs. Prints one Markdown row per run: collisions before resolution, codes used and
entropy per level, reconstruction error, fit seconds, then item-level HR/NDCG@K on the split with
the paired difference from the baseline (+- standard error over the shared rows).
"""

import dataclasses
import sys

from absl import app
from absl import flags

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import tokenizer_comparison
from minirec_jax.infra import io_utils
from minirec_jax.loops import artifacts

_RUNS = flags.DEFINE_list('runs', None, 'name:sft_workdir pairs, in table order.',
                          required=True)
_BASELINE = flags.DEFINE_string('baseline', None, 'Name of the baseline run.', required=True)
_SPLIT = flags.DEFINE_string('split', 'valid', 'Split whose predictions are compared.')
_KS = flags.DEFINE_list('ks', ['3', '10'], 'Cut-offs K.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON output path.')


def main(argv):
  del argv
  runs = {}
  for entry in _RUNS.value:
    name, sep, workdir = entry.partition(':')
    if not sep or not name or not workdir:
      print(f'error: --runs entry {entry!r} is not name:workdir', file=sys.stderr)
      sys.exit(1)
    runs[name] = workdir
  ks = [int(k) for k in _KS.value]
  try:
    rows = tokenizer_comparison.compare_tokenizers(runs, _BASELINE.value, artifacts.workdir_config,
                                                   split=_SPLIT.value, ks=ks)
  except (DataError, ValueError) as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(1)
  print(tokenizer_comparison.comparison_markdown(rows, ks, _SPLIT.value))
  if _OUTPUT.value:
    io_utils.write_json(_OUTPUT.value, {
        'baseline': _BASELINE.value, 'split': _SPLIT.value,
        'rows': [dataclasses.asdict(row) for row in rows]})


if __name__ == '__main__':
  app.run(main)
