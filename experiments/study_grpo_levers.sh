#!/usr/bin/env bash
# Issue 15 item 2: GRPO levers as valid ablations, 3 GRPO seeds each, from one SFT start, each
# run reporting its valid-selected step on valid only (test is never decoded), then the paired
# valid gain over the start averaged over the seeds:
#   bash experiments/study_grpo_levers.sh [lever ...]       (default: every lever below)
# $SFT_WORKDIR (default workdirs/pipe_ind/sft: the paper-scale pipeline's seed-0 SFT on the
# LETTER SIDs) and $SASREC_WORKDIR (default workdirs/pipe_ind/sasrec, the collaborative reward
# model) name the start; runs go to $STUDY_ROOT (default workdirs/grpo_levers). A run with a
# results.json is skipped; an unfinished one resumes from its latest checkpoint.
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
ROOT="${STUDY_ROOT:-workdirs/grpo_levers}"
SFT="${SFT_WORKDIR:-workdirs/pipe_ind/sft}"
SASREC="${SASREC_WORKDIR:-workdirs/pipe_ind/sasrec}"
SEEDS=(${SEEDS:-0 1 2})
mkdir -p "$ROOT"

# name -> train_grpo.py flags on top of configs/grpo.py (the default recipe: lr 1e-4, rule +
# rank + collaborative reward, 100 steps).
declare -A LEVER=(
  [default]=""
  [nocollab]="--config.grpo.rewards.collab=0"
  [lowlr]="--config.optim.lr=1e-5"
  [anchor]="--config.grpo.sft_weight=0.1"
  [sibling]="--config.grpo.advantage=sibling"
  [level]="--config.grpo.advantage=level"
  [epochs2]="--config.grpo.updates_per_rollout=2"
  [refsync]="--config.grpo.ref_sync_every=25"
  [gate05]="--config.grpo.gate.max_top_prob=0.5"
  [gate02]="--config.grpo.gate.max_top_prob=0.2"
  [gate02nocollab]="--config.grpo.gate.max_top_prob=0.2 --config.grpo.rewards.collab=0"
  [auc05]="--config.grpo.gate.min_reward_auc=0.5"
  [steps300]="--config.train.steps=300 --config.train.eval_every_steps=100"
)
ORDER=(default nocollab lowlr anchor sibling level epochs2 refsync gate05 gate02 gate02nocollab
       auc05 steps300)
if [ $# -gt 0 ]; then LEVERS=("$@"); else LEVERS=("${ORDER[@]}"); fi

step() {
  echo "=== $(date -u +%FT%TZ) $1 (commit $(git rev-parse --short HEAD), $(git status --short configs minirec_jax experiments | wc -l) changed files)"
}

for name in "${LEVERS[@]}"; do
  if [ -z "${LEVER[$name]+set}" ]; then
    echo "unknown lever '$name'; known: ${ORDER[*]}" >&2
    exit 1
  fi
  for seed in "${SEEDS[@]}"; do
    run="$ROOT/${name}_g$seed"
    [ -f "$run/results.json" ] && continue
    step "grpo $name seed $seed"
    # shellcheck disable=SC2086  # the lever's flags are meant to split
    python experiments/train_grpo.py --config configs/grpo.py "--config.init_from=$SFT" \
      "--config.grpo.reward_model=$SASREC" "--config.seed=$seed" ${LEVER[$name]} \
      "--config.eval.report_splits=('valid',)" --workdir "$run" || exit 1
  done
  baselines=() runs=()
  for seed in "${SEEDS[@]}"; do baselines+=("$SFT"); runs+=("$ROOT/${name}_g$seed"); done
  step "compare $name"
  python experiments/compare_runs.py --baseline="$(IFS=,; echo "${baselines[*]}")" \
    --runs="$(IFS=,; echo "${runs[*]}")" --split=valid --ks=3,10 \
    --train_metrics=rollout_hit_rate,zero_advantage_groups,gated_groups,kl,entropy \
    --output="$ROOT/compare_$name.json"
done
