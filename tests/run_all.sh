#!/usr/bin/env bash
# The README's test command: sets up the local environment, then runs the whole suite.
source "$(dirname "$0")/../experiments/env.sh"
# One XLA compilation cache for this run, shared by both pytest workers and the binaries the
# tests start: many tests build the same tiny programs (a tiny SFT, its beam search), and each
# would otherwise compile them again. Fresh per run, so a run's time does not depend on the last.
JAX_COMPILATION_CACHE_DIR="$(mktemp -d)"
export JAX_COMPILATION_CACHE_DIR JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0.5
trap 'rm -rf "$JAX_COMPILATION_CACHE_DIR"' EXIT
python -m pytest -n 2 --dist loadfile -q "$@" tests
