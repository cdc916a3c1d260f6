#!/usr/bin/env bash
# One host, all its devices: bash launch/local.sh configs/digits.py WORKDIR [--config.KEY=VALUE ...]
# CONFIG may carry arguments, e.g. configs/digits.py:smoke=True. On SIGTERM the job saves its
# work and exits 143 (exec: that is this script's status); the same command again resumes.
set -euo pipefail
config=$1 workdir=$2
shift 2
exec python main.py --config="$config" --workdir="$workdir" "$@"
