"""The Megatron-LM hooks: flags and validation everywhere, and against a real Megatron-LM
release tree (the ``megatron_lm_tree`` fixture; its code is never part of this repository)."""

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_power.arguments import add_megatron_scheduler_args
from megatron_power.megatron import PowerOptimizerParamScheduler
from megatron_power.megatron_lm.hooks import add_megatron_lm_args, uses_plugin, validate_plugin_args

REPO = Path(__file__).resolve().parents[2]


def megatron_like_parser():
    """A parser with Megatron-LM's own scheduler flags and choices (as Megatron defines them)."""
    parser = argparse.ArgumentParser(allow_abbrev=False)
    add_megatron_scheduler_args(parser)
    for action in parser._actions:
        if action.dest == "lr_decay_style":
            action.choices = ["constant", "linear", "cosine", "inverse-square-root", "WSD"]
        if action.dest == "lr_wsd_decay_style":
            action.choices = ["exponential", "linear", "cosine", "minus_sqrt"]
    return parser


FLAGS = ["--lr", "0.02", "--lr-decay-style", "power", "--train-iters", "100",
         "--global-batch-size", "8", "--seq-length", "64"]  # fmt: skip


def test_hooks_add_the_plugin_flags_and_choices():
    parser = add_megatron_lm_args(megatron_like_parser())
    args = parser.parse_args([*FLAGS, "--lr-wsd-decay-style", "half_life", "--lr-power-a", "3"])
    assert (args.lr_decay_style, args.lr_wsd_decay_style, args.lr_power_a) == (
        "power",
        "half_life",
        3.0,
    )
    assert uses_plugin(args)
    plain = parser.parse_args(["--lr", "0.01", "--lr-decay-style", "cosine", "--train-iters", "5"])
    assert not uses_plugin(plain)
    validate_plugin_args(plain)  # a plain Megatron run is left alone


@pytest.mark.parametrize(
    ("extra", "flag"),
    [
        (["--lr-power-b", "0.3"], "--lr-power-b"),
        (["--lr-wsd-decay-iters", "200"], "--lr-wsd-decay-iters"),
        (["--lr-wsd-cycle-iters", "50", "40"], "--lr-wsd-cycle-iters"),
        (["--lr-branch-decay-start-iters", "50"], "--lr-branch-decay-iters"),
    ],
)
def test_bad_plugin_flags_stop_with_one_line_naming_the_flag(extra, flag, capsys):
    args = add_megatron_lm_args(megatron_like_parser()).parse_args([*FLAGS, *extra])
    with pytest.raises(SystemExit) as stop:
        validate_plugin_args(args)
    assert stop.value.code == 2
    message = capsys.readouterr().err.strip().splitlines()
    assert len(message) == 1 and flag in message[0] and message[0].startswith("megatron-power")


def test_launcher_usage_errors():
    for argv in ([], ["--lr", "1"], ["no_such_script.py"]):
        result = subprocess.run(
            [sys.executable, "-m", "megatron_power.launch", *argv],
            capture_output=True, text=True, check=False, cwd=REPO,
        )  # fmt: skip
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1


TREE_FLAGS = [
    "--lr", "0.02", "--min-lr", "0.0", "--lr-decay-style", "power", "--lr-power-a", "4",
    "--lr-power-b", "-0.51", "--train-iters", "300", "--micro-batch-size", "2",
    "--global-batch-size", "16", "--num-layers", "2", "--hidden-size", "64",
    "--num-attention-heads", "4", "--seq-length", "128", "--max-position-embeddings", "128",
    "--lr-warmup-iters", "10", "--lr-wsd-decay-iters", "50", "--lr-wsd-decay-style",
    "exponential_e", "--tokenizer-type", "NullTokenizer", "--vocab-size", "128", "--mock-data",
]  # fmt: skip


def run_in_tree(tree, *extra, flags=TREE_FLAGS):
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{REPO}", WORLD_SIZE="1", RANK="0")
    return subprocess.run(
        [sys.executable, "-m", "megatron_power.launch",
         str(REPO / "tests/support/megatron_lm_check.py"), *flags, *extra],
        capture_output=True, text=True, check=False, env=env, cwd=REPO, timeout=600,
    )  # fmt: skip


def test_real_megatron_lm_tree_builds_the_plugin_scheduler(megatron_lm_tree):
    result = run_in_tree(megatron_lm_tree)
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    report = json.loads(line[len("RESULT ") :])
    assert report["scheduler"] == "MegatronLMScheduler" and report["style"] == "power"
    # The same schedule built directly from the same numbers, stepped the same way.
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=0.02)
    direct = PowerOptimizerParamScheduler(
        optimizer, 0.0, 0.02, 0.0, 10 * 16, 300 * 16, "power", 0.01, 0.01, 300 * 16, "constant",
        wsd_decay_steps=50 * 16, lr_wsd_decay_style="exponential_e", seq_length=128,
    )  # fmt: skip
    expected = []
    for _ in range(300):
        direct.step(16)
        expected.append(optimizer.param_groups[0]["lr"])
    assert report["lrs"] == expected
    assert report["lrs"][-1] == 0.0


def test_real_tree_gives_power_its_one_default_tail_shape(megatron_lm_tree):
    """Without --lr-wsd-decay-style Megatron-LM's parser fills in "exponential"; the
    launcher still runs Power's one default tail, exponential_e, as every entry point."""
    at = TREE_FLAGS.index("--lr-wsd-decay-style")
    result = run_in_tree(megatron_lm_tree, flags=TREE_FLAGS[:at] + TREE_FLAGS[at + 2 :])
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    report = json.loads(line[len("RESULT ") :])
    assert report["settings"]["lr_wsd_decay_style"] is None
    with_shape = json.loads(
        next(
            x for x in run_in_tree(megatron_lm_tree).stdout.splitlines() if x.startswith("RESULT ")
        )[7:]
    )
    assert report["lrs"] == with_shape["lrs"]  # the same curve as naming exponential_e


def test_real_tree_refuses_a_bad_flag_before_training(megatron_lm_tree):
    result = run_in_tree(megatron_lm_tree, "--lr-power-b", "0.5")
    assert result.returncode == 2
    assert "megatron-power: error: --lr-power-b" in result.stderr


def test_real_tree_builds_the_mup_transformer_config(megatron_lm_tree):
    result = run_in_tree(
        megatron_lm_tree,
        "--power-mup",
        "--power-mup-base-hidden-size",
        "16",
        "--init-method-std",
        "0.04",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    line = next(x for x in result.stdout.splitlines() if x.startswith("RESULT "))
    mup = json.loads(line[len("RESULT ") :])["mup"]
    assert mup["softmax_scale"] == pytest.approx(1 / 16)  # 1/d_head, d_head = 64/4
    assert mup["init_std"] == pytest.approx(0.04 / 2, rel=0.02)  # m = 64/16 = 4


def test_real_tree_refuses_plugin_mup_with_a_base_that_does_not_divide(megatron_lm_tree):
    result = run_in_tree(megatron_lm_tree, "--power-mup", "--power-mup-base-hidden-size", "48")
    assert result.returncode == 2
    assert "--power-mup-base-hidden-size (base_hidden_size): 48 does not divide" in result.stderr


def test_real_tree_refuses_a_readout_init_std_for_its_tied_readout(megatron_lm_tree):
    # Megatron-LM ties the readout to the embedding unless --untie-embeddings-and-output-weights.
    flags = ("--power-mup", "--power-mup-base-hidden-size", "16",
             "--power-mup-readout-init-std", "0")  # fmt: skip
    result = run_in_tree(megatron_lm_tree, *flags)
    assert result.returncode == 2
    assert ("--power-mup-readout-init-std (readout_init_std): 0 cannot apply, the readout is "
            "tied") in result.stderr  # fmt: skip
    untied = run_in_tree(megatron_lm_tree, *flags, "--untie-embeddings-and-output-weights")
    assert untied.returncode == 0, untied.stderr[-3000:]
