"""The coordinate check on real Megatron-Core models: muP keeps every activation's scale
over an 8x width range; standard parameterisation does not (so the check can fail)."""

import pytest
import torch

from megatron_power.megatron.coord_check import coordinate_check
from megatron_power.megatron.mup import mup_config_overrides
from megatron_power.mup import MupConfig
from megatron_power.mup.coord_check import judge
from tests.support.gpt import batch, build_gpt, init_model_parallel, tiny_config

# 128 -> 1024: widths well above the 32 tokens per batch, where muP's limit is visible;
# 4 seeds averaged; 4 Adam steps at a high LR.
WIDTHS = [128, 256, 512, 1024]
SEEDS = range(4)
LR = 1e-2


@pytest.fixture(autouse=True)
def one_rank(single_process_group):
    init_model_parallel()


def run(moe: bool, use_mup: bool):
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups

    mup = MupConfig(base_hidden_size=128, embedding_multiplier=4.0, residual_multiplier=0.5)

    def build(width, seed):
        model = build_gpt(
            tiny_config(hidden=width, moe=moe, moe_ffn=width), mup if use_mup else None
        )
        optimizer_config = OptimizerConfig(optimizer="adam", lr=LR, min_lr=0.0, weight_decay=0.0)
        overrides = mup_config_overrides(model.config, mup if use_mup else None, optimizer_config)
        groups = _get_param_groups([model], optimizer_config, overrides)
        for group in groups:
            group["lr"] = group["max_lr"]
        return model, torch.optim.Adam(groups, lr=LR)

    means = coordinate_check(build, WIDTHS, SEEDS, steps=4, batch=lambda seed: batch(seed, 2))
    return {(v.phase, v.module): v for v in judge(WIDTHS, means)}


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_mup_passes_the_coordinate_check(moe):
    verdicts = run(moe, use_mup=True)
    modules = {module for _, module in verdicts}
    expected = {"embedding", "layer1", "layer2", "logits"}
    if moe:
        expected |= {"router1", "router2", "experts1", "experts2"}
    assert modules == expected
    failed = [
        f"{v.phase} {v.module}: slope {v.slope:+.3f}" for v in verdicts.values() if not v.passed
    ]
    assert not failed, failed
    assert verdicts[("init", "logits")].slope < -0.4  # a non-zero readout shrinks as 1/sqrt(m)


@pytest.mark.parametrize("moe", [False, True], ids=["dense", "moe"])
def test_standard_parameterisation_fails_it(moe):
    verdicts = run(moe, use_mup=False)
    grown = {module: v.slope for (phase, module), v in verdicts.items() if phase == "trained"}
    assert grown["layer2"] > 1.0 and grown["logits"] > 0.3, grown
    if moe:
        assert grown["experts2"] > 1.0 and grown["router2"] > 0.5, grown
