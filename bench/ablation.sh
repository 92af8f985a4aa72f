#!/usr/bin/env bash
# Issue 15's ablation on the real data: runs `odir full` on each profile of configs/ablation/ (or the ones given)
# against a store of its own, one after the other, and prints the table (bench/ablation_table.py).
#
#   bench/ablation.sh [PROFILE.yaml ...]
#
# ODIR_DATA (required) is the dataset root; ODIR_HOME (default .odir/ablation) holds the store, so the project's own
# champion is never touched. Each row's wall time goes to $ODIR_HOME/times.tsv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${ODIR_DATA:-}" ]; then
  echo "bench/ablation.sh: set ODIR_DATA to the dataset root (train.csv, images/train/, ...)" >&2
  exit 2
fi
data="$ODIR_DATA"
export ODIR_HOME="${ODIR_HOME:-$PWD/.odir/ablation}"
mkdir -p "$ODIR_HOME"
python="${PYTHON:-.venv/bin/python}"
profiles=("$@")
[ ${#profiles[@]} -gt 0 ] || profiles=(configs/ablation/*.yaml)
for profile in "${profiles[@]}"; do
  start=$(date +%s)
  echo "== $profile ($(date -u +%H:%M:%S))"
  "$python" -m flows.cli full --profile "$profile" --data "$data" > "$ODIR_HOME/$(basename "$profile" .yaml).log" 2>&1 \
    || echo "   failed: see $ODIR_HOME/$(basename "$profile" .yaml).log"
  printf '%s\t%s\n' "$profile" "$(( $(date +%s) - start ))" >> "$ODIR_HOME/times.tsv"
done
"$python" -m bench.ablation_table --store "sqlite:///$ODIR_HOME/mlruns/mlflow.db"
