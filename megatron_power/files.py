"""Files that survive crashes and directories that one process uses at a time.

``atomic_write_text``: a reader (or a crash) sees the old file or the new one, never half
of one. ``DirectoryLock``: a run or sweep directory is held by one process; the kernel
drops the lock when its holder dies (kill -9 included), so a stale lock needs no cleanup,
and the lock file names the holder (pid, host) for the message a second process gets.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import time
from pathlib import Path
from types import TracebackType

LOCK_NAME = ".megatron-power.lock"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temporary name beside ``path``, fsync, then rename over it."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with temporary.open("w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def check_output_file(path: Path | None, flag: str, force: bool) -> None:
    """An output file the user named, checked before any work: an empty name, a directory
    or a missing parent that is a file is refused, and so is an existing file unless
    ``--force`` (nothing a user made is replaced without asking)."""
    if path is None:
        return
    if str(path) in ("", "."):
        raise ValueError(f"{flag}: needs a file name, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"{flag}: {path} is a directory, not a file")
    if any(parent.exists() and not parent.is_dir() for parent in path.parents):
        raise ValueError(f"{flag}: {path} is inside a file, not a directory")
    if path.exists() and not force:
        raise ValueError(f"{flag}: {path} exists (--force overwrites it)")


def save_figure_atomically(figure, path: Path, dpi: int = 110) -> None:
    """A PNG at exactly ``path`` (no suffix added), saved under a temporary name beside it
    and renamed: a crash leaves the old picture or the new one, never half a PNG."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial.png")
    try:
        figure.savefig(partial, dpi=dpi, format="png")
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class DirectoryInUse(ValueError):
    """Another live process holds the directory's lock."""


class DirectoryLock:
    """An exclusive lock on ``directory`` for the life of this object (a context manager).

    ``what`` names the flag the directory came from, for the error message; ``name`` is
    the lock file's (several locks may share a directory: a sweep's runs)."""

    def __init__(self, directory: Path, what: str, name: str = LOCK_NAME) -> None:
        self.directory = Path(directory)
        self.what = what
        self.file = self.directory / name
        self._descriptor: int | None = None

    def holder(self) -> dict:
        """What the lock file says about its last holder ({} if unreadable)."""
        try:
            return json.loads(self.file.read_text())
        except (OSError, ValueError):
            return {}

    def acquire(self) -> DirectoryLock:
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            descriptor = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                holder = self.holder()
                raise DirectoryInUse(
                    f"{self.what}: {self.file.parent} is in use by pid {holder.get('pid', '?')} "
                    f"on {holder.get('host', '?')} (since {holder.get('since', '?')}); wait "
                    "for it to finish or stop it first"
                ) from None
            # The file may have been removed by a holder releasing it between our open
            # and our lock: then we hold a lock on a name nobody else will see. Retry.
            try:
                same = os.fstat(descriptor).st_ino == os.stat(self.file).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(descriptor)
        stale = self.holder()
        if stale.get("pid") and stale.get("pid") != os.getpid():
            print(
                f"{self.what}: recovered the lock of pid {stale['pid']} on "
                f"{stale.get('host', '?')}, which is no longer running"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "since": time.strftime("%Y-%m-%d %H:%M:%S"),
        }
        os.ftruncate(descriptor, 0)
        os.pwrite(descriptor, (json.dumps(record) + "\n").encode(), 0)
        self._descriptor = descriptor
        return self

    def release(self) -> None:
        if self._descriptor is None:
            return
        self.file.unlink(missing_ok=True)  # while still locked: nobody reads a stale holder
        fcntl.flock(self._descriptor, fcntl.LOCK_UN)
        os.close(self._descriptor)
        self._descriptor = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self.release()
