#!/usr/bin/env bash
# One torchrun "node" of a multi-node distill job: distill.sbatch starts one per node with srun (one task per node:
# the job's task count is torchrun's node count), and make's distill recipe appends the `distill ...` command line
# ("$@"). Rendezvous is c10d on the job's first node, keyed by the job
# id, so a requeued job (same id) meets again on whatever nodes it gets; its port is 29500 + the job id mod 1000, so two
# jobs sharing a first node do not collide (RDZV_PORT sets one).
#
# USR1 is ignored here, before torchrun starts: `scancel --signal=USR1` and `#SBATCH --signal=USR1@T` signal every
# process of the step, and torchrun's agent has no handler for USR1 (it would die of it and take its workers
# down). The workers install their own handler (distinit.pipeline.preemption), vote, save at the step boundary and requeue.
# SIGTERM is handled by torchrun itself: it forwards it to the workers, which do the same.
set -euo pipefail
trap '' USR1
head=$(scontrol show hostnames "${SLURM_JOB_NODELIST:?run this under srun in a SLURM job}" | head -n 1)
exec "${VENV:-.venv}/bin/torchrun" \
    --nnodes "${SLURM_NTASKS:-1}" \
    --nproc_per_node "${GPUS_PER_NODE:-gpu}" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$head:${RDZV_PORT:-$((29500 + ${SLURM_JOB_ID:?} % 1000))}" \
    --rdzv-id "${SLURM_JOB_ID:?}" \
    ${TORCHRUN_EXTRA:-} \
    -m distinit.pipeline "$@"
