"""``megatron-power sweep``: local pool, resume, failures, SLURM array, real pretrain."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

# A stand-in for the user's Megatron-LM launch: prints Megatron-LM's evaluation lines;
# LR 0.04 dies like an out-of-memory crash. Every call is counted.
PROXY = r"""
import argparse, math, sys
p = argparse.ArgumentParser()
p.add_argument("--lr", type=float); p.add_argument("--train-samples", type=int)
p.add_argument("--counter")
a = p.parse_args()
open(a.counter, "a").write(f"{a.lr} {a.train_samples}\n")
if a.lr >= 0.04:
    print("RuntimeError: CUDA out of memory (pretend)", file=sys.stderr); sys.exit(3)
loss = 2 + 30 / math.sqrt(a.train_samples) + 0.05 * math.log2(a.lr / 0.01) ** 2
print(f" validation loss at iteration 5 on validation set | lm loss value: {loss + 1:.6E} |")
print(f" validation loss at iteration 10 on validation set | lm loss value: {loss:.6E} |")
print(f" validation loss at iteration 10 on test set | lm loss value: {loss + 9:.6E} |")
"""


def megatron_power(*args, check=True, env=None):
    result = subprocess.run(
        [sys.executable, "-m", "megatron_power.cli.main", *map(str, args)],
        capture_output=True, text=True, check=False, timeout=900, env=env,
    )  # fmt: skip
    if check:
        assert result.returncode in (0, 1), result.stderr[-3000:]
    return result


def expected_loss(lr, samples):
    import math

    return 2 + 30 / math.sqrt(samples) + 0.05 * math.log2(lr / 0.01) ** 2


@pytest.fixture
def proxy_args(tmp_path):
    script = tmp_path / "proxy.py"
    script.write_text(PROXY)
    counter = tmp_path / "calls.txt"
    command = (
        f"{{python}} {script} --lr {{lr}} --train-samples {{train_samples}} --counter {counter}"
    )
    grid = ["--lrs", 0.005, 0.01, 0.02, 0.04, "--train-tokens", 4096, 8192,
            "--global-batch-sizes", 4, "--seq-length", 64, "--command", command]  # fmt: skip
    return grid, counter


def records(sweep_dir: Path) -> dict[str, dict]:
    lines = (sweep_dir / "results.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def test_local_sweep_records_results_and_failures_and_resumes(tmp_path, proxy_args):
    grid, counter = proxy_args
    sweep = tmp_path / "local"
    first = megatron_power("sweep", "--sweep-dir", sweep, "--jobs", 2, *grid)
    assert first.returncode == 1  # some runs failed
    got = records(sweep)
    assert len(got) == 8
    for record in got.values():
        lr, samples = record["params"]["lr"], record["params"]["train_tokens"] // 64
        if lr == 0.04:
            assert record["status"] == "failed" and record["returncode"] == 3
            assert "CUDA out of memory (pretend)" in record["error"]
        else:  # the last validation-set line, not the test-set one
            assert record["status"] == "ok"
            assert record["valid_loss"] == pytest.approx(expected_loss(lr, samples), rel=1e-6)
    assert "6 ok, 2 failed, 0 not run" in first.stdout
    assert len(counter.read_text().splitlines()) == 8

    again = megatron_power("sweep", "--sweep-dir", sweep, *grid)
    assert "8 already done, 0 to run" in again.stdout
    assert len(counter.read_text().splitlines()) == 8  # nothing redone

    retry = megatron_power("sweep", "--sweep-dir", sweep, "--retry-failed", *grid)
    assert "2 to run" in retry.stdout
    assert len(counter.read_text().splitlines()) == 10
    assert len(list((sweep / "results").glob("*.attempt-*.json"))) == 2  # kept, not lost
    assert len((sweep / "results.jsonl").read_text().splitlines()) == 10

    bigger = megatron_power("sweep", "--sweep-dir", sweep, "--lrs", 0.0025, *grid[1:-2],
                            "--command", grid[-1])  # fmt: skip
    assert "2 to run" in bigger.stdout  # a grown grid runs only its new cells


def test_slurm_array_script_runs_the_same_grid(tmp_path, proxy_args):
    grid, _ = proxy_args
    local, slurm = tmp_path / "local", tmp_path / "slurm"
    megatron_power("sweep", "--sweep-dir", local, *grid)
    slurm_flags = ["--launcher", "slurm", "--dry-run", "--sbatch-option=--partition=gpu"]
    written = megatron_power(
        "sweep", "--sweep-dir", slurm, *slurm_flags, "--max-parallel", 3, *grid
    )
    assert written.returncode == 0, written.stderr
    script = (slurm / "sweep.sbatch").read_text()
    assert "#SBATCH --array=0-7%3" in script and "#SBATCH --partition=gpu" in script
    assert not (slurm / "results.jsonl").exists()
    indices = re.search(r"--array=(\d+)-(\d+)", script).groups()
    for task in range(int(indices[0]), int(indices[1]) + 1):  # what SLURM would run
        env = {**os.environ, "SLURM_ARRAY_TASK_ID": str(task)}
        subprocess.run(["bash", str(slurm / "sweep.sbatch")], env=env, capture_output=True,
                       check=False, timeout=600)  # fmt: skip
    collected = megatron_power("sweep", "--sweep-dir", slurm, "--collect")
    assert "6 ok, 2 failed, 0 not run" in collected.stdout
    mine, theirs = records(local), records(slurm)
    assert mine.keys() == theirs.keys()
    for key, record in mine.items():
        assert (theirs[key]["status"], theirs[key]["valid_loss"]) == (
            record["status"], record["valid_loss"])  # fmt: skip
    # resubmitting lists only the runs still to do (none) or the failed ones when asked
    again = megatron_power("sweep", "--sweep-dir", slurm, "--launcher", "slurm", "--dry-run",
                           "--retry-failed", *grid)  # fmt: skip
    assert "2 array tasks" in again.stdout
    assert "#SBATCH --array=3,7" in (slurm / "sweep.sbatch").read_text()


def test_default_proxy_is_pretrain_and_its_loss_is_read_from_the_log(tmp_path):
    sweep = tmp_path / "pretrain"
    result = megatron_power(
        "sweep", "--sweep-dir", sweep, "--lrs", 0.01, 0.02, "--train-tokens", 4096,
        "--global-batch-sizes", 8, "--seq-length", 32, "--hidden-sizes", 64,
        "--extra-args", "--num-layers 1 --head-dim 16", "--jobs", 2,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    for record in records(sweep).values():
        summary = json.loads((sweep / "runs" / record["id"] / "summary.json").read_text())
        assert record["valid_loss"] == pytest.approx(summary["valid_loss"], rel=1e-6)
        assert "--lr-decay-style WSD" in record["command"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--command", "train.sh --lr {learning_rate}"], "--command: unknown placeholder"),
        (["--lrs", "-1"], "--lrs: values must be finite and > 0, got -1.0"),
        (["--jobs", "0", "--command", "true"], "--jobs: must be >= 1"),
        (["--collect"], "has no sweep.json"),
    ],
)
def test_usage_errors_are_one_line(tmp_path, args, message):
    result = megatron_power("sweep", "--sweep-dir", tmp_path / "s", *args, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr
