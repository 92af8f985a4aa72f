#!/bin/sh
# Container entrypoint: runs the command it is given. `step NAME ARGS...` is short for `python -m steps.NAME ARGS...`
# (ingest, train, evaluate, tune_thresholds, ensemble, submit, promote); anything else runs as it is
# (`prefect worker start ...`, `odir ...`, `mlflow server ...`).
set -eu
if [ "$#" -eq 0 ]; then
    set -- odir --help
fi
if [ "$1" = "step" ]; then
    shift
    if [ "$#" -eq 0 ]; then
        echo "usage: step NAME [ARGS...]  (NAME: ingest, train, evaluate, tune_thresholds, ensemble, submit, promote)" >&2
        exit 2
    fi
    name="$1"
    shift
    exec python -m "steps.$name" "$@"
fi
exec "$@"
