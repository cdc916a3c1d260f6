#!/usr/bin/env bash
# A SLURM GPU cluster: one task per node, all GPUs of a node per task.
#   sbatch --nodes=N --gpus-per-node=8 launch/gpu_slurm.sh \
#     configs/imagenet.py:model=dit,budget=10/class /shared/run [--config.KEY=VALUE ...]
# CONFIG is a config file with optional `:name=value,...` arguments, e.g.
# configs/imagenet.py:model=sit,budget=50/class or configs/imagenet.py:smoke=True; its
# docstring lists the --config.KEY=VALUE paths (data, weights) a real run needs.
#
# Preemption: SLURM sends SIGTERM to the tasks (at a preemption, at `scancel`, and by the
# --signal line below 300 s before the time limit, ahead of SIGKILL); every host checkpoints
# the same step and main.py exits 143, which srun and this script pass on as the job's exit
# status. Submitting the same command again resumes from the saved work.
#SBATCH --ntasks-per-node=1
#SBATCH --job-name=gadc_jax
#SBATCH --signal=TERM@300
set -euo pipefail
config=$1 workdir=$2
shift 2
# jax.distributed.initialize() reads the coordinator and ranks from SLURM's environment.
exec srun python main.py --multihost --config="$config" --workdir="$workdir" "$@"
