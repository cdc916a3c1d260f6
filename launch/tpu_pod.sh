#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax finds its peers itself.
#   bash launch/tpu_pod.sh TPU_NAME ZONE configs/imagenet.py:model=dit,budget=10/class \
#     gs://BUCKET/run [--config.KEY=VALUE ...]
# CONFIG is a config file with optional `:name=value,...` arguments, e.g.
# configs/imagenet.py:model=sit,budget=50/class or configs/imagenet.py:smoke=True; its
# docstring lists the --config.KEY=VALUE paths (data, weights) a real run needs.
# The repo must be at ~/gadc_jax on every worker with requirements installed (jax[tpu]).
#
# Preemption: SIGTERM on any worker makes every host checkpoint the same step and exit 143;
# gcloud (recent versions, with --worker=all) exits with the first nonzero worker status, and
# so does this script (exec). Running the same command again resumes from the saved work.
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
# Every argument quoted for the workers' shell, so values with spaces, quotes, commas or
# parentheses (e.g. --config.stages="('train','sample')") arrive unchanged.
printf -v remote ' %q' python main.py --multihost --config="$config" --workdir="$workdir" "$@"
exec gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="cd ~/gadc_jax && exec$remote"
