#!/usr/bin/env bash
# On one CUDA GPU: the real pretrain_gpt.py of a Megatron-LM tree with megatron-power
# (launcher route, Power + muP, bf16, distributed optimizer, Transformer Engine when it
# imports), a ~125M GPT for a few hundred iterations, saved and resumed against the
# uninterrupted run; and the same model under plain Megatron-LM (cosine, no plugin) for
# the iteration time, side by side in one run.
#   bash bench/megatron_lm_gpu.sh TREE.tar.gz       (OUT: where results go)
set -uo pipefail
cd "$(dirname "$0")/.." || exit
archive="$1"
out="${OUT:-bench/results/gpu}"
iters="${ITERS:-200}"
mkdir -p "${out}"
work="$(mktemp -d)"
tar xzf "${archive}" -C "${work}"
tree="$(ls -d "${work}"/megatron-lm-*)"
py="${PY:-python3}"
read -r -a includes <<<"$("${py}" -m pybind11 --includes)"
( cd "${tree}/megatron/core/datasets" && g++ -O3 -shared -std=c++17 -fPIC \
    "${includes[@]}" helpers.cpp \
    -o "helpers_cpp$("${py}" -c 'import sysconfig; print(sysconfig.get_config_var("EXT_SUFFIX"))')" )
export CUDA_DEVICE_MAX_CONNECTIONS=1 PYTHONPATH="${PWD}"
impl=(--transformer-impl local --no-persist-layer-norm --no-masked-softmax-fusion)  # no TE/apex
"${py}" -c "import transformer_engine" 2>/dev/null && impl=(--transformer-impl transformer_engine)
# Megatron's distributed optimizer cannot load a checkpoint without apex or TE (its
# state_dict asserts one Adam step count, and torch's Adam has none before the first step).
distopt=()
"${py}" -c "import transformer_engine" 2>/dev/null && distopt=(--use-distributed-optimizer)
"${py}" -c "import apex" 2>/dev/null && distopt=(--use-distributed-optimizer)
fusion=()  # Megatron's gradient-accumulation fusion needs apex's CUDA extension
"${py}" -c "import fused_weight_gradient_mlp_cuda" 2>/dev/null || fusion=(--no-gradient-accumulation-fusion)
"${py}" -c "import torch, sys; print(torch.__version__, torch.cuda.get_device_name(), 'impl=${impl[1]} ${distopt[*]}', \
'tree=$(basename "${tree}")')" | tee "${out}/megatron_lm_versions.txt"

model=(--num-layers 12 --hidden-size 768 --num-attention-heads 12 --seq-length 1024
       --max-position-embeddings 1024 --micro-batch-size 8 --global-batch-size 32
       --tokenizer-type NullTokenizer --vocab-size 32000 --mock-data --bf16
       "${impl[@]}" "${distopt[@]}" --log-interval 10
       --eval-iters 0 --eval-interval 100000 --num-workers 2 --train-iters "${iters}"
       --attention-dropout 0 --hidden-dropout 0 --seed 1234 "${fusion[@]}")
plugin=(--lr 0.02 --min-lr 0 --lr-decay-style power --lr-power-a 4 --lr-power-b -0.51
        --lr-warmup-iters 20 --power-mup --power-mup-base-hidden-size 256
        --power-mup-embedding-multiplier 4)
plain=(--lr 6e-4 --min-lr 6e-5 --lr-decay-style cosine --lr-warmup-iters 20)
half=$((iters / 2))

launch() { torchrun --nproc-per-node 1 --master-port "$1" "${@:2}"; }
echo "=== plain Megatron-LM (no plugin)"
launch 29501 "${tree}/pretrain_gpt.py" "${model[@]}" "${plain[@]}" > "${out}/plain.log" 2>&1
echo "plain rc=$?"
echo "=== megatron-power: Power + muP, saved at ${half}"
launch 29502 -m megatron_power.launch "${tree}/pretrain_gpt.py" "${model[@]}" "${plugin[@]}" \
  --save "${work}/ckpt" --save-interval "${half}" > "${out}/plugin.log" 2>&1
echo "plugin rc=$?"
echo "=== megatron-power: resumed from ${half}"
launch 29503 -m megatron_power.launch "${tree}/pretrain_gpt.py" "${model[@]}" "${plugin[@]}" \
  --load "${work}/ckpt" --ckpt-step "${half}" --save "${work}/ckpt2" --save-interval "${iters}" \
  > "${out}/resumed.log" 2>&1
echo "resumed rc=$?"
"${py}" bench/megatron_lm_log.py "${out}" "${half}" | tee "${out}/megatron_lm_gpu.md"
