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
# SIGTERM to newllm this long before the time limit: more than one step
# (a Phase-2 epoch of the 529k-token seed cell is ~20 min on 2 cores; scale
# by your cores) plus one state write, so the stop lands on a safe point.
#SBATCH --signal=TERM@1800
#SBATCH --open-mode=append       # a requeued task appends to its output
#SBATCH --output=newllm-seed-%A_%a.out

srun newllm sweep --preset seed --out /shared/runs/seed \
    --cell "$SLURM_ARRAY_TASK_ID" --set threads="$SLURM_CPUS_PER_TASK"
status=$?
# 75: stopped on the signal after saving the cell's state; 130/143: stopped
# at once by a second signal, the last state kept. Either way continue in a
# new allocation (a preemption requeues by itself; a time limit does not).
case "$status" in
    75|130|143) scontrol requeue "${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}" ;;
esac
exit "$status"
