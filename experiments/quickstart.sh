#!/usr/bin/env bash
# The README's main-job command: sets up the local environment, then runs the whole pipeline
# (dataset -> item embeddings -> semantic IDs -> SFT -> SASRec -> GRPO -> evaluation) on the
# embedded default dataset (MovieLens-100K from the recbole==1.2.1 wheel, MiniOneRec protocol)
# at its quick size, and prints the test metrics table. Re-running skips finished stages.
# The workdir is $MINIREC_WORKDIR (default workdirs/quickstart_ml100k); extra arguments go to
# the binary, e.g. --config.sft.train.epochs=2.
source "$(dirname "$0")/env.sh"
python experiments/run_pipeline.py --config configs/pipeline.py \
    --workdir "${MINIREC_WORKDIR:-workdirs/quickstart_ml100k}" "$@"
