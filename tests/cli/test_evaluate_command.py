"""One validation set per data set: ``pretrain`` evaluates runs of any length and seed on
the same sequences, and ``megatron-power evaluate`` brings older runs onto them.

Before, a run's validation set was the tail of a token stream whose length followed
--train-tokens and whose order followed --seed: on 16k tokens that moved a final loss by
~0.5%, more than the differences ``predict`` is asked to resolve.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SEQ, BATCH = 64, 16
MODEL = ["--num-layers", "2", "--hidden-size", "64", "--head-dim", "16", "--seq-length", str(SEQ),
         "--global-batch-size", str(BATCH), "--warmup-tokens", str(4 * BATCH * SEQ)]  # fmt: skip


def tool(*argv: str | Path, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", *map(str, argv)],
        capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr[-3000:]
    return result


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("evaluate")
    steps = {"short": 20, "long": 40}
    for (name, count), seed, style in zip(steps.items(), (0, 1), ("constant", "cosine"),
                                          strict=True):  # fmt: skip
        tool("pretrain", "--run-dir", root / name, *MODEL, "--lr", "0.01", "--seed", str(seed),
             "--train-tokens", str(count * BATCH * SEQ), "--lr-decay-style", style)  # fmt: skip
    return {name: root / name for name in steps} | {"root": root}


def test_runs_of_other_lengths_and_seeds_share_one_validation_set(runs):
    short, long = summary(runs["short"]), summary(runs["long"])
    # Their training streams differ (the stream's length follows --train-tokens) ...
    assert (runs["short"] / "data" / "tokens.bin").stat().st_size < (
        runs["long"] / "data" / "tokens.bin"
    ).stat().st_size
    # ... their validation sequences do not: the default 16,384 tokens, named by content.
    assert short["valid_set"] == long["valid_set"]
    assert short["valid_set"]["sequences"] * SEQ == 16_384
    assert short["valid_loss"] != long["valid_loss"]


def test_evaluate_reproduces_the_training_loops_own_final_loss(runs, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(runs["long"], copy)
    before = summary(copy)
    result = tool("evaluate", copy)
    assert "already on its data's fixed validation set" in result.stdout
    assert summary(copy) == before  # nothing to do: nothing written
    tool("evaluate", copy, "--again")  # a new process, the model from the final checkpoint
    after = summary(copy)
    assert after["valid_loss"] == pytest.approx(before["valid_loss"], abs=1e-6)
    assert after["valid_set"] == before["valid_set"]
    assert "earlier_evaluations" not in after  # same set: no earlier evaluation to keep


def test_an_older_run_is_evaluated_again_and_keeps_its_earlier_loss(runs, tmp_path):
    """A run written before the fixed set: no valid.* beside its tokens, no valid_set in
    its summary, a loss measured on other sequences. predict refuses to mix it with a
    current run; evaluate brings it onto the fixed set."""
    old = tmp_path / "old"
    shutil.copytree(runs["long"], old)
    for leftover in (old / "data").glob("valid.*"):
        leftover.unlink()
    earlier = summary(old)
    del earlier["valid_set"]
    earlier["valid_loss"] += 0.05
    (old / "summary.json").write_text(json.dumps(earlier))

    budget = ["--lr", "0.01", "--lr-decay-style", "cosine", "--train-iters", "40",
              "--global-batch-size", str(BATCH), "--seq-length", str(SEQ),
              "--lr-warmup-iters", "4"]  # fmt: skip
    refused = tool("predict", "--fit", runs["short"], old, *budget, check=False)
    assert refused.returncode == 2
    assert "were evaluated on different validation sets" in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1

    result = tool("evaluate", old)
    assert f"was {earlier['valid_loss']:.4f}" in result.stdout
    after = summary(old)
    assert after["valid_set"] == summary(runs["long"])["valid_set"]
    assert after["valid_loss"] == pytest.approx(summary(runs["long"])["valid_loss"], abs=1e-6)
    assert after["earlier_evaluations"] == [
        {"valid_loss": earlier["valid_loss"], "valid_set": "not recorded"}
    ]
    accepted = tool("predict", "--fit", runs["short"], old, *budget)
    assert "final validation loss" in accepted.stdout.lower()


def test_one_process_evaluates_many_runs_without_growing(runs, tmp_path):
    """evaluate goes through runs in one process: model-parallel groups are made once
    (each initialisation used to leave gloo's threads behind: ~50 a run, 5,600 after 100)."""
    copies = []
    for index in range(3):
        copies.append(tmp_path / f"copy{index}")
        shutil.copytree(runs["short"], copies[-1])
    code = (
        "import os, sys\n"
        "from megatron_power.cli.main import main\n"
        "for run in sys.argv[1:]:\n"
        "    assert main(['evaluate', '--again', run]) == 0\n"
        "    print('threads', len(os.listdir('/proc/self/task')), flush=True)\n"
    )
    result = subprocess.run([sys.executable, "-c", code, *map(str, copies)], capture_output=True,
                            text=True, timeout=600, check=False)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    threads = [int(line.split()[1]) for line in result.stdout.splitlines()
               if line.startswith("threads")]  # fmt: skip
    assert len(threads) == 3 and threads[2] == threads[0], threads
