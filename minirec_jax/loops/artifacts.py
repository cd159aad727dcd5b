"""Reading back what the loops leave in a workdir: its config, and the trained models.

  workdir_config(workdir)  config.json of a finished or running workdir;
  load_policy(workdir)     an SFT or GRPO workdir's decoder, SIDs, recommender and the params
                           it reports (SFT: best by eval.select_by; GRPO: eval.report), ready
                           to decode, with no training data packed;
  load_sasrec(workdir)     a train_sasrec workdir's SASRec config and best params;
  load_scorer(workdir)     the same as (score_fns, params), the frozen model of the 'collab'
                           GRPO reward.

It also holds what a GRPO checkpoint contains (`grpo_tree`, `grpo_optimizer`,
`GRPO_SELECT_BY`), written by loops/grpo.py and read back here. Parameters are restored onto
this process's first device, where a freshly initialised state would be, whatever devices the
run was trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np
import optax

from minirec_jax.data import errors
from minirec_jax.infra import checkpointing
from minirec_jax.infra import optim
from minirec_jax.loops import run as run_lib
from minirec_jax.loops import sasrec as sasrec_loop
from minirec_jax.loops import sft as sft_loop
from minirec_jax.models import sasrec as sasrec_lib
from minirec_jax.training import sasrec as sasrec_steps
from minirec_jax.training import state as state_lib

GRPO_SELECT_BY = 'ndcg@10'  # GRPO keeps its best checkpoint by this valid metric


def workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a loop wrote into `workdir` (config.json); DataError naming the file if it is
  missing or not a JSON object."""
  if not workdir:
    raise ValueError('no workdir given (an empty path, e.g. an unset config.init_from)')
  path = errors.require_file(os.path.join(workdir, run_lib.CONFIG_FILE),
                             'config.json (is this a training workdir?)')
  try:
    with open(path, encoding='utf-8') as f:
      config = json.load(f)
  except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
    raise errors.DataError(f'unreadable config ({exc})', path=path) from None
  if not isinstance(config, dict):
    raise errors.DataError(f'expected a JSON object, got {type(config).__name__}', path=path)
  return ml_collections.ConfigDict(config)


def grpo_tree(state: Any, ref_params: Any) -> dict:
  """What a GRPO checkpoint holds: the policy's train state and the KL reference params."""
  return {'state': state, 'ref': ref_params}


def grpo_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """The GRPO config's optimizer, whose state the checkpoints hold."""
  tx, _ = optim.from_config(config.optim, config.train.steps)
  return tx


def _restore(workdir: str, abstract: Any, best_metric: str, latest: bool = False) -> Any:
  """`abstract`'s tree restored from the best (`latest`: the latest) checkpoint of `workdir`
  onto this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device,
                                                       weak_type=x.weak_type), abstract)
  ckpts = checkpointing.Checkpoints(os.path.join(workdir, run_lib.CHECKPOINTS_DIR),
                                    best_metric=best_metric)
  try:
    restored = ckpts.restore_latest(target) if latest else ckpts.restore_best(target)
  finally:
    ckpts.close()
  if restored is None:
    raise checkpointing.CheckpointError(f'no checkpoint under {ckpts.folder}/latest')
  return restored[0]


@dataclasses.dataclass
class Policy:
  """A generative recommender restored from an SFT or GRPO workdir, ready to decode.

  `config` is the workdir's own config (its `eval` section is how that run reports);
  `sft_config` the SFT config its model, SIDs and data come from (the same for an SFT
  workdir, the one `init_from` leads to for GRPO). `setup.recommender` decodes with
  `params`.
  """

  config: ml_collections.ConfigDict
  sft_config: ml_collections.ConfigDict
  setup: sft_loop.SftSetup
  params: Any

  @property
  def name(self) -> str:
    """The method, e.g. 'GRPO (S)', for results tables."""
    method = ('GRPO' if 'grpo' in self.config
              else 'TIGER' if sft_loop.is_tiger(self.sft_config) else 'SFT')
    return f'{method} ({self.sft_config.model.variant})'


def load_policy(workdir: str) -> Policy:
  """The decoder of an SFT workdir (best checkpoint by its eval.select_by) or a GRPO workdir
  (the checkpoint its eval.report names: 'best' by GRPO_SELECT_BY, or 'last'). Builds the
  dataset handle, SIDs and model from the SFT config; packs no training data."""
  config = sft_config = workdir_config(workdir)
  while 'grpo' in sft_config:  # GRPO starts from another workdir: its model comes from there
    sft_config = workdir_config(sft_config.init_from)
  s = sft_loop.setup(sft_config)
  abstract = sft_loop.abstract_state(s, sft_config)
  if 'grpo' in config:
    state = state_lib.abstract(lambda p: p, grpo_optimizer(config), abstract.params)
    tree = _restore(workdir, grpo_tree(state, abstract.params), GRPO_SELECT_BY,
                    latest=config.eval.report == 'last')
    params = tree['state'].params
  else:
    params = _restore(workdir, abstract, config.eval.select_by).params
  return Policy(config=config, sft_config=sft_config, setup=s, params=params)


def load_sasrec(workdir: str) -> tuple[sasrec_lib.SASRecConfig, Any]:
  """(model config, best params) of a SASRec trained by `loops.sasrec.train_sasrec`."""
  path = errors.require_file(os.path.join(workdir, sasrec_loop.MODEL_FILE),
                             'model description of a train_sasrec workdir')
  with open(path, encoding='utf-8') as f:
    description = json.load(f)
  if description.get('kind') != 'sasrec':
    raise ValueError(f'{workdir} holds a {description.get("kind")!r} model, not SASRec')
  config = workdir_config(workdir)
  fields = {f.name for f in dataclasses.fields(sasrec_lib.SASRecConfig)}
  model_config = sasrec_lib.SASRecConfig(**{k: v for k, v in description.items() if k in fields})
  abstract = state_lib.abstract(
      lambda: sasrec_lib.init_params(model_config, jax.random.key(0)),
      sasrec_steps.optimizer(config.optim))
  return model_config, _restore(workdir, abstract, config.eval.select_by).params


def sasrec_item_embeddings(workdir: str) -> np.ndarray:
  """float32 `[num_items + 1, hidden]`: the item embedding table of a train_sasrec workdir's
  SASRec (row = item id, the last row its padding item), e.g. the tokenizer's collaborative
  signal (`semantic_ids/collaborative.py`)."""
  _, params = load_sasrec(workdir)
  return np.asarray(params['item_embedding']['embedding'], np.float32)


def load_ranker_params(workdir: str, ranker: sasrec_steps.Ranker,
                       config: ml_collections.ConfigDict) -> Any:
  """The best params of a train_sasrec workdir's ranker (SASRec, BPR-MF; most popular has no
  checkpoint: its counts come from the data)."""
  if config.model.variant == 'pop':
    return ranker.init(None)
  abstract = state_lib.abstract(ranker.init, sasrec_steps.optimizer(config.optim),
                                jax.random.key(0))
  return _restore(workdir, abstract, config.eval.select_by).params


def load_scorer(workdir: str) -> tuple[sasrec_lib.ScoreFns, Any]:
  """(score functions, frozen params) of a train_sasrec workdir's SASRec, for the
  collaborative rewards."""
  model_config, params = load_sasrec(workdir)
  return sasrec_lib.score_fns(model_config), params
