"""SASRec and the classic baselines.

  --config configs/sasrec.py:dataset=industrial,variant=recbole

Arguments (comma-separated): dataset (a config_utils.data_config preset: industrial, office,
ml100k, ml100k_loo, synthetic), variant, seed, tiny (a seconds-long smoke run).

Variants:
  official  MiniOneRec's SASRec: hidden 32, 1 block, 1 head, dropout 0.3, history
            <= 10, BCE vs one random negative, Adam 1e-3 (eps 1e-8, coupled L2 1e-5), batch
            1024, early stop after > 20 epochs without a better valid NDCG@20.
  recbole   RecBole 1.2.1 SASRec defaults: 2 layers, 2 heads, hidden 64, inner 256, dropout 0.5,
            GELU, CE over all items, Adam 1e-3, batch 2048, history <= the dataset's (50 for
            ml100k_loo, 10 for the official data), early stop after > 10 epochs without a
            better valid NDCG@10.
  bpr       BPR-MF (dim 64, user = mean of history item embeddings; model.user_repr='id' for
            per-user vectors), Adam 1e-3, batch 2048, same early stopping as recbole.
  pop       most popular training targets (no training).
"""

import ml_collections

from minirec_jax.infra.config_utils import data_config, parse_arg
from minirec_jax.models import sasrec


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset='industrial', variant='recbole', seed=0, tiny=False)
  variant = args['variant']
  config = ml_collections.ConfigDict()
  config.seed = args['seed']
  config.data = data_config(args['dataset'])

  config.model = ml_collections.ConfigDict()
  config.model.variant = variant         # 'official' | 'recbole' | 'bpr' | 'pop'
  if variant in sasrec.PRESETS:
    config.model.update(sasrec.PRESETS[variant])
    config.model.dropout_rng = 'hash'    # 'hash' (fast on CPU) | 'jax' (flax nn.Dropout)
  elif variant == 'bpr':
    config.model.dim = 64
    config.model.user_repr = 'history'   # 'history' (mean item embedding) | 'id'
  elif variant != 'pop':
    raise ValueError(f"unknown variant {variant!r}; use 'official', 'recbole', 'bpr' or 'pop'")
  if variant == 'official':
    config.data.max_history = 10         # the official state_size

  config.train = ml_collections.ConfigDict()
  config.train.loss = {'official': 'bce', 'recbole': 'ce', 'bpr': 'bpr', 'pop': ''}[variant]
  config.train.batch_size = 1024 if variant == 'official' else 2048
  config.train.epochs = 500 if variant == 'official' else 300
  config.train.patience = 20 if variant == 'official' else 10  # stop after > patience evals
  config.train.eval_every_epochs = 1
  config.train.max_steps_per_epoch = 0   # > 0: cut epochs short (smoke runs)
  # SASRec: pack short histories into shared rows (same per-sample math, no compute on padding).
  config.train.pack = variant in sasrec.PRESETS
  config.train.pack_row_multiple = 64    # packed row counts are rounded up to this
  config.train.pack_fixed_rows = False   # True: one row count for every batch (one compile)
  # Packing: a history that is a prefix of another in its batch reads that one's segment, and
  # epochs shuffle such chains (one user's first rows) as units so that they share batches.
  # Same per-sample outputs; only batch composition and shared dropout noise differ. Off for
  # the official preset, which reproduces the official recipe as it is: its early stopping
  # (patience 20 on a long valid plateau) is sensitive to the batch order (RESULTS.md).
  config.train.share_prefixes = config.train.pack and variant == 'recbole'

  config.optim = ml_collections.ConfigDict()
  config.optim.lr = 1e-3
  config.optim.b1 = 0.9
  config.optim.b2 = 0.999
  config.optim.eps = 1e-8
  config.optim.l2 = 1e-5 if variant == 'official' else 0.0  # coupled, like torch Adam

  config.eval = ml_collections.ConfigDict()
  config.eval.ks = (1, 3, 5, 10, 20, 50)
  config.eval.select_by = 'ndcg@20' if variant == 'official' else 'ndcg@10'
  config.eval.batch_size = 4096
  config.eval.top_k = 50                 # ranked items per row (metrics + predictions file)

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.keep = 2

  config.log = ml_collections.ConfigDict()
  config.log.tensorboard = False

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0            # 0: all devices

  if args['tiny']:
    if variant in sasrec.PRESETS:
      config.model.hidden = 16
      config.model.inner = 32
    elif variant == 'bpr':
      config.model.dim = 16
    config.train.batch_size = 64
    config.train.epochs = 2
    config.train.max_steps_per_epoch = 5
    config.eval.batch_size = 256
  return config
