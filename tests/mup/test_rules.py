"""The pure muP rule table, presets and validation."""

import dataclasses
import math

import pytest

from megatron_power.mup import ModelShape, MupConfig, ParamRole
from megatron_power.mup.coord_check import judge, log2_slope

SHAPE = ModelShape(hidden_size=1024, num_layers=8, head_dim=64, moe_ffn_hidden_size=512)


def test_rule_table_by_hand():
    rules = MupConfig(base_hidden_size=256, base_moe_ffn_hidden_size=256).resolve(SHAPE, 0.1)
    assert rules.width_mult == 4.0 and rules.expert_width_mult == 2.0
    expected = {  # role: (init std, lr mult), worked out from the table in rules.py
        ParamRole.EMBEDDING: (0.1, 1.0),
        ParamRole.HIDDEN: (0.1 / 2, 0.25),
        ParamRole.OUTPUT_PROJECTION: (0.1 / 2 / 4, 0.25),  # / sqrt(2 * 8 layers) = / 4
        ParamRole.EXPERT_FC1: (0.1 / 2, 0.25),
        ParamRole.EXPERT_FC2: (0.1 / math.sqrt(2) / 4, 0.5),
        ParamRole.ROUTER: (0.1 / 2, 0.25),
        ParamRole.READOUT: (0.1, 1.0),
        ParamRole.VECTOR: (None, 1.0),
    }
    for role, (std, lr_mult) in expected.items():
        assert (
            rules.init_std_for(role) == pytest.approx(std)
            if std
            else rules.init_std_for(role) is None
        )
        assert rules.lr_mult(role) == lr_mult
        assert rules.eps_mult(role) == 1.0 and rules.wd_mult(role) == 1.0
    assert rules.softmax_scale == 1 / 64  # 1/d_head
    assert rules.logits_divisor == 4.0


def test_router_rules_and_options():
    readout = MupConfig(base_hidden_size=256, router="readout").resolve(SHAPE, 0.1)
    assert (
        readout.lr_mult(ParamRole.ROUTER) == 1.0 and readout.init_std_for(ParamRole.ROUTER) == 0.1
    )
    options = MupConfig(
        base_hidden_size=256, scale_adam_eps=True, weight_decay="independent",
        depth_scaled_output_init=False,
    ).resolve(SHAPE, 0.1)  # fmt: skip
    assert options.eps_mult(ParamRole.HIDDEN) == 0.25 and options.eps_mult(ParamRole.VECTOR) == 1
    assert options.wd_mult(ParamRole.HIDDEN) == 4.0 and options.wd_mult(ParamRole.EMBEDDING) == 1
    assert options.init_std_for(ParamRole.OUTPUT_PROJECTION) == 0.05


def test_readout_init_std_sets_the_readout_alone_and_needs_an_untied_readout():
    rules = MupConfig(base_hidden_size=256, readout_init_std=0.0).resolve(SHAPE, 0.1)
    assert rules.init_std_for(ParamRole.READOUT) == 0.0
    # Every other role keeps the table's std (worked out in test_rule_table_by_hand).
    assert rules.init_std_for(ParamRole.EMBEDDING) == 0.1
    assert rules.init_std_for(ParamRole.HIDDEN) == pytest.approx(0.05)
    default = MupConfig(base_hidden_size=256).resolve(SHAPE, 0.1)
    assert default.init_std_for(ParamRole.READOUT) == 0.1
    tied = dataclasses.replace(SHAPE, tied_readout=True)
    with pytest.raises(ValueError, match=r"^readout_init_std: 0.01 cannot apply, the readout is"):
        MupConfig(base_hidden_size=256, readout_init_std=0.01).resolve(tied)
    assert MupConfig(base_hidden_size=256).resolve(tied).init_std_for(ParamRole.READOUT) == 0.02
    with pytest.raises(ValueError, match=r"^readout_init_std"):
        MupConfig(base_hidden_size=256, readout_init_std=-0.01)


def test_attention_scale_reproduces_standard_attention_at_the_base_head_dim():
    rules = MupConfig(base_hidden_size=256, base_head_dim=64).resolve(SHAPE)
    assert rules.softmax_scale == pytest.approx(1 / math.sqrt(64))
    wider_heads = ModelShape(hidden_size=1024, num_layers=8, head_dim=128)
    assert MupConfig(base_hidden_size=256, base_head_dim=64).resolve(
        wider_heads
    ).softmax_scale == pytest.approx(8 / 128)


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (MupConfig(base_hidden_size=256, residual_multiplier=0.22), 0.22),
        (
            MupConfig(base_hidden_size=256, residual_multiplier=1.4, residual_rule="minicpm"),
            1.4 / math.sqrt(8),
        ),
        (MupConfig(base_hidden_size=256, residual_rule="completep", base_num_layers=2), 2 / 8),
    ],
)  # fmt: skip
def test_residual_rules(config, expected):
    assert config.resolve(SHAPE).residual_multiplier == pytest.approx(expected)


def test_granite_preset_maps_the_four_multipliers():
    # PowerLM-3B's published config values.
    mup = MupConfig.granite(
        base_hidden_size=256, embedding_multiplier=12.0, residual_multiplier=0.22,
        attention_multiplier=0.015625, logits_scaling=9.0,
    )  # fmt: skip
    rules = mup.resolve(ModelShape(hidden_size=2304, num_layers=40, head_dim=64))
    assert (rules.embedding_multiplier, rules.residual_multiplier) == (12.0, 0.22)
    assert (rules.softmax_scale, rules.logits_divisor) == (0.015625, 9.0)


def test_output_multiplier_divides_the_width_ratio():
    mup = MupConfig(base_hidden_size=256, output_multiplier=2.0)
    rules = mup.resolve(ModelShape(hidden_size=2048, num_layers=4, head_dim=64))
    assert rules.logits_divisor == 8 / 2  # logits x 2 / (2048 / 256)
    at_base = mup.resolve(ModelShape(hidden_size=256, num_layers=4, head_dim=64))
    assert at_base.logits_divisor == 0.5


def test_minicpm_preset():
    mup = MupConfig.minicpm(scale_emb=12, scale_depth=1.4, dim_model_base=256, head_dim=64)
    rules = mup.resolve(ModelShape(hidden_size=2304, num_layers=40, head_dim=64))
    assert rules.embedding_multiplier == 12
    assert rules.residual_multiplier == pytest.approx(1.4 / math.sqrt(40))
    assert rules.softmax_scale == pytest.approx(1 / 8)
    assert rules.logits_divisor == 9.0


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        (dict(base_hidden_size=0), "base_hidden_size"),
        (dict(base_hidden_size=256, embedding_multiplier=0), "embedding_multiplier"),
        (dict(base_hidden_size=256, residual_multiplier=-1), "residual_multiplier"),
        (dict(base_hidden_size=256, logits_scale=0), "logits_scale"),
        (dict(base_hidden_size=256, output_multiplier=0), "output_multiplier"),
        (dict(base_hidden_size=256, output_multiplier=2.0, logits_scale=9.0), "output_multiplier"),
        (dict(base_hidden_size=256, attention_scale=-0.1), "attention_scale"),
        (dict(base_hidden_size=256, residual_rule="deep"), "residual_rule"),
        (dict(base_hidden_size=256, residual_rule="completep"), "base_num_layers"),
        (dict(base_hidden_size=256, router="top"), "router"),
        (dict(base_hidden_size=256, weight_decay="none"), "weight_decay"),
    ],
)
def test_bad_config_names_the_field(kwargs, field):
    with pytest.raises(ValueError, match=f"^{field}"):
        MupConfig(**kwargs)


def test_base_width_must_divide_the_hidden_size():
    with pytest.raises(
        ValueError, match=r"^base_hidden_size: 384 does not divide hidden_size 1024"
    ):
        MupConfig(base_hidden_size=384).resolve(SHAPE)
    with pytest.raises(ValueError, match=r"^base_moe_ffn_hidden_size"):
        MupConfig(base_hidden_size=256, base_moe_ffn_hidden_size=300).resolve(SHAPE)


def test_slope_and_verdicts():
    assert log2_slope([1, 2, 4, 8], [3, 3, 3, 3]) == 0.0
    assert log2_slope([1, 2, 4, 8], [1, 2**-0.5, 0.5, 2**-1.5]) == pytest.approx(-0.5)
    verdicts = judge([1, 2, 4], {"init": {"logits": [1, 0.5, 0.25], "layer1": [1, 1, 1]},
                                 "trained": {"logits": [1, 0.5, 0.25]}})  # fmt: skip
    passed = {(v.phase, v.module): v.passed for v in verdicts}
    assert passed == {
        ("init", "logits"): True,
        ("init", "layer1"): True,
        ("trained", "logits"): False,
    }
