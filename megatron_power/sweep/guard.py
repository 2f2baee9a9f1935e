"""Run one sweep command so that nothing it starts outlives it or the sweep.

``python -m megatron_power.sweep.guard COMMAND...`` starts COMMAND in a process group of
its own and, when the command ends, is killed, or the sweep that started the guard dies
(kill -9 included: the guard's stdin is a pipe from the sweep, which reads end-of-file
then), stops the whole group: torchrun workers and whatever a custom command launched.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys
import threading
import time

#: prctl(PR_SET_PDEATHSIG): the kernel signals the command if the guard itself dies.
PR_SET_PDEATHSIG = 1
GRACE_SECONDS = 10.0


def _die_with_parent() -> None:
    with contextlib.suppress(OSError, AttributeError):  # not Linux: the group kill applies
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def stop_group(group: int) -> None:
    """SIGTERM the process group, then SIGKILL whatever is left after a grace period."""
    try:
        os.killpg(group, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + GRACE_SECONDS
    while time.monotonic() < deadline:
        try:
            os.killpg(group, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(group, signal.SIGKILL)


def main(command: list[str]) -> int:
    child = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_die_with_parent
    )

    def on_signal(number: int, _frame: object) -> None:
        stop_group(child.pid)
        os._exit(128 + number)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    def watch_sweep() -> None:
        # Raw reads (not sys.stdin's buffer, whose lock a daemon thread would hold at exit)
        # return b"" when the sweep closes the pipe or dies.
        while os.read(sys.stdin.fileno(), 4096):
            pass
        if child.poll() is None:
            print("megatron-power sweep: the sweep ended; stopping this run", flush=True)
            stop_group(child.pid)

    threading.Thread(target=watch_sweep, daemon=True).start()
    code = child.wait()
    stop_group(child.pid)  # what the command left behind (it may have been killed alone)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
