#!/usr/bin/env bash
# Issue 16 part 5: short valid probes of the language-model SFT levers, each from run b's
# settings (SmolLM2-135M, next-SID short template, the SIDs of $SIDS, new SID rows at the exact
# mean: the preset's noise is pinned off so that base stays run b) on the same budget and data
# order: the first 34% of the train rows, one pass (41 steps of 8 x 256 tokens, lr 3e-4 with 20
# warmup steps), then valid on its first 200 rows (test is never decoded).
#   bash experiments/probe_llm.sh [probe ...]        (default: all, in the order below)
# A probe with a results.json is skipped; an unfinished one resumes (latest every 10 steps).
# About 16 minutes per probe alone on 2 CPU cores. Workdirs: $PROBE_ROOT/llm_probe_<name>.
# sidsoftmax's losses are over the SID rows only: compare its hits, not its losses.
set -uo pipefail
cd "$(dirname "$0")/.."
source experiments/env.sh
ROOT="${PROBE_ROOT:-workdirs}"
SIDS="${SIDS:-workdirs/pipe_ind/semantic_ids}"

declare -A LEVER=(
  [base]=""
  [noise0136]="--config.llm.noise_scale=0.136"
  [titles]="--config.llm.sid_row_init=titles"
  [sidsoftmax]="--config.llm.sid_softmax=True"
  [rows10]="--config.train.new_rows_lr_scale=10"
)
ORDER=(base titles noise0136 sidsoftmax rows10)
if [ $# -gt 0 ]; then PROBES=("$@"); else PROBES=("${ORDER[@]}"); fi

for name in "${PROBES[@]}"; do
  if [ -z "${LEVER[$name]+set}" ]; then
    echo "unknown probe '$name'; known: ${ORDER[*]}" >&2
    exit 1
  fi
  wd="$ROOT/llm_probe_$name"
  [ -f "$wd/results.json" ] && continue
  echo "=== $(date -u +%FT%TZ) probe $name (commit $(git rev-parse --short HEAD))"
  # shellcheck disable=SC2086  # the lever's arguments are meant to split
  python experiments/train_sft.py \
    --config configs/sft.py:dataset=industrial,sids=tokenizer,backbone=smollm2-135m \
    "--config.sids.path=$SIDS" --config.train.data_fraction=0.34 --config.train.epochs=1 \
    --config.llm.noise_scale=0 --config.llm.noise_relative=False \
    --config.log.every_steps=5 --config.ckpt.every_steps=10 \
    --config.eval.max_examples=200 --config.eval.valid_report_max_examples=200 \
    "--config.eval.report_splits=('valid',)" ${LEVER[$name]} --workdir "$wd" || exit 1
done

echo "| probe | train loss, steps 10 / 20 / 30 / 40 | valid loss (200 rows) | valid HR@10 / NDCG@10 / HR@50 |"
echo "|---|---|---|---|"
for name in "${PROBES[@]}"; do
  python - "$ROOT/llm_probe_$name" "$name" <<'EOF'
import json, sys
rows = [json.loads(line) for line in open(f'{sys.argv[1]}/metrics.jsonl')]
train = {r['step']: r['train/loss'] for r in rows if 'train/loss' in r}
valid = [r for r in rows if 'valid/hr@10' in r][-1]
losses = ' / '.join(f'{train[s]:.2f}' if s in train else '-' for s in (10, 20, 30, 40))
print(f"| {sys.argv[2]} | {losses} | {valid['valid/loss']:.3f} | "
      f"{valid['valid/hr@10']:.3f} / {valid['valid/ndcg@10']:.4f} / {valid['valid/hr@50']:.3f} |")
EOF
done
