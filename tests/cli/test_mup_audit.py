"""``megatron-power mup-audit`` on a real Megatron-Core MoE model, against hand-computed
muP numbers."""

import subprocess
import sys


def test_mup_audit_prints_every_parameter_with_its_mup_numbers():
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", "mup-audit", "--model", "moe",
         "--hidden-size", "128", "--num-layers", "2", "--num-experts", "2", "--head-dim", "32",
         "--mup-base-hidden-size", "32", "--lr", "0.04", "--mup-init-std", "0.05"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = {}
    for line in result.stdout.splitlines():
        parts = line.split()
        if len(parts) == 7 and parts[0][0].isalpha() and parts[1] != "role":
            rows[parts[0]] = parts
    assert len(rows) == int(result.stdout.splitlines()[-1].split()[0])
    # By hand: m = 128 / 32 = 4; hidden LR 0.04 / 4, init 0.05 / sqrt(4);
    # output projections also / sqrt(2 x 2 layers); readout keeps 0.04 and 0.05.
    qkv = rows["decoder.layers.0.self_attention.linear_qkv.weight"]
    assert qkv[1] == "hidden" and float(qkv[3]) == 0.025 and float(qkv[4]) == 0.01
    assert abs(float(qkv[2]) - 0.025) < 0.025 * 0.1  # the built weights' measured std
    proj = rows["decoder.layers.1.self_attention.linear_proj.weight"]
    assert proj[1] == "output_projection" and float(proj[3]) == 0.0125
    readout = rows["output_layer.weight"]
    assert readout[1] == "readout" and float(readout[3]) == 0.05 and float(readout[4]) == 0.04
    norm = rows["decoder.final_layernorm.weight"]
    assert norm[1] == "vector" and float(norm[6]) == 0.0  # Megatron: no decay on norms
    fc2 = rows["decoder.layers.0.mlp.experts.local_experts.1.linear_fc2.weight"]
    assert fc2[1] == "expert_fc2" and float(fc2[4]) == 0.01
