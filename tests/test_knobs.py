"""One definition per knob: every schedule knob reaches the scheduler through every entry
point, and every entry point gives the same LR for the same flags at every iteration."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch

from megatron_power.arguments import (
    add_megatron_scheduler_args,
    add_mup_args,
    add_power_args,
    mup_from_args,
    settings_from_args,
)
from megatron_power.knobs import Unit, knobs
from megatron_power.mup.rules import MupConfig
from megatron_power.schedules.settings import ScheduleSettings

SEQ, BATCH, ITERS = 64, 4, 100
RUN = ITERS * BATCH  # samples

#: A value other than the default for every schedule knob, in samples. Chosen so that all
#: of them hold together in one valid schedule (WSD-S and branch decay are tested apart).
NON_DEFAULT = {
    "lr_decay_style": "power",
    "max_lr": 0.03,
    "min_lr": 0.001,
    "init_lr": 0.002,
    "lr_warmup_steps": 8,
    "lr_decay_steps": RUN,
    "wsd_decay_steps": 40,
    "lr_wsd_decay_style": "half_life",
    "seq_length": SEQ,
    "lr_power_a": 1.5,
    "lr_power_b": -0.4,
    "lr_power_reference_seq_length": 2048,
    "lr_power_batch_exponent": 0.7,
    "lr_power_batch_size": 4 * BATCH,  # beta held at another batch than the one in force
    "lr_decay_half_life_steps": 12,
}
WSD_S = {"lr_decay_style": "WSD", "wsd_decay_steps": 20, "lr_wsd_cycle_steps": (200, 400)}
BRANCH = {
    "lr_decay_style": "constant",
    "lr_branch_decay_start_steps": 200,
    "lr_branch_decay_steps": 100,
    "lr_branch_decay_style": "linear",
}


def schedule_fields() -> set[str]:
    return {item.name for item, _ in knobs(ScheduleSettings)}


def test_every_knob_has_a_test_value():
    """A knob added without a value here fails: each must be shown to reach the scheduler."""
    covered = set(NON_DEFAULT) | set(WSD_S) | set(BRANCH)
    assert covered == schedule_fields()


def megatron_flags(values: dict) -> list[str]:
    """Megatron-LM's flags (and the plugin's) for a dict of ScheduleSettings values."""
    flags = ["--train-samples", str(RUN), "--global-batch-size", str(BATCH)]
    for item, meta in knobs(ScheduleSettings):
        if item.name not in values or item.name == "lr_decay_steps":
            continue
        value = values[item.name]
        if meta.unit is Unit.SAMPLES:
            flag = f"{meta.flag}-samples"
            flags += [flag, *map(str, value)] if meta.many else [flag, str(value)]
        else:
            flags += [meta.flag, str(value)]
    return flags


def pretrain_flags(values: dict) -> list[str]:
    """pretrain's flags (tokens) for the same values; the run's length is --train-tokens."""
    flags = ["--train-tokens", str(RUN * SEQ), "--global-batch-size", str(BATCH),
             "--seq-length", str(SEQ)]  # fmt: skip
    for item, meta in knobs(ScheduleSettings):
        if item.name not in values or not meta.pretrain_flag:
            continue
        value = values[item.name]
        if meta.unit is Unit.SAMPLES:
            tokens = [v * SEQ for v in value] if meta.many else [value * SEQ]
            flags += [meta.pretrain_flag, *map(str, tokens)]
        else:
            flags += [meta.pretrain_flag, str(value)]
    return flags


def expected_settings(values: dict) -> ScheduleSettings:
    return ScheduleSettings(**{"max_lr": 0.03, "lr_decay_steps": RUN, "seq_length": SEQ, **values})


def via_schedule_command(values: dict) -> ScheduleSettings:
    parser = add_power_args(add_megatron_scheduler_args(argparse.ArgumentParser()))
    args = parser.parse_args(megatron_flags({"max_lr": 0.03, "seq_length": SEQ, **values}))
    return settings_from_args(args)


def via_launcher(values: dict) -> dict:
    """What the hooks hand the scheduler: Megatron-LM's own kwargs completed from the
    flags (Megatron-LM's parser defaults, e.g. its "exponential" shape, as it sets them)."""
    from megatron_power.megatron_lm.hooks import flag_given, scheduler_arguments

    parser = add_power_args(add_megatron_scheduler_args(argparse.ArgumentParser()))
    parser.set_defaults(
        lr_wsd_decay_style="exponential",
        lr_decay_style="linear",
        lr_warmup_iters=0,
        lr_warmup_samples=0,
        min_lr=0.0,
        lr_warmup_init=0.0,
    )  # fmt: skip  (Megatron-LM's own defaults)
    argv = megatron_flags({"max_lr": 0.03, "seq_length": SEQ, **values})
    args = parser.parse_args(argv)
    args.megatron_power_wsd_decay_style_given = flag_given("--lr-wsd-decay-style", argv)
    settings = settings_from_args(args)  # what Megatron-LM's own conversion gives, too
    megatron_kwargs = dict(
        init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=settings.lr_warmup_steps, lr_decay_steps=settings.lr_decay_steps,
        lr_decay_style=args.lr_decay_style, start_wd=0.1, end_wd=0.1, wd_incr_steps=RUN,
        wd_incr_style="constant", wsd_decay_steps=settings.wsd_decay_steps,
        lr_wsd_decay_style=args.lr_wsd_decay_style,
    )  # fmt: skip
    return scheduler_arguments(args, megatron_kwargs)


def via_pretrain(values: dict) -> ScheduleSettings:
    from megatron_power.cli.main import build_parser
    from megatron_power.cli.pretrain import config_from_args

    flags = pretrain_flags({"max_lr": 0.03, **values})
    args = build_parser().parse_args(["pretrain", *flags])
    if "lr_branch_decay_steps" in values:  # pretrain takes a branch's start from --init-from
        return None
    config, _, _ = config_from_args(args)
    return config.schedule_settings()


def scheduler_from(kwargs: dict):
    from megatron_power.megatron import PowerOptimizerParamScheduler

    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
    return PowerOptimizerParamScheduler(optimizer, **kwargs)


@pytest.mark.parametrize("values", [NON_DEFAULT, WSD_S, BRANCH], ids=["power", "wsd-s", "branch"])
def test_every_knob_reaches_the_scheduler_through_every_entry_point(values):
    expected = expected_settings(values)
    assert via_schedule_command(values) == expected
    assert scheduler_from(via_launcher(values)).settings == expected
    from_pretrain = via_pretrain(values)
    if from_pretrain is not None:
        assert from_pretrain == expected
    api = scheduler_from(
        {
            **expected.to_dict(),
            "start_wd": 0.0,
            "end_wd": 0.0,
            "wd_incr_steps": RUN,
            "wd_incr_style": "constant",
        }
    )
    assert api.settings == expected


def lrs(settings_or_kwargs) -> list[float]:
    if isinstance(settings_or_kwargs, ScheduleSettings):
        from megatron_power.megatron import PowerOptimizerParamScheduler

        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.0)
        scheduler = PowerOptimizerParamScheduler.from_settings(optimizer, settings_or_kwargs)
    else:
        scheduler = scheduler_from(settings_or_kwargs)
    out = []
    for _ in range(ITERS):
        scheduler.step(BATCH)
        out.append(scheduler.optimizer.param_groups[0]["lr"])
    return out


@pytest.mark.parametrize(
    "values",
    [
        {"lr_decay_style": "power", "wsd_decay_steps": 80},  # Power's default tail shape
        {"lr_decay_style": "WSD", "wsd_decay_steps": 80},  # WSD's default shape (Megatron's)
        {"lr_decay_style": "power"},  # no tail: the law alone
        {"lr_decay_style": "cosine", "lr_warmup_steps": 20},
        NON_DEFAULT,
        WSD_S,
    ],
    ids=["power-tail", "wsd", "power", "cosine", "all-knobs", "wsd-s"],
)
def test_same_flags_give_the_same_lr_at_every_iteration(values):
    """Python API, `schedule`, `pretrain` and the Megatron-LM launcher, flag for flag."""
    from megatron_power.cli.schedule import simulate

    api = lrs(expected_settings(values))
    preview = [point.lr for point in simulate(via_schedule_command(values), lambda samples: BATCH)][
        1:
    ]
    assert preview == api
    assert lrs(via_launcher(values)) == api
    assert lrs(via_pretrain(values)) == api


def test_power_tail_defaults_to_exponential_e_everywhere():
    """Decided once (README): Power's tail is the paper's exponential_e; WSD keeps
    Megatron's exponential. The launcher sees Megatron-LM's "exponential" default but
    knows it was not given."""
    tail = {"lr_decay_style": "power", "wsd_decay_steps": 80}
    assert expected_settings(tail).decay_shape == "exponential_e"
    assert via_schedule_command(tail).decay_shape == "exponential_e"
    assert scheduler_from(via_launcher(tail)).settings.decay_shape == "exponential_e"
    assert via_pretrain(tail).decay_shape == "exponential_e"
    wsd = {"lr_decay_style": "WSD", "wsd_decay_steps": 80}
    assert scheduler_from(via_launcher(wsd)).settings.decay_shape == "exponential"
    # The step before the end, by hand: the tail starts at sample 320 (400 - 80) from the
    # law's value there, a=4, b=-0.51, beta = 4 x 64 / 4096 (cap 0.03 not reached); after
    # step 99 (sample 396) r = 76/80 and lr = c(r) x start, c = (e**(1-r) - 1) / (e - 1).
    start = min(0.03, (BATCH * SEQ / 4096) * 4.0 * (320 * SEQ) ** -0.51)
    coefficient = (math.e ** (1 - 76 / 80) - 1) / (math.e - 1)
    values = lrs(expected_settings(tail))
    assert values[-2] == pytest.approx(coefficient * start, rel=1e-9)
    assert values[-1] == 0.0


# logits_scale sets the divisor outright, so output_multiplier is tested without it.
@pytest.mark.parametrize("readout", [{"logits_scale": 2.0}, {"output_multiplier": 1.5}])
def test_every_mup_knob_reaches_mup_config_from_the_launcher_and_pretrain(readout):
    from megatron_power.cli.main import build_parser
    from megatron_power.cli.pretrain import mup_from_args as pretrain_mup

    chosen = {"base_hidden_size": 32, "embedding_multiplier": 3.0, "residual_multiplier": 0.7,
              "residual_rule": "completep", "base_num_layers": 2, "base_head_dim": 8,
              "attention_scale": 0.1, "logits_scale": None, "output_multiplier": 1.0,
              "init_std": 0.01, "readout_init_std": 0.0, "depth_scaled_output_init": False,
              "base_moe_ffn_hidden_size": 16, "router": "readout", "scale_adam_eps": True,
              "weight_decay": "independent", **readout}  # fmt: skip
    assert set(chosen) == {item.name for item in dataclasses.fields(MupConfig)}
    launcher, pretrain = ["--power-mup"], []
    for item, meta in knobs(MupConfig):
        if item.name in ("logits_scale", "output_multiplier") and item.name not in readout:
            continue
        if isinstance(chosen[item.name], bool):
            launcher.append(meta.flag)
            pretrain.append(meta.pretrain_flag)
        else:
            launcher += [meta.flag, str(chosen[item.name])]
            pretrain += [meta.pretrain_flag, str(chosen[item.name])]
    args = add_mup_args(argparse.ArgumentParser()).parse_args(launcher)
    assert mup_from_args(args) == MupConfig(**chosen)
    args = build_parser().parse_args(["pretrain", *pretrain])
    assert MupConfig.from_dict(pretrain_mup(args)) == MupConfig(**chosen)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("lr_power_a", float("nan"), "lr_power_a: must be a finite number > 0"),
        ("lr_power_b", 0.2, "lr_power_b: must be a finite number < 0"),
        ("min_lr", float("inf"), "min_lr: must be a finite number >= 0"),
        ("lr_warmup_steps", -1, "lr_warmup_steps: must be a finite number >= 0"),
        ("wsd_decay_steps", 2.5, "wsd_decay_steps: must be an integer >= 0"),
        ("lr_decay_style", "cosine2", "lr_decay_style: 'cosine2' is not one of"),
    ],
)
def test_checks_come_from_the_knob(field, value, message):
    values = {"lr_decay_style": "power", "max_lr": 0.1, "lr_decay_steps": 100, "seq_length": 8}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        ScheduleSettings(**{**values, field: value})


def test_readme_flag_table_is_the_definitions():
    from pathlib import Path

    from megatron_power.arguments import knob_table

    readme = (Path(__file__).parent.parent / "README.md").read_text()
    start, end = "<!-- knob-table:start -->\n", "\n<!-- knob-table:end -->"
    block = readme[readme.index(start) + len(start) : readme.index(end)]
    assert block == knob_table()
