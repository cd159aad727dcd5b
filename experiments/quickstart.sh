#!/usr/bin/env bash
# The README's main-job command: sets up the local environment, then runs the main job on the
# embedded default dataset (MovieLens-100K from the recbole==1.2.1 wheel). Extra arguments are
# passed to the binary, e.g. --config.data.protocol=loo.
source "$(dirname "$0")/env.sh"
python experiments/build_dataset.py --config configs/dataset.py:ml100k "$@"
