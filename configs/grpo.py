"""GRPO from an SFT workdir: `--config configs/grpo.py --config.init_from=workdirs/sft_x`.

Arguments: tiny (a seconds-long smoke config), rollout ('beam' | 'sample' | 'dynamic'), llm (a
language-model policy, e.g. SmolLM2-135M, at CPU cost: see below).
Defaults: the recipe chosen on valid (docs/RESULTS.md, "GRPO levers"): the official setup (G=16
beam rollouts, rule + rank rewards, k3 KL with beta 1e-3, unbiased group std + 1e-4, one
update per rollout, cosine schedule with warmup, clip-norm 0.3) plus the collaborative reward
of a frozen SASRec (`grpo.reward_model`: a train_sasrec workdir, RecBole configuration),
lr 1e-4, 100 steps with valid checks at steps 0, 50 and 100 (the best kept). The official
recipe: `--config.optim.lr=1e-5 --config.grpo.rewards.collab=0`.
"""

import ml_collections

from minirec_jax.infra.config_utils import optimizer_config, parse_arg


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  args = parse_arg(arg, tiny=False, rollout='beam', llm=False)
  config = ml_collections.ConfigDict()
  config.seed = 0
  config.init_from = ''                 # SFT workdir (its best checkpoint and config)

  config.grpo = ml_collections.ConfigDict()
  config.grpo.rollout = args['rollout']
  config.grpo.group_size = 16
  config.grpo.temperature = 1.0
  config.grpo.add_target = False        # put the target into groups that miss it
  # collab: the reward model's scores z-scored in each group; collab_rank: the DCG gain of each
  # candidate's rank in the reward model's ranking of all items (rl/rewards.py).
  config.grpo.rewards = ml_collections.ConfigDict(
      {'rule': 1.0, 'rank': 1.0, 'prefix': 0.0, 'collab': 1.0, 'collab_rank': 0.0})
  config.grpo.beta = 1e-3
  config.grpo.kl_estimator = 'k3'
  config.grpo.clip_eps = 0.2
  config.grpo.aggregation = 'seq_mean_token_mean'
  config.grpo.adv_ddof = 1
  config.grpo.adv_eps = 1e-4
  config.grpo.sft_weight = 0.0          # > 0: add this x the target's NLL (SFT anchor)
  config.grpo.advantage = 'group'       # 'group' (official) | 'sibling' | 'level' per token
  config.grpo.updates_per_rollout = 1   # > 1: several clipped updates on each rollout batch
  # Per-prompt gate (rl/step.py): drop groups whose rollout policy puts > max_top_prob of the
  # group's probability on one candidate, or whose target the reward model ranks above less
  # than min_reward_auc of the group's other candidates (needs reward_model). 1.0 / 0.0: off.
  config.grpo.gate = ml_collections.ConfigDict({'max_top_prob': 1.0, 'min_reward_auc': 0.0})
  config.grpo.ref_sync_every = 0        # > 0: ref <- alpha * policy + (1 - alpha) * ref
  config.grpo.ref_sync_alpha = 0.6
  config.grpo.reward_model = ''         # train_sasrec workdir: needed while rewards.collab > 0
  # A language-model policy may prompt with MiniOneRec's RL texts instead of its next-SID
  # prompt: any of 'sid_history', 'item_text', 'title_history' (() = the next-SID prompt).
  config.grpo.prompt_sources = ()
  config.grpo.num_title_history = 10_000  # title-history prompts drawn from the train rows
  config.grpo.max_prompt_len = 512      # text prompts keep their last tokens

  config.train = ml_collections.ConfigDict()
  config.train.steps = 100             # the recipe's budget in the valid ablation
  config.train.prompts_per_step = 64
  # (low, high): the fractions of the train split (file order) GRPO prompts come from. After an
  # SFT with train.data_fraction=f, (f, 1.0) are rows whose targets it never trained on.
  config.train.prompt_rows = (0.0, 1.0)
  config.train.eval_every_steps = 50

  config.optim = optimizer_config(lr=1e-4, warmup_steps=6, clip_norm=0.3)

  config.eval = ml_collections.ConfigDict()
  config.eval.beam_size = 50
  config.eval.batch_size = 256
  config.eval.ks = (1, 3, 5, 10, 20, 50)
  config.eval.max_examples = 1000       # valid prefix used to pick the best step
  config.eval.report_max_examples = 0
  config.eval.valid_report_max_examples = -1  # >= 0: valid's report rows (-1: as above)
  config.eval.report = 'best'           # final metrics of the 'best' (valid) or 'last' step
  config.eval.report_splits = ('valid', 'test')  # ablations: ('valid',), test never decoded

  config.ckpt = ml_collections.ConfigDict()
  config.ckpt.keep = 2
  config.ckpt.every_steps = 0            # > 0: also save `latest` every N steps (resume)
  config.log = ml_collections.ConfigDict()
  config.log.every_steps = 5
  config.log.tensorboard = False
  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0

  if args['llm']:
    # About 34x model S's cost per token: 8 prompts (x 16 candidates) a step, valid checks on a
    # 500-row prefix every 25 steps, beam-50 evaluation 16 users at a time, `latest` every 5.
    config.train.prompts_per_step = 8
    config.train.eval_every_steps = 25
    config.eval.max_examples = 500
    config.eval.batch_size = 16
    config.eval.valid_report_max_examples = 500  # the full test split is reported once
    config.ckpt.every_steps = 5
    config.log.every_steps = 1
  if args['tiny']:
    config.grpo.rewards.collab = 0.0    # no SASRec workdir in a smoke run
    config.grpo.group_size = 4
    config.train.steps = 4
    config.train.prompts_per_step = 8
    config.train.eval_every_steps = 2
    config.optim.lr = 1e-3
    config.eval.beam_size = 10
    config.eval.batch_size = 16
    config.eval.ks = (1, 5, 10)
    config.eval.max_examples = 32
    config.eval.report_max_examples = 32
    config.log.every_steps = 1
  return config
