#!/bin/bash
# The seed sweep as a Slurm array: one task per cell, all writing into one
# shared directory. Preemption-proof: a preempted or timed-out task stops at
# its next safe point with its cell's state saved, and the requeued task
# continues that cell where it stopped. Once every task is done:
#   newllm report /shared/runs/seed
#SBATCH --job-name=newllm-seed
#SBATCH --array=0-3
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --requeue                # a preempted task goes back into the queue
#SBATCH --signal=TERM@300        # SIGTERM to newllm 5 minutes before the time limit
#SBATCH --open-mode=append       # a requeued task appends to its output
#SBATCH --output=newllm-seed-%A_%a.out

srun newllm sweep --preset seed --out /shared/runs/seed \
    --cell "$SLURM_ARRAY_TASK_ID" --set threads="$SLURM_CPUS_PER_TASK"
status=$?
# 75: stopped on the signal after saving the cell's state: continue it in a
# new allocation (a preemption requeues by itself; a time limit does not).
if [ "$status" -eq 75 ]; then
    scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}"
fi
exit "$status"
