"""Directory locks across real processes, and atomic writes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from megatron_power.files import LOCK_NAME, DirectoryInUse, DirectoryLock, atomic_write_text

HOLD = """
import sys, time
from megatron_power.files import DirectoryLock
lock = DirectoryLock(sys.argv[1], "--run-dir").acquire()
print("held", flush=True)
time.sleep(300)
"""


def holder(directory) -> subprocess.Popen:
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)],
                               stdout=subprocess.PIPE, text=True)  # fmt: skip
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_with_the_holders_pid_and_host(tmp_path):
    process = holder(tmp_path / "run")
    try:
        with pytest.raises(DirectoryInUse) as refused:
            DirectoryLock(tmp_path / "run", "--run-dir").acquire()
        message = str(refused.value)
        assert message.startswith(f"--run-dir: {tmp_path / 'run'} is in use by pid {process.pid}")
        assert f"on {socket.gethostname()}" in message
    finally:
        process.kill()
        process.wait()


def test_the_lock_of_a_killed_holder_is_recovered(tmp_path, capsys):
    process = holder(tmp_path / "run")
    process.send_signal(signal.SIGKILL)  # no chance to clean up: the lock file stays
    process.wait()
    assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == process.pid
    with DirectoryLock(tmp_path / "run", "--run-dir"):
        assert json.loads((tmp_path / "run" / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert f"recovered the lock of pid {process.pid}" in capsys.readouterr().out
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released: the file goes with it


def test_a_released_lock_can_be_taken_again_and_locks_do_not_nest(tmp_path):
    lock = DirectoryLock(tmp_path, "--sweep-dir").acquire()
    with pytest.raises(DirectoryInUse):  # another open of the file in the same process
        DirectoryLock(tmp_path, "--sweep-dir").acquire()
    lock.release()
    DirectoryLock(tmp_path, "--sweep-dir").acquire().release()


def test_atomic_write_replaces_whole_files_and_a_failed_write_keeps_the_old(tmp_path):
    target = tmp_path / "config.json"
    atomic_write_text(target, "old\n")
    atomic_write_text(target, "new\n" * 1000)
    assert target.read_text() == "new\n" * 1000
    with pytest.raises(TypeError):  # fails after the temporary file was opened
        atomic_write_text(target, None)  # type: ignore[arg-type]
    assert target.read_text() == "new\n" * 1000
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]  # no temporary left
