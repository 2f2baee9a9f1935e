#!/usr/bin/env bash
# The GPU part of the joint-transfer benchmark, in one call on a machine with one CUDA GPU:
#   1. the plugin's training-step time against plain Megatron-Core (SP, cosine), side by side
#      in one run (bench/training_overhead.py), at the held-out cells' shape (2 x 1024, batch
#      8 x 64) and at a larger one (8 x 1024, batch 8 x 1024); target <= 1.005x;
#   2. the joint-transfer protocol 8x wider than the CPU one (JOINT_TRANSFER_SCALE=gpu, the
#      dense model: proxies and muP base 256 wide, held-out cells 1024 and 2048 wide), JOBS
#      runs sharing the GPU, stopped after BUDGET_S seconds with every finished run kept.
#   bash bench/joint_transfer_gpu.sh [CELL...]      (default cells: w1024-b8 w2048-b8)
# Env: OUT (results; default bench/results/gpu), BUDGET_S (the protocol's seconds; default
# 420), JOBS (concurrent runs; default 12), PHASES (default "proxy-tail cells"), DEVICE
# (default cuda), OVERHEAD (0: skip step 1), PY (default python3).
# megatron-core comes from a wheel in .whl/ where there is one (a machine with torch but not
# megatron-core), e.g. for Python 3.12:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#     --platform manylinux_2_28_x86_64 -d .whl megatron-core==0.19.2
# Resuming: the protocol's store (bench/results/gpu/joint_transfer: run records, fits, cells)
# comes back as OUT/joint_transfer_gpu_store.tgz. Unpack it with
#   tar xzf joint_transfer_gpu_store.tgz -C bench/results/gpu
# then JOINT_TRANSFER_SCALE=gpu python bench/joint_transfer.py --report-only writes the
# report, and the next call carries the store along and runs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-python3}"
out="${OUT:-bench/results/gpu}"
device="${DEVICE:-cuda}"
mkdir -p "${out}"
if ls .whl/megatron_core-*.whl >/dev/null 2>&1; then
  site="$(mktemp -d)"
  "${py}" -m pip install -q --no-index --no-deps --no-compile --target "${site}" .whl/*.whl
  export PYTHONPATH="${PWD}:${site}${PYTHONPATH:+:${PYTHONPATH}}"
else
  export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
fi
export PYTHONUNBUFFERED=1
"${py}" -c "import torch, megatron.core; print('torch', torch.__version__, 'megatron-core', \
megatron.core.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu')"

if [ "${OVERHEAD:-1}" = 1 ]; then
  "${py}" bench/training_overhead.py --device "${device}" --hidden-size 1024 --num-layers 2 \
    --global-batch-size 8 --seq-length 64 --steps 50 --rounds 7 --out "${out}/overhead_cell"
  "${py}" bench/training_overhead.py --device "${device}" --hidden-size 1024 --num-layers 8 \
    --global-batch-size 8 --seq-length 1024 --steps 20 --rounds 7 --out "${out}/overhead_large"
fi

cells=("$@")
if [ "${#cells[@]}" -eq 0 ]; then cells=(w1024-b8 w2048-b8); fi
read -r -a phases <<<"${PHASES:-proxy-tail cells}"
export JOINT_TRANSFER_SCALE=gpu OMP_NUM_THREADS=1
rc=0
timeout --signal=TERM --kill-after=30 "${BUDGET_S:-420}" "${py}" bench/joint_transfer.py \
  --models dense --phases "${phases[@]}" --cells "${cells[@]}" --jobs "${JOBS:-12}" || rc=$?
if [ "${rc}" -ne 0 ]; then
  echo "joint_transfer stopped (exit ${rc}); its finished runs are kept: call again to resume"
fi
mkdir -p bench/results/gpu/joint_transfer  # (empty if the protocol failed at its start)
tar czf "${out}/joint_transfer_gpu_store.tgz" -C bench/results/gpu joint_transfer
"${py}" bench/joint_transfer.py --report-only >/dev/null
cp bench/results/gpu/joint_transfer.md "${out}/joint_transfer_gpu.md" 2>/dev/null || true
sed -n '/^| cell/,/^$/p' bench/results/gpu/joint_transfer.md
