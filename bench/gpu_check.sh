#!/usr/bin/env bash
# On a machine with a CUDA GPU: `megatron-power pretrain` on the GPU (nccl, one rank),
# stopped and resumed against an uninterrupted run, and the training-step time of the
# plugin (muP + Power) against plain Megatron-Core (SP + Megatron's cosine) in one run.
#   bash bench/gpu_check.sh            (OUT: where results go; default bench/results/gpu)
# Needs torch with CUDA and megatron-core; a wheel in .whl/ is installed to a temp dir.
set -euo pipefail
cd "$(dirname "$0")/.."
py="${PY:-python3}"
out="${OUT:-bench/results/gpu}"
mkdir -p "${out}"
work="$(mktemp -d)"
if ls .whl/megatron_core-*.whl >/dev/null 2>&1; then
  "${py}" -m pip install -q --no-deps --target "${work}/site" .whl/megatron_core-*.whl
  export PYTHONPATH="${PWD}:${work}/site${PYTHONPATH:+:${PYTHONPATH}}"
else
  export PYTHONPATH="${PWD}${PYTHONPATH:+:${PYTHONPATH}}"
fi
"${py}" -c "import torch, megatron.core; print(torch.__version__, megatron.core.__version__, \
torch.cuda.get_device_name())" | tee "${out}/versions.txt"

small=(--device cuda --train-tokens 1024000 --global-batch-size 32 --seq-length 256
       --hidden-size 512 --num-layers 8 --head-dim 64)
pretrain() { "${py}" -m megatron_power.cli.main pretrain "$@"; }
pretrain --run-dir "${work}/full" "${small[@]}" 2>/dev/null | tail -2
pretrain --run-dir "${work}/part" "${small[@]}" --exit-interval 60 2>/dev/null | tail -1
pretrain --resume "${work}/part" 2>/dev/null | tail -2
"${py}" - "${work}" "${out}" <<'EOF'
import json, sys
from pathlib import Path
work, out = Path(sys.argv[1]), Path(sys.argv[2])
rows = {name: [json.loads(line) for line in (work / name / "metrics.jsonl").open()]
        for name in ("full", "part")}
loss = max(abs(a["loss"] - b["loss"]) for a, b in zip(rows["full"], rows["part"], strict=True))
lr = max(abs(a["lr"] - b["lr"]) for a, b in zip(rows["full"], rows["part"], strict=True))
summary = {name: json.loads((work / name / "summary.json").read_text()) for name in rows}
result = {"iterations": len(rows["full"]), "max_loss_difference_resumed_vs_full": loss,
          "max_lr_difference": lr, "valid_loss": {k: v["valid_loss"] for k, v in summary.items()}}
print(json.dumps(result, indent=1))
(out / "pretrain_resume_cuda.json").write_text(json.dumps(result, indent=1) + "\n")
EOF
"${py}" bench/training_overhead.py --device cuda --hidden-size 1024 --num-layers 8 \
  --global-batch-size 8 --seq-length 1024 --steps 20 --rounds 7
cp bench/results/training_overhead_cuda.md bench/results/training_overhead_cuda.json "${out}/"
