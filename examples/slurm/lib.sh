#!/usr/bin/env bash
# Shared launch logic for the megatron-power SLURM examples. Sourced by each *.sbatch.
#
# Environment a user sets (defaults in brackets):
#   TOKENIZER_MODEL   Hugging Face tokenizer directory, or a SentencePiece .model file
#                     (required; README "SLURM" says where to get PowerLM's)
#   MEGATRON_LM_DIR   Megatron-LM tree inside the container   [/opt/Megatron-LM]
#   CONTAINER_IMAGE   pyxis image (see docker/)               [megatron-power:core_v0.16.1]
#   CONTAINER_MOUNTS  extra pyxis mounts, e.g. /lustre:/lustre [none]; the directories of
#                     DATA_PATH, CHECKPOINT_DIR and TOKENIZER_MODEL are mounted anyway
#   DATA_PATH         Megatron indexed dataset prefix         [--mock-data when unset]
#   CHECKPOINT_DIR    where checkpoints go                    [$PWD/checkpoints/$RUN_NAME]
#   GPUS_PER_NODE     GPUs per node                           [8]
#   MASTER_PORT       rendezvous port on the first node       [29500]
#   DRY_RUN=1         print the exact command line and exit (no SLURM needed)
#
# Every task runs with CUDA_DEVICE_MAX_CONNECTIONS=1 (Megatron's tensor-parallel layers
# rely on it to overlap communication with computation; its own examples set it).

set -euo pipefail

megatron_power_launch() {
  # Usage: megatron_power_launch RUN_NAME FLAG...  (FLAGs go to pretrain_gpt.py)
  local run_name="$1"
  shift
  local gpus_per_node="${GPUS_PER_NODE:-8}"
  local nodes="${SLURM_NNODES:-1}"
  local master_port="${MASTER_PORT:-29500}"
  local master_addr
  if [[ -n "${SLURM_JOB_NODELIST:-}" ]]; then
    master_addr="$(scontrol show hostnames "${SLURM_JOB_NODELIST}" | head -n 1)"
  elif [[ "${DRY_RUN:-0}" == "1" ]]; then
    master_addr="FIRST_NODE_OF_THE_ALLOCATION"  # known only inside the job
  else
    echo "megatron_power_launch: not inside a SLURM allocation (no SLURM_JOB_NODELIST);" \
      "submit with sbatch, or use DRY_RUN=1 to see the command" >&2
    return 2
  fi
  local megatron_lm_dir="${MEGATRON_LM_DIR:-/opt/Megatron-LM}"
  local checkpoint_dir="${CHECKPOINT_DIR:-${PWD}/checkpoints/${run_name}}"
  if [[ -z "${TOKENIZER_MODEL:-}" ]]; then
    echo "TOKENIZER_MODEL: set it to a Hugging Face tokenizer directory or a SentencePiece" \
      ".model file (README.md, section SLURM, says where to get PowerLM's)" >&2
    return 2
  fi

  local data_flags=(--mock-data)
  if [[ -n "${DATA_PATH:-}" ]]; then
    data_flags=(--data-path "${DATA_PATH}")
  fi
  local tokenizer_flags=(--tokenizer-type HuggingFaceTokenizer --tokenizer-model "${TOKENIZER_MODEL}")
  if [[ "${TOKENIZER_MODEL}" == *.model ]]; then
    tokenizer_flags=(--tokenizer-type GPTSentencePieceTokenizer --tokenizer-model "${TOKENIZER_MODEL}")
  fi

  # Mounts: the user's, then every host directory the job reads or writes.
  local mounts=()
  if [[ -n "${CONTAINER_MOUNTS:-}" ]]; then
    IFS=',' read -r -a mounts <<< "${CONTAINER_MOUNTS}"
  fi
  _mount() {
    local dir="$1" mount source
    for mount in "${mounts[@]}"; do
      source="${mount%%:*}"
      [[ "${dir}" == "${source}" || "${dir}" == "${source}/"* ]] && return 0
    done
    mounts+=("${dir}:${dir}")
  }
  if [[ -n "${DATA_PATH:-}" ]]; then
    _mount "$(dirname "${DATA_PATH}")"
  fi
  _mount "${checkpoint_dir}"
  if [[ "${TOKENIZER_MODEL}" == *.model ]]; then
    _mount "$(dirname "${TOKENIZER_MODEL}")"
  else
    _mount "${TOKENIZER_MODEL}"
  fi
  local joined
  joined="$(IFS=','; echo "${mounts[*]}")"

  local torchrun=(
    env CUDA_DEVICE_MAX_CONNECTIONS=1
    torchrun
    --nnodes "${nodes}"
    --nproc-per-node "${gpus_per_node}"
    --rdzv-id "${SLURM_JOB_ID:-${run_name}}"
    --rdzv-backend c10d
    --rdzv-endpoint "${master_addr}:${master_port}"
    -m megatron_power.launch "${megatron_lm_dir}/pretrain_gpt.py"
    "$@"
    "${data_flags[@]}"
    "${tokenizer_flags[@]}"
    --save "${checkpoint_dir}"
    --load "${checkpoint_dir}"
  )
  local srun=(
    srun
    --ntasks-per-node 1
    --container-image "${CONTAINER_IMAGE:-megatron-power:core_v0.16.1}"
    --container-workdir "${megatron_lm_dir}"
    --container-mounts "${joined}"
  )

  if [[ "${DRY_RUN:-0}" == "1" ]]; then
    printf '%q ' "${srun[@]}" "${torchrun[@]}"
    printf '\n'
    return 0
  fi
  mkdir -p "${checkpoint_dir}"
  "${srun[@]}" "${torchrun[@]}"
}
