#!/usr/bin/env bash
# A SLURM GPU cluster: one task per node, all GPUs of a node per task.
#   sbatch --nodes=N --gpus-per-node=8 launch/gpu_slurm.sh configs/imagenet_dit.py /shared/run [--config.KEY=VALUE ...]
#SBATCH --ntasks-per-node=1
#SBATCH --job-name=gadc_jax
set -euo pipefail
config=$1 workdir=$2
shift 2
# jax.distributed.initialize() reads the coordinator and ranks from SLURM's environment.
srun python main.py --multihost --config="$config" --workdir="$workdir" "$@"
