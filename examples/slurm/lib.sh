#!/usr/bin/env bash
# Shared launch logic for the megatron-power SLURM examples. Sourced by each *.sbatch.
#
# Environment a user sets (defaults in brackets):
#   MEGATRON_LM_DIR   Megatron-LM tree inside the container   [/opt/Megatron-LM]
#   CONTAINER_IMAGE   pyxis image (see docker/)               [megatron-power:core_v0.16.1]
#   CONTAINER_MOUNTS  pyxis mounts, e.g. /lustre:/lustre      [none]
#   DATA_PATH         Megatron indexed dataset prefix         [--mock-data when unset]
#   CHECKPOINT_DIR    where checkpoints go                    [$PWD/checkpoints/$RUN_NAME]
#   GPUS_PER_NODE     GPUs per node                           [8]
#   DRY_RUN=1         print the exact command line and exit (no SLURM needed)

set -euo pipefail

megatron_power_launch() {
  # Usage: megatron_power_launch RUN_NAME FLAG...  (FLAGs go to pretrain_gpt.py)
  local run_name="$1"
  shift
  local gpus_per_node="${GPUS_PER_NODE:-8}"
  local nodes="${SLURM_NNODES:-1}"
  local master_addr master_port="${MASTER_PORT:-29500}"
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    master_addr="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
  else
    master_addr="localhost"
  fi
  local megatron_lm_dir="${MEGATRON_LM_DIR:-/opt/Megatron-LM}"
  local checkpoint_dir="${CHECKPOINT_DIR:-${PWD}/checkpoints/${run_name}}"

  local data_flags=(--mock-data)
  if [[ -n "${DATA_PATH:-}" ]]; then
    data_flags=(--data-path "${DATA_PATH}")
  fi

  local torchrun=(
    torchrun
    --nnodes "${nodes}"
    --nproc-per-node "${gpus_per_node}"
    --rdzv-backend c10d
    --rdzv-endpoint "${master_addr}:${master_port}"
    -m megatron_power.launch "${megatron_lm_dir}/pretrain_gpt.py"
    "$@"
    "${data_flags[@]}"
    --save "${checkpoint_dir}"
    --load "${checkpoint_dir}"
  )
  local srun=(
    srun
    --ntasks-per-node 1
    --container-image "${CONTAINER_IMAGE:-megatron-power:core_v0.16.1}"
    --container-workdir "${megatron_lm_dir}"
  )
  if [[ -n "${CONTAINER_MOUNTS:-}" ]]; then
    srun+=(--container-mounts "${CONTAINER_MOUNTS}")
  fi

  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${srun[@]}" "${torchrun[@]}"
    printf '\n'
    return 0
  fi
  export MASTER_ADDR="${master_addr}" MASTER_PORT="${master_port}"
  "${srun[@]}" "${torchrun[@]}"
}
