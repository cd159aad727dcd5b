"""The end-to-end pipeline: `--config configs/pipeline.py[:dataset=industrial]`.

Arguments (comma-separated): dataset (a config_utils.data_config preset; default ml100k, or
synthetic with tiny), scale ('quick': reduced sizes for a CPU run; 'paper': the stage configs'
defaults, i.e. the paper's recipe; default quick for ml100k/ml100k_loo/synthetic, paper for
industrial/office), tiny (synthetic data and tiny models: a test-sized run), backbone (the SFT
and GRPO policy is a pretrained language model extended with SID tokens: 'smollm2-135m',
'gguf:<file>' or 'hf:<folder>'; see configs/sft.py), tiger (also train TIGER's encoder-decoder
on the same SIDs: a `tiger` section, configs/sft.py with arch=tiger, and a TIGER table row).

The sections are the stage configs (configs/{dataset,tokenizer,sft,sasrec,grpo}.py; popularity
and bpr are configs/sasrec.py with variant=pop and variant=bpr) and every field is overridable, e.g.
`--config.sft.train.epochs=3 --config.grpo.train.steps=20`. All stages share one data section:
`config.dataset.data` is the same object as `config.sft.data` etc., so overriding it through
any of them changes it for every stage. Paths left empty are
filled with this pipeline's own stage folders (sft.sids.path, grpo.init_from, and
grpo.grpo.reward_model, this pipeline's SASRec, when grpo.grpo.rewards.collab > 0).
"""

import ml_collections

from minirec_jax.evaluation import ranking
from minirec_jax.infra.config_utils import load_config, parse_arg

_PAPER_DATASETS = ('industrial', 'office')


def _quick(config: ml_collections.ConfigDict) -> None:
  """Reduced sizes that run MovieLens-100K end to end on a few CPU cores."""
  config.tokenizer.rqvae.overrides.update({'epochs': 200, 'ae_warmup_epochs': 40,
                                           'reseed_until': 150})
  config.sft.model.variant = 'XS'
  config.sft.train.epochs = 1
  if 'tiger' in config:
    config.tiger.model.variant = 'XS'
    config.tiger.train.epochs = 1
  for stage in ('sft', 'grpo', 'tiger'):
    if stage not in config:
      continue
    config[stage].eval.beam_size = 20
    config[stage].eval.max_examples = 500        # valid rows that pick the best checkpoint
    config[stage].eval.report_max_examples = 2000  # the table's test rows
  config.sasrec.train.epochs = 40
  config.grpo.grpo.group_size = 8
  config.grpo.train.steps = 10
  config.grpo.train.prompts_per_step = 16
  config.grpo.train.eval_every_steps = 5


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset='', scale='', tiny=False, backbone='', tiger=False)
  dataset = args['dataset'] or ('synthetic' if args['tiny'] else 'ml100k')
  scale = args['scale'] or ('paper' if dataset in _PAPER_DATASETS else 'quick')
  if scale not in ('quick', 'paper'):
    raise ValueError(f"scale must be 'quick' or 'paper', got {scale!r}")
  tiny = ',tiny' if args['tiny'] else ''

  config = ml_collections.ConfigDict()
  config.dataset = load_config(f'configs/dataset.py:{dataset}')
  # The tokenizer chosen on valid (docs/RESULTS.md, "Collaborative semantic IDs"): RQ-VAE with
  # LETTER's collaborative terms, reading this pipeline's SASRec stage (which then runs first).
  config.tokenizer = load_config(
      f'configs/tokenizer.py:dataset={dataset},method=rqvae,collab=letter{tiny}')
  backbone = f',backbone={args["backbone"]}' if args['backbone'] else ''
  config.sft = load_config(f'configs/sft.py:dataset={dataset},sids=tokenizer{backbone}{tiny}')
  # SASRec in the RecBole configuration: the stronger baseline row, and the collaborative
  # reward model GRPO's default recipe was chosen with (official: variant=official).
  config.sasrec = load_config(f'configs/sasrec.py:dataset={dataset},variant=recbole{tiny}')
  config.popularity = load_config(f'configs/sasrec.py:dataset={dataset},variant=pop{tiny}')
  config.bpr = load_config(f'configs/sasrec.py:dataset={dataset},variant=bpr{tiny}')
  config.grpo = load_config(f'configs/grpo.py{":tiny" if tiny else ""}')
  if args['tiger']:
    config.tiger = load_config(f'configs/sft.py:dataset={dataset},sids=tokenizer,arch=tiger{tiny}')
  for stage in ('tokenizer', 'sft', 'sasrec', 'popularity', 'bpr', 'tiger'):
    if stage in config:
      config[stage].data = config.dataset.data
  config.evaluation = ml_collections.ConfigDict({'ks': ranking.DEFAULT_KS, 'split': 'test'})
  if scale == 'quick' and not tiny:
    _quick(config)
  if args['tiny'] and args['backbone']:
    # A real pretrained model costs ~100x the tiny decoder per token: a few SFT steps.
    config.sft.train.data_fraction = 0.1
  return config
