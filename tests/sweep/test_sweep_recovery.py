"""A sweep killed at any point (kill -9 of the sweep, of one run's command, of a pretrain
proxy) is resumed by rerunning the same command: done runs kept, killed runs run again
(a proxy from its checkpoint), no record twice, no process left behind."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SWEEP = [sys.executable, "-m", "megatron_power.cli.main", "sweep"]

#: A custom command: while BLOCK exists it starts a child that would outlive it and waits;
#: otherwise it prints Megatron's validation line (the loss is the LR).
SCRIPT = """#!/bin/bash
mkdir -p "$1"
if [ -e "$3" ]; then
  sleep 300 &
  echo $! > "$1/child.pid"
  echo $$ > "$1/command.pid"
  wait
fi
echo " validation loss at iteration 1 on validation set | lm loss value: $2 | lm loss PPL: 1 |"
"""


def wait_for(condition, timeout: float = 120.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def alive(pid: int) -> bool:
    """Running (a zombie waiting for its reaper counts as gone)."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while we read
        return False
    return "\nState:\tZ" not in status


def records(sweep: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((sweep / "results").glob("*.json"))]


@pytest.fixture
def custom(tmp_path):
    script = tmp_path / "run.sh"
    script.write_text(SCRIPT)
    block = tmp_path / "block"
    block.write_text("")
    sweep = tmp_path / "sweep"
    template = f"bash {script} {{run_dir}} {{lr}} {block}"
    command = [*SWEEP, "--sweep-dir", str(sweep), "--lrs", "0.01", "0.02", "--train-tokens",
               "4096", "--jobs", "2", "--command", template]  # fmt: skip
    return sweep, block, command


def started(sweep: Path, count: int) -> list[tuple[int, int]]:
    """(command pid, child pid) of each blocked run once all ``count`` have started."""
    runs = sweep / "runs"
    pid_files = lambda: sorted(runs.glob("*/child.pid")) if runs.exists() else []  # noqa: E731
    wait_for(lambda: len(pid_files()) == count and all(
        (f.parent / "command.pid").is_file() and f.read_text().strip() for f in pid_files()
    ), what="the runs to start")  # fmt: skip
    return [(int((f.parent / "command.pid").read_text()), int(f.read_text()))
            for f in pid_files()]  # fmt: skip


def start_one_run(command: list[str]) -> tuple[list[str], subprocess.Popen]:
    """The custom sweep with its first LR alone, started in a session of its own."""
    command = [*command[: command.index("0.01")], "0.01", *command[command.index("0.02") + 1 :]]
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # fmt: skip
    return command, first


def test_kill_9_of_the_sweep_leaves_no_process_and_a_rerun_finishes_it(custom):
    sweep, block, command = custom
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)  # fmt: skip
    pids = started(sweep, 2)
    first.send_signal(signal.SIGKILL)
    first.wait()
    for command_pid, child_pid in pids:  # the guard stopped each command and its child
        wait_for(lambda p=command_pid, c=child_pid: not alive(p) and not alive(c), 30,
                 "the killed sweep's processes to end")  # fmt: skip
    assert records(sweep) == []  # nothing was recorded for runs that did not finish
    block.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "2 ok, 0 failed, 0 not run" in rerun.stdout
    lines = (sweep / "results.jsonl").read_text().splitlines()
    assert sorted(json.loads(line)["valid_loss"] for line in lines) == [0.01, 0.02]


def test_kill_9_of_one_command_stops_its_children_and_the_next_sweep_reruns_it(custom):
    sweep, block, command = custom
    command, first = start_one_run(command)
    [(command_pid, child_pid)] = started(sweep, 1)
    os.kill(command_pid, signal.SIGKILL)
    output, _ = first.communicate(timeout=120)
    wait_for(lambda: not alive(child_pid), 30, "the killed command's child to end")
    assert first.returncode == 1, output
    [record] = records(sweep)
    assert record["status"] == "interrupted" and record["returncode"] == 137
    block.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)  # as it was
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    statuses = sorted(record["status"] for record in records(sweep))
    assert statuses == ["interrupted", "ok"]  # the attempt kept beside the result
    lines = (sweep / "results.jsonl").read_text().splitlines()
    assert [json.loads(line)["status"] for line in lines].count("ok") == 1  # counted once


def test_a_killed_pretrain_proxy_resumes_from_its_checkpoint(tmp_path):
    sweep = tmp_path / "sweep"
    # 390 steps of 16 x 128 tokens; pretrain checkpoints every 500k tokens (step 244).
    command = [*SWEEP, "--sweep-dir", str(sweep), "--lrs", "0.01", "--train-tokens", "800000",
               "--hidden-sizes", "64", "--extra-args", "--num-layers 1"]  # fmt: skip
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # fmt: skip
    run = sweep / "runs" / "t800000-b16-h64-lr0.01-s0"
    checkpoint = run / "checkpoints" / "iter_0000244"
    wait_for(lambda: checkpoint.is_dir() or first.poll() is not None, 600, "the checkpoint")
    assert first.poll() is None, first.communicate()[0]
    holder = json.loads((run / ".megatron-power.lock").read_text())["pid"]  # the proxy
    os.kill(holder, signal.SIGKILL)
    output, _ = first.communicate(timeout=120)
    assert first.returncode == 1, output
    [record] = records(sweep)
    assert record["status"] == "interrupted"
    trained = (run / "metrics.jsonl").read_text().splitlines()
    assert 244 <= len(trained) < 390  # killed after the checkpoint, before the end

    rerun = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    log = (sweep / "logs" / "t800000-b16-h64-lr0.01-s0.log").read_text()
    assert f"pretrain --resume {run}" in log
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["iteration"] for row in rows] == list(range(1, 391))
    assert [json.dumps(row) for row in rows[:244]] == trained[:244]  # the trained part kept
    ok = [r for r in records(sweep) if r["status"] == "ok"]
    assert len(ok) == 1 and ok[0]["valid_loss"] is not None


def test_ctrl_c_of_the_sweep_ends_its_runs_and_starts_no_queued_one(custom):
    sweep, block, command = custom
    jobs = command.index("--jobs")
    command = [*command[:jobs], "--jobs", "1", *command[jobs + 2 :]]  # one runs, one queued
    first = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             text=True, start_new_session=True)  # fmt: skip
    [(command_pid, child_pid)] = started(sweep, 1)
    first.send_signal(signal.SIGINT)  # the sweep alone (a terminal's Ctrl-C reaches the runs too)
    try:
        output, _ = first.communicate(timeout=120)  # not after the blocked run's 300 s
    finally:  # nothing left behind if it hung: the sweep's group, the command's (and child's)
        for group in (first.pid, command_pid):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(group, signal.SIGKILL)
    assert first.returncode == 130 and "megatron-power sweep: interrupted" in output, output
    wait_for(lambda: not alive(command_pid) and not alive(child_pid), 30, "the run to end")
    assert len(list((sweep / "runs").iterdir())) == 1  # the queued run never started
    [record] = records(sweep)
    assert record["status"] == "interrupted"
    block.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert "2 ok, 0 failed, 0 not run" in rerun.stdout


def test_kill_9_of_a_runs_guard_is_an_interrupted_run_that_the_next_sweep_reruns(custom):
    sweep, block, command = custom
    command, first = start_one_run(command)
    [(command_pid, _)] = started(sweep, 1)
    guard_pid = command_pid
    while b"megatron_power.sweep.guard" not in Path(f"/proc/{guard_pid}/cmdline").read_bytes():
        stat = Path(f"/proc/{guard_pid}/stat").read_text()
        guard_pid = int(stat.rsplit(")", 1)[1].split()[1])  # up to the run's guard
    try:
        os.kill(guard_pid, signal.SIGKILL)  # as the OOM killer would
        output, _ = first.communicate(timeout=120)
    finally:  # the command's own group (the guard that would have stopped it is gone)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(command_pid, signal.SIGKILL)
    assert first.returncode == 1, output
    [record] = records(sweep)
    assert record["status"] == "interrupted" and record["returncode"] == -9
    block.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert sorted(r["status"] for r in records(sweep)) == ["interrupted", "ok"]
