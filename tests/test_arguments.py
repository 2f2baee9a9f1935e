"""Flag parsing and Megatron-LM's iterations -> samples conversion, worked by hand."""

import argparse

import pytest

from megatron_power.arguments import (
    add_megatron_scheduler_args,
    add_power_args,
    settings_from_args,
)
from megatron_power.schedules.batch import rampup_batch_size_at


def parse(*flags):
    parser = add_power_args(add_megatron_scheduler_args(argparse.ArgumentParser()))
    return parser.parse_args(list(flags))


def test_iterations_become_samples_like_megatron_lm():
    settings = settings_from_args(parse(
        "--lr", "0.02", "--lr-decay-style", "power", "--seq-length", "4096",
        "--train-iters", "1000", "--global-batch-size", "8",
        "--lr-warmup-iters", "10", "--lr-wsd-decay-iters", "100",
        "--lr-wsd-cycle-iters", "500", "1000",
        "--lr-branch-decay-start-iters", "300", "--lr-branch-decay-iters", "50",
    ))  # fmt: skip
    assert settings.lr_decay_steps == 8000 and settings.lr_warmup_steps == 80
    assert settings.wsd_decay_steps == 800
    assert settings.lr_wsd_cycle_steps == (4000, 8000)
    assert (settings.lr_branch_decay_start_steps, settings.lr_branch_decay_steps) == (2400, 400)


def test_samples_and_warmup_fraction():
    settings = settings_from_args(parse(
        "--lr", "0.01", "--lr-decay-style", "cosine", "--train-samples", "5000",
        "--lr-decay-samples", "4000", "--lr-warmup-fraction", "0.01",
    ))  # fmt: skip
    assert settings.lr_decay_steps == 4000
    assert settings.lr_warmup_steps == 0.01 * 4000  # Megatron-LM keeps the float


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--lr", "0.01", "--train-iters", "10"], "--global-batch-size"),
        (["--lr", "0.01"], "--train-iters or --train-samples"),
        (["--lr", "0.01", "--train-iters", "10", "--train-samples", "10"], "give one"),
        (["--train-iters", "10", "--global-batch-size", "4"], "--lr"),
        (["--lr", "0.01", "--train-samples", "100", "--lr-wsd-cycle-iters", "5",
          "--lr-wsd-cycle-samples", "5"], "--lr-wsd-cycle-iters and --lr-wsd-cycle-samples"),
        (["--lr", "0.01", "--train-samples", "100", "--lr-decay-style", "power",
          "--seq-length", "64", "--lr-power-a", "0"], r"--lr-power-a \(lr_power_a\)"),
    ],
)  # fmt: skip
def test_errors_name_the_flag(flags, message):
    with pytest.raises(ValueError, match=message):
        settings_from_args(parse(*flags))


def test_batch_ramp_follows_megatron():
    # Megatron: start 32, +32 per increment, 3 increments over 3000 samples -> every 1000.
    points = (0, 999, 1000, 2500, 3000, 9999)
    sizes = [rampup_batch_size_at(samples, 128, [32, 32, 3000]) for samples in points]
    assert sizes == [32, 32, 64, 96, 128, 128]
    assert rampup_batch_size_at(123, 64, None) == 64
