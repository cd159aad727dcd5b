#!/usr/bin/env bash
# The README's test command: sets up the local environment, then runs the whole suite.
source "$(dirname "$0")/../experiments/env.sh"
python -m pytest -n 2 --dist loadfile -q "$@" tests
