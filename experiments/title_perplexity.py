"""Text perplexity of item titles before and after SFT: how much language the backbone forgets.

  python experiments/title_perplexity.py --workdir=workdirs/sft_industrial_smollm2 \
      [--num_titles=300] [--output=title_ppl.json]
  python experiments/title_perplexity.py \
      --config=configs/sft.py:dataset=industrial,sids=tokenizer,backbone=smollm2-135m \
      --config.sids.path=workdirs/tok_ind_rqvae [--backbone=smollm2-135m]

Scores the first --num_titles item titles of the dataset under
  pretrained  the backbone as loaded (`backbones.load`);
  extended    the same with the SID tokens added at initialisation (`vocab_extension.extend`
              with the config's llm settings and seed): the SFT starting point, whose softmax
              also spreads mass over the new SID rows;
  trained     with --workdir only: the SFT or GRPO workdir's reported parameters.
With --workdir, the backbone, dataset, SIDs and extension come from the workdir's SFT config
(--config and --backbone are not used); without it, from --config, and the backbone from
--backbone (default: the config's model.backbone, else smollm2-135m).

Each title is encoded with the model's own tokenizer without special tokens and preceded by
the tokenizer's eos token as a document separator, so every title token, the first included,
is scored given only that separator. Empty titles are skipped. Prints a table and writes
--output (JSON, with the machine record).
"""

import dataclasses
import sys
import time

from absl import app
from absl import flags
from ml_collections import config_flags

from minirec_jax.data.errors import DataError
from minirec_jax.evaluation import language
from minirec_jax.infra import host_memory
from minirec_jax.infra import io_utils
from minirec_jax.infra import timing
from minirec_jax.loops import artifacts
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import backbones

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'SFT config (configs/sft.py) giving the dataset, SIDs and extension; '
    'needed without --workdir.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'A train_sft or train_grpo workdir of a '
                               'backbone: adds its reported parameters as the trained model.')
_BACKBONE = flags.DEFINE_string('backbone', None, 'Backbone spec without --workdir (default: '
                                f"the config's model.backbone, else {backbones.SMOLLM2}).")
_NUM_TITLES = flags.DEFINE_integer('num_titles', 300, 'Score the first N item titles.')
_BATCH_SIZE = flags.DEFINE_integer('batch_size', 16, 'Titles per forward pass.')
_OUTPUT = flags.DEFINE_string('output', None, 'Optional JSON path for the record.')


def _score(name: str, model_config, params, tokenizer, titles: list[str]) -> dict:
  """One model's likelihood of `titles`, each encoded after the eos separator, over the whole
  vocabulary (a head restricted to SID rows by `llm.sid_softmax` scores text too)."""
  model_config = dataclasses.replace(model_config, output_rows=())
  if tokenizer.eos_id is None:
    raise DataError(f'tokenizer {tokenizer.source} has no eos token to separate the titles')
  ids = [tokenizer.encode(t, add_special_tokens=False) for t in titles]
  start = time.perf_counter()
  result = language.negative_log_likelihood(model_config, params, ids,
                                            batch_size=_BATCH_SIZE.value,
                                            prefix_id=tokenizer.eos_id)
  return {'model': name, 'vocab_size': model_config.vocab_size, 'dtype': model_config.dtype,
          'titles': len(ids), 'tokens': result.tokens, 'nll': result.nll,
          'nll_per_token': result.nll_per_token, 'perplexity': result.perplexity,
          'seconds': time.perf_counter() - start}


def _models(titles_of) -> tuple[list[dict], dict]:
  """The scored models and what they came from; `titles_of(dataset)` picks the titles."""
  if _WORKDIR.value:
    policy = artifacts.load_policy(_WORKDIR.value)
    lm = policy.setup.language_model
    if lm is None:
      raise DataError('not a backbone workdir (model.backbone is empty): its decoder has no '
                      'text vocabulary', path=_WORKDIR.value)
    sft = policy.sft_config
    titles = titles_of(policy.setup.dataset)
    raw = backbones.load(sft.model.backbone, sft.model.dtype)
    models = [_score('pretrained', raw.config, raw.params, raw.tokenizer, titles),
              _score('extended', policy.setup.model_config, lm.params, lm.tokenizer, titles),
              _score(f'trained ({policy.name})', policy.setup.model_config, policy.params,
                     lm.tokenizer, titles)]
    source = {'workdir': _WORKDIR.value, 'backbone': sft.model.backbone,
              'dataset': policy.setup.dataset.name}
    return models, source
  config = _CONFIG.value
  if config is None:
    raise app.UsageError('give --workdir, or --config for the dataset and SIDs')
  spec = _BACKBONE.value or config.model.get('backbone') or backbones.SMOLLM2
  config = config.copy_and_resolve_references()
  config.model.backbone = spec
  s = sft_loop.setup(config)  # the SFT starting point, as training builds it
  dataset, lm = s.dataset, s.language_model
  titles = titles_of(dataset)
  raw = backbones.load(spec, config.model.dtype)
  models = [_score('pretrained', raw.config, raw.params, raw.tokenizer, titles),
            _score('extended', s.model_config, lm.params, lm.tokenizer, titles)]
  return models, {'workdir': None, 'backbone': spec, 'dataset': dataset.name}


def _table(models: list[dict]) -> str:
  lines = [f"{'model':<22}{'vocab':>8}{'titles':>8}{'tokens':>9}{'nll/token':>11}"
           f"{'perplexity':>12}{'seconds':>9}"]
  for m in models:
    lines.append(f"{m['model']:<22}{m['vocab_size']:>8,}{m['titles']:>8}{m['tokens']:>9,}"
                 f"{m['nll_per_token']:>11.4f}{m['perplexity']:>12.2f}{m['seconds']:>9.1f}")
  return '\n'.join(lines)


def main(argv):
  host_memory.use_huge_pages(__file__)
  del argv
  if _NUM_TITLES.value < 1:
    raise app.UsageError('--num_titles must be >= 1')
  picked = {}

  def titles_of(dataset) -> list[str]:
    first = list(dataset.items.title[:_NUM_TITLES.value])
    titles = [t for t in first if t.strip()]
    picked.update(requested=_NUM_TITLES.value, items=len(first),
                  skipped_empty=len(first) - len(titles))
    if not titles:
      raise DataError(f'the first {len(first)} items of {dataset.name} have no titles')
    return titles

  try:
    models, source = _models(titles_of)
  except DataError as exc:
    print(f'error: {exc}', file=sys.stderr)
    sys.exit(2)
  print(f"{source['dataset']}: first {picked['items']} item titles ({picked['skipped_empty']} "
        f"empty skipped), backbone {source['backbone']}, each title after eos")
  print(_table(models))
  if _OUTPUT.value:
    record = {**source, 'titles': picked, 'separator': 'eos', 'models': models,
              **timing.machine_record()}
    io_utils.write_json(_OUTPUT.value, record)


if __name__ == '__main__':
  app.run(main)
