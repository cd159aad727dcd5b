"""SFT of the generative recommender: `--config configs/sft.py:dataset=industrial,variant=S`.

Arguments (comma-separated): dataset (a configs/dataset.py name), variant (model size from
minirec_jax/models/variants.py), sids ('official' = the dataset's own index.json SIDs, or
'tokenizer' = a train_tokenizer workdir given by sids.path), tiny (a seconds-long smoke config).
"""

import ml_collections

from minirec_jax.infra.config_utils import data_config, optimizer_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset='industrial', variant='S', sids='official', tiny=False)
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

  config.train = ml_collections.ConfigDict()
  config.train.seq_len = 128             # packed sequence length in tokens
  config.train.batch_size = 32           # packed sequences per step
  config.train.epochs = 20
  config.train.data_fraction = 1.0       # < 1: train on the first fraction of train rows
  config.train.eval_every_steps = 0      # 0: once per epoch

  config.optim = optimizer_config(lr=1e-3, warmup_steps=100, final_fraction=0.1,
                                  weight_decay=0.01, b2=0.98, clip_norm=1.0)

  config.eval = ml_collections.ConfigDict()
  config.eval.split = 'valid'            # checkpoints are chosen on this split ('test' is refused)
  config.eval.beam_size = 50
  config.eval.batch_size = 256
  config.eval.ks = (1, 3, 5, 10, 20, 50)
  config.eval.select_by = 'ndcg@10'      # best checkpoint by 'ndcg@10' (beam search) or 'loss'
  config.eval.max_examples = 0           # > 0: select checkpoints on a prefix of the split
  config.eval.report_max_examples = 0    # > 0: final report on a prefix (smoke runs only)

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.keep = 2
  config.ckpt.every_steps = 0            # > 0: also save `latest` every N steps (resume)

  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 50
  config.log.tensorboard = False

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0            # 0: all devices
  config.mesh.fsdp = 1                   # > 1: shard params/optimizer over an 'fsdp' axis

  if args['tiny']:
    config.model.variant = 'tiny'
    config.train.seq_len = 64
    config.train.batch_size = 8
    config.train.epochs = 1
    config.optim.warmup_steps = 2
    config.eval.beam_size = 10
    config.eval.batch_size = 16
    config.eval.ks = (1, 5, 10)
    config.eval.max_examples = 32
    config.eval.report_max_examples = 32
    config.log.every_steps = 1
  return config
