"""SFT of the generative recommender: `--config configs/sft.py:dataset=industrial,variant=S`.

Arguments (comma-separated): dataset (a configs/dataset.py name), variant (model size from
minirec_jax/models/variants.py, or for arch=tiger from models/encoder_decoder.py), sids
('official' = the dataset's own index.json SIDs, or 'tokenizer' = a train_tokenizer workdir
given by sids.path), backbone (a pretrained language model instead of our decoder from scratch:
'smollm2-135m', 'gguf:<file>' or 'hf:<folder>'; see minirec_jax/models/backbones.py), arch
('decoder', or 'tiger': TIGER's T5-style encoder-decoder from scratch), tasks (with a backbone:
'next_sid', the short next-SID template only, or 'mix', the five SFT tasks at the budget
`llm.tasks` states), tiny (a seconds-long smoke config).
"""

import os

import ml_collections

from minirec_jax.data import llm_tasks
from minirec_jax.infra.config_utils import data_config, optimizer_config, parse_arg
from minirec_jax.models import backbones

# Each task's share of its examples per epoch in `tasks=mix`. Industrial, SmolLM2 tokenizer,
# short wording, chained next_sid (`python experiments/llm_task_stats.py`): next_sid 240,807
# tokens, alignment 296,027, sid_history_title 1,746,972, title_history_title 5,478,348,
# title_history_sid 4,503,894; these shares add ~226k alignment tokens to next_sid's ~241k.
_MIX = dict(next_sid=1.0, alignment=0.25, sid_history_title=0.03, title_history_title=0.01,
            title_history_sid=0.01)


def _backbone_name(spec: str) -> str:
  """'smollm2-135m' as it is, else the file or folder name of 'gguf:<file>' / 'hf:<folder>'."""
  kind, path = backbones.parse(spec)
  return os.path.basename(os.path.normpath(path)) if path else spec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset='industrial', variant='S', sids='official', backbone='',
                   tasks='next_sid', arch='decoder', tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config(args['dataset'])

  config.sids = ml_collections.ConfigDict()
  config.sids.source = args['sids']      # 'official' | 'tokenizer'
  config.sids.path = ''                  # tokenizer workdir when source == 'tokenizer'

  config.model = ml_collections.ConfigDict()
  config.model.variant = args['variant']
  config.model.width = 0                 # > 0 overrides the variant's width (width sweeps)
  config.model.depth = 0                 # > 0 overrides the variant's depth
  config.model.dtype = 'float32'         # compute dtype: 'float32' | 'bfloat16'
  config.model.backbone = args['backbone']  # '' = our decoder from scratch (variant)
  config.model.arch = args['arch']       # 'decoder' | 'tiger' (the encoder-decoder, from scratch)
  config.model.num_user_buckets = -1     # tiger: hashed user tokens (-1: the variant's)
  config.model.init = 'pretrained'       # with a backbone: 'random' keeps its architecture and
                                         # tokenizer but starts from random weights (a control)

  # The language model's text tasks (used only with a backbone; minirec_jax/data/llm_tasks.py).
  config.llm = ml_collections.ConfigDict()
  config.llm.wording = 'short'           # 'short' | 'official' (the official prompt strings)
  config.llm.eval_wording = ''           # decoding prompt: '' = the training prompt of
                                         # next_sid; 'official_eval' = the official evaluation's
  config.llm.chain_next_sid = True       # short next_sid: one example per chain of a user's rows
  config.llm.tasks = ml_collections.ConfigDict({t: float(t == 'next_sid')
                                                for t in llm_tasks.TASKS})
  config.llm.seed = 42                   # task subsampling and shuffling (the official 42)
  config.llm.cutoff_len = 512            # examples keep their last cutoff_len tokens (0: all)
  config.llm.noise_scale = 0.0           # std of noise on the new SID rows (0: the exact mean)
  config.llm.noise_relative = False      # True: noise_scale in units of the matrix's element std
  config.llm.sid_row_init = 'mean'       # 'titles': each SID token's rows start at the mean
                                         # title-token row of the items using its code
  config.llm.catalogue_tokens_only = False  # add only the SID codes the catalogue uses
  config.llm.category_phrase = ''        # official title-history prompts ('': the dataset's)
  config.llm.sid_softmax = False         # True: the head scores only the SID and terminator
                                         # rows (training, decoding, GRPO); SID-answer tasks only

  config.train = ml_collections.ConfigDict()
  config.train.seq_len = 128             # packed sequence length in tokens
  config.train.batch_size = 32           # packed sequences per step
  config.train.epochs = 8                # the protocol of docs/RESULTS.md's 3-seed rows
  config.train.data_fraction = 1.0       # < 1: train on the first fraction of train rows
  config.train.eval_every_steps = 0      # 0: once per epoch
  config.train.trainable_layers = -1     # -1: train all; N >= 0: only a backbone's new SID
                                         # rows and its top N blocks (the rest frozen)
  config.train.new_rows_lr_scale = 1.0   # a backbone's new SID rows train at this x optim.lr

  config.optim = optimizer_config(lr=1e-3, warmup_steps=100, final_fraction=0.1,
                                  weight_decay=0.1, b2=0.98, clip_norm=1.0)

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'valid'            # checkpoints are chosen on this split ('test' is refused)
  config.eval.beam_size = 50
  config.eval.batch_size = 256
  config.eval.ks = (1, 3, 5, 10, 20, 50)
  config.eval.select_by = 'ndcg@10'      # best checkpoint by 'ndcg@10' (beam search) or 'loss'
  config.eval.max_examples = 500         # > 0: select checkpoints on a prefix of the split
  config.eval.report_max_examples = 0    # > 0: final report on a prefix (smoke runs only)
  config.eval.valid_report_max_examples = -1  # >= 0: valid's report rows (-1: as above)
  config.eval.report_splits = ('valid', 'test')  # ablations: ('valid',), test never decoded

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.keep = 2
  config.ckpt.every_steps = 0            # > 0: also save `latest` every N steps (resume)

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 50
  config.log.tensorboard = False

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0            # 0: all devices
  config.mesh.fsdp = 1                   # > 1: shard params/optimizer over an 'fsdp' axis

  if args['tasks'] not in ('next_sid', 'mix'):
    raise ValueError(f"tasks must be 'next_sid' or 'mix', got {args['tasks']!r}")
  if args['tasks'] == 'mix':
    config.llm.tasks.update(_MIX)
  if args['backbone']:
    # A pretrained model fine-tuned for a stated token budget on CPU (issue 16): a few epochs of
    # the short template, checkpoints chosen on a 500-row valid prefix.
    config.model.variant = _backbone_name(args['backbone'])
    # New SID rows at the mean row plus noise of the embedding's own element std: distinct from
    # step 0 (exact means leave a history's SID tokens identical; docs/RESULTS.md, run e).
    config.llm.noise_scale = 1.0
    config.llm.noise_relative = True
    config.train.seq_len = 256
    config.train.batch_size = 8
    config.train.epochs = 2
    config.optim = optimizer_config(lr=3e-4, warmup_steps=20, final_fraction=0.1,
                                    weight_decay=0.0, clip_norm=1.0)
    config.eval.batch_size = 16
    config.eval.valid_report_max_examples = 500  # the full test split is reported once
    if args['tasks'] == 'mix':  # title-history examples reach cutoff_len
      config.train.seq_len = 512
      config.train.batch_size = 4
  if args['arch'] == 'tiger':
    # One example per train row (no chained sequences): TIGER's batch of 256.
    config.train.batch_size = 256
  if args['tiny']:
    config.model.variant = _backbone_name(args['backbone']) if args['backbone'] else 'tiny'
    config.train.seq_len = 64
    config.train.batch_size = 8
    config.train.epochs = 1
    config.optim.warmup_steps = 2
    config.eval.beam_size = 10
    config.eval.batch_size = 16
    config.eval.ks = (1, 5, 10)
    config.eval.max_examples = 32
    config.eval.report_max_examples = 32
    config.eval.valid_report_max_examples = -1
    config.log.every_steps = 1
  return config
