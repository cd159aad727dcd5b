"""Semantic-ID stage: `--config configs/tokenizer.py:dataset=industrial,method=rqvae`.

Arguments: dataset (configs/dataset.py name), method ('rqvae' | 'rqkmeans'), preset (RQ-VAE
'fast' | 'official'), collisions ('sinkhorn' | 'extra_code'), collab ('none' | 'letter' |
'fuse': SASRec's collaborative signal, see below; set --config.collab.sasrec_workdir), tiny
(seconds-long smoke run).
"""

import ml_collections

from minirec_jax.infra.config_utils import data_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, dataset='industrial', method='rqvae', preset='fast',
                   collisions='sinkhorn', collab='none', tiny=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.data = data_config(args['dataset'])
  # source: 'minilm' | 'mpnet' (packaged sentence encoders) | 'npy' (path) | a language-model
  # backbone ('smollm2-135m', 'gguf:<file>', 'hf:<folder>'): its mean-pooled last hidden states.
  config.embeddings = ml_collections.ConfigDict(
      {'source': 'minilm', 'path': '', 'cache_dir': ''})
  config.method = args['method']
  config.num_levels = 3
  config.codebook_size = 256
  config.collisions = args['collisions']
  config.rqvae = ml_collections.ConfigDict()
  config.rqvae.preset = args['preset']
  # Any field of minirec_jax.semantic_ids.rqvae.rqvae_config, e.g. {'epochs': 300}.
  config.rqvae.overrides = ml_collections.ConfigDict({'num_levels': 3, 'codebook_size': 256})
  config.rqkmeans = ml_collections.ConfigDict({'balanced': False})
  # SASRec item embeddings of a train_sasrec workdir of the same dataset (in the pipeline:
  # its own sasrec stage when empty). mode 'letter' (RQ-VAE only): + weight * in-batch InfoNCE
  # between z_q and the projected SASRec embedding (cosine / temperature) + diversity_weight *
  # code-usage concentration; 'fuse': the input is [unit(text), fuse_weight * unit(SASRec)].
  # 'none' with a workdir only measures the codes' agreement with SASRec (report.json
  # 'collab'). See minirec_jax/semantic_ids/collaborative.py. The weights are against a
  # reconstruction MSE of ~1e-3: on Industrial, 1e-3 halves the collisions and takes the
  # contrastive loss from ln(items) to ~2.4 for +6% reconstruction error.
  config.collab = ml_collections.ConfigDict({
      'mode': args['collab'], 'sasrec_workdir': '', 'weight': 1e-3, 'temperature': 0.1,
      'diversity_weight': 1e-3, 'fuse_weight': 1.0})
  if args['tiny']:
    config.codebook_size = 16
    config.rqvae.overrides = ml_collections.ConfigDict(
        {'num_levels': 3, 'codebook_size': 16, 'epochs': 20, 'eval_every': 10,
         'warmup_epochs': 2, 'ae_warmup_epochs': 5, 'reseed_every': 5, 'reseed_until': 15,
         'hidden_dims': (64, 32)})
  return config
