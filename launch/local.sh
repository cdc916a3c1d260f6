#!/usr/bin/env bash
# One host, all its devices: bash launch/local.sh configs/digits.py WORKDIR [--config.KEY=VALUE ...]
set -euo pipefail
config=$1 workdir=$2
shift 2
exec python main.py --config="$config" --workdir="$workdir" "$@"
