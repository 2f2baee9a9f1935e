"""The muP wrappers the Megatron-LM hooks install, around real megatron-core models and
param-group code (Megatron-LM's own get_model / get_megatron_optimizer need CUDA)."""

import argparse

import pytest

from megatron_power.arguments import add_mup_args, mup_from_args
from megatron_power.megatron_lm.hooks import with_mup_model, with_mup_optimizer
from megatron_power.mup import ParamRole
from tests.support.gpt import build_gpt, init_model_parallel, tiny_config


@pytest.fixture(autouse=True)
def one_rank(single_process_group):
    init_model_parallel()


def mup_args(*flags):
    args = add_mup_args(argparse.ArgumentParser()).parse_args(list(flags))
    args.use_mup = False
    return args


ON = ("--power-mup", "--power-mup-base-hidden-size", "64", "--power-mup-embedding-multiplier", "4")


def test_mup_flags_map_to_the_config():
    mup = mup_from_args(
        mup_args(*ON, "--power-mup-router", "readout", "--power-mup-scale-adam-eps")
    )
    assert (mup.base_hidden_size, mup.embedding_multiplier, mup.router) == (64, 4.0, "readout")
    assert mup.scale_adam_eps and mup_from_args(mup_args()) is None


@pytest.mark.parametrize(
    ("flags", "flag"),
    [
        (("--power-mup",), "--power-mup-base-hidden-size"),
        ((*ON, "--power-mup-residual-multiplier", "0"), "--power-mup-residual-multiplier"),
        ((*ON, "--power-mup-residual-rule", "completep"), "--power-mup-base-num-layers"),
    ],
)
def test_bad_mup_flags_name_the_flag(flags, flag):
    with pytest.raises(ValueError, match=flag):
        mup_from_args(mup_args(*flags))


def test_get_model_wrapper_applies_mup_to_each_chunk():
    args = mup_args(*ON)
    from megatron_power.megatron.mup import mup_transformer_config

    config = mup_transformer_config(tiny_config(hidden=256), mup_from_args(args))

    def provider(pre_process=True, post_process=True):
        from tests.support.gpt import build_gpt as plain_build

        return plain_build(config, pre_process=pre_process, post_process=post_process)

    def megatron_get_model(model_provider_func, model_type=None, wrap_with_ddp=True):
        return [model_provider_func(pre_process=True, post_process=True)]

    (model,) = with_mup_model(megatron_get_model, lambda: args)(provider)
    assert model._megatron_power_mup.embedding_multiplier == 4.0
    (plain,) = with_mup_model(megatron_get_model, lambda: mup_args())(provider)
    assert not hasattr(plain, "_megatron_power_mup")


def test_get_megatron_optimizer_wrapper_adds_mup_groups():
    from megatron.core.optimizer import OptimizerConfig, _get_param_groups, optimizer_config

    args = mup_args(*ON)
    model = build_gpt(tiny_config(hidden=256), mup_from_args(args))
    seen = {}

    if hasattr(optimizer_config, "ParamKey"):  # 0.16+: config_overrides

        def megatron_get_megatron_optimizer(config, model_chunks, config_overrides=None,
                                            use_gloo_process_groups=True):  # fmt: skip
            seen["groups"] = _get_param_groups(model_chunks, config, config_overrides)
            return "optimizer"
    else:  # pragma: no cover - megatron-core <= 0.15

        def megatron_get_megatron_optimizer(config, model_chunks, no_weight_decay_cond=None,
                                            scale_lr_cond=None, lr_mult=1.0,
                                            use_gloo_process_groups=True):  # fmt: skip
            seen["groups"] = _get_param_groups(
                model_chunks, no_weight_decay_cond, scale_lr_cond, lr_mult,
                config.lr, config.min_lr, None, None,
            )  # fmt: skip
            return "optimizer"

    wrapped = with_mup_optimizer(megatron_get_megatron_optimizer, lambda: args)
    config = OptimizerConfig(optimizer="adam", lr=1e-2, min_lr=1e-4, weight_decay=0.1)
    assert wrapped(config, [model], use_gloo_process_groups=False) == "optimizer"
    from megatron_power.megatron.mup import classify_parameter

    names = {id(p): n for n, p in model.named_parameters()}
    for group in seen["groups"]:
        for param in group["params"]:
            role = classify_parameter(names[id(param)], param)
            expected = 1e-2 / 4 if role in (ParamRole.HIDDEN, ParamRole.OUTPUT_PROJECTION) else 1e-2
            assert group["max_lr"] * group.get("lr_mult", 1.0) == pytest.approx(expected)
