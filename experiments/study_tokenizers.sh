#!/usr/bin/env bash
# Issue 17 item 3: every tokenizer variant fitted on Industrial, then SFT model S (the 8-epoch
# protocol) on its SIDs, reported on valid only (test is never decoded), then one table:
#   bash experiments/study_tokenizers.sh [variant ...]     (default: all, in the order below)
# Resumable and re-runnable: a tokenizer with a report.json and an SFT with a results.json are
# skipped; an unfinished SFT resumes from its latest checkpoint (saved every 23 steps).
# Runs in $STUDY_ROOT (default workdirs/tokcmp). The collaborative variants read the SASRec of
# $SASREC_WORKDIR (default workdirs/pipe_ind/sasrec, the paper-scale pipeline's stage: RecBole
# configuration, train split only). mpnet embeds every item text with all-mpnet-base-v2 first
# (about an hour on 2 CPU cores; cached under .cache/embeddings); smollm2 with SmolLM2-135M's
# mean-pooled hidden states (cached likewise).
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
ROOT="${STUDY_ROOT:-workdirs/tokcmp}"
SASREC="${SASREC_WORKDIR:-workdirs/pipe_ind/sasrec}"
mkdir -p "$ROOT"

# name -> train_tokenizer.py arguments ('' for the official SIDs: no tokenizer).
declare -A TOKENIZER=(
  [rqvae]="--config configs/tokenizer.py:dataset=industrial,method=rqvae"
  [rqvae_official]="--config configs/tokenizer.py:dataset=industrial,method=rqvae,preset=official"
  [rqkmeans]="--config configs/tokenizer.py:dataset=industrial,method=rqkmeans"
  [rqkmeans_balanced]="--config configs/tokenizer.py:dataset=industrial,method=rqkmeans --config.rqkmeans.balanced=True"
  [letter]="--config configs/tokenizer.py:dataset=industrial,method=rqvae,collab=letter --config.collab.sasrec_workdir=$SASREC"
  [fuse]="--config configs/tokenizer.py:dataset=industrial,method=rqvae,collab=fuse --config.collab.sasrec_workdir=$SASREC"
  [mpnet]="--config configs/tokenizer.py:dataset=industrial,method=rqvae --config.embeddings.source=mpnet"
  [smollm2]="--config configs/tokenizer.py:dataset=industrial,method=rqvae --config.embeddings.source=smollm2-135m"
  [official]=""
)
ORDER=(rqvae rqvae_official rqkmeans rqkmeans_balanced letter fuse official mpnet smollm2)
if [ $# -gt 0 ]; then VARIANTS=("$@"); else VARIANTS=("${ORDER[@]}"); fi

step() {
  echo "=== $(date -u +%FT%TZ) $1 (commit $(git rev-parse --short HEAD), $(git status --short configs minirec_jax experiments | wc -l) changed files)"
}

for name in "${VARIANTS[@]}"; do
  if [ -z "${TOKENIZER[$name]+set}" ]; then
    echo "unknown variant '$name'; known: ${ORDER[*]}" >&2
    exit 1
  fi
  tok="$ROOT/tok_$name" sft="$ROOT/sft_$name"
  if [ -n "${TOKENIZER[$name]}" ]; then
    if [ ! -f "$tok/report.json" ]; then
      step "tokenizer $name"
      # shellcheck disable=SC2086  # the arguments are meant to split
      python experiments/train_tokenizer.py ${TOKENIZER[$name]} --workdir "$tok" || exit 1
    fi
    sids=(--config.sids.source=tokenizer "--config.sids.path=$tok")
  else
    sids=(--config.sids.source=official)
  fi
  if [ ! -f "$sft/results.json" ]; then
    step "sft $name"
    python experiments/train_sft.py --config configs/sft.py:dataset=industrial,variant=S \
      "${sids[@]}" "--config.eval.report_splits=('valid',)" --config.ckpt.every_steps=23 \
      --workdir "$sft" || exit 1
  fi
done

runs=()
for name in "${ORDER[@]}"; do
  [ -f "$ROOT/sft_$name/results.json" ] && runs+=("$name:$ROOT/sft_$name")
done
step table
python experiments/compare_tokenizers.py --runs="$(IFS=,; echo "${runs[*]}")" \
  --baseline=rqvae --split=valid --ks=3,10 --output="$ROOT/comparison.json"
