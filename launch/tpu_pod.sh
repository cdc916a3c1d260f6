#!/usr/bin/env bash
# A Cloud TPU pod slice: the same command on every worker; jax finds its peers itself.
#   bash launch/tpu_pod.sh TPU_NAME ZONE configs/imagenet_dit.py gs://BUCKET/run [--config.KEY=VALUE ...]
# The repo must be at ~/gadc_jax on every worker with requirements installed (jax[tpu]).
set -euo pipefail
tpu=$1 zone=$2 config=$3 workdir=$4
shift 4
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all --command="\
  cd ~/gadc_jax && python main.py --multihost --config=$config --workdir=$workdir $*"
