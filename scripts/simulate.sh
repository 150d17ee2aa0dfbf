#!/usr/bin/env bash
# Runs the fairness simulation (tests/simulation/): many nodes over a simulated year, each
# playing a strategy (honest, offline now and then, lossy, unlucky, cut off, greedy, greedy and
# clever, framing, best-of-N), with the real fairness rules deciding; prints its tables.
#
# usage: scripts/simulate.sh [SEED] [SCALE] [DAYS]     (defaults: 1 1 365; SCALE multiplies
#        the population, e.g. 4 runs some 300 nodes)
# Exit 0 if everything that must hold held (the same checks as the test suite's run). Some of
# those checks ask that the attacks were tried often enough to judge (e.g. 20 early deletions
# by clever holders): a run much shorter than a year may fail them without
# any breach (the tables say which).
set -euo pipefail
cd "$(dirname "$0")/.."
seed=${1:-1} scale=${2:-1} days=${3:-365}
case "$seed$scale$days" in *[!0-9]*) echo "usage: scripts/simulate.sh [SEED] [SCALE] [DAYS]" >&2; exit 2 ;; esac
KAANA_SIM="$seed,$scale,$days" cargo test --profile sim --quiet --test integration simulation:: -- --nocapture 2>&1 |
  grep -v '^running\|^test \|^$\|test result'
