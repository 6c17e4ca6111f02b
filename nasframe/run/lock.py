"""One writer per run directory: a lock file that names its holder.

``RunLock.acquire(folder)`` takes ``folder/run.lock`` before a command writes a byte of the
run, and ``release()`` (or the holder's exit) frees it. The file names the holder (host,
process, start time) so that a refusal can say who holds it. Two mechanisms guard it:

- an OS lock (``fcntl.flock``) on the open file, which the kernel frees when the holder dies,
  so a second writer on this host is refused at once and a crashed one never blocks;
- a lease, for shared storage whose OS lock does not reach other hosts: the holder renews
  ``renewed`` every ``LEASE_SECONDS / 4``, and a lock that names another host is taken over
  only once its lease has expired.

A lock whose holder on this host is no longer running is taken over, and the takeover is
said. Readers (``show``, ``translate``, ``evaluate``, ``plot``) take no lock.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nasframe.base.errors import RunDirError
from nasframe.base.files import process_alive

try:  # POSIX; elsewhere the lease alone guards the run
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["LEASE_SECONDS", "LOCK_FILE", "RunLock"]

LOCK_FILE = "run.lock"
"""The lock file's name inside a run directory."""
LEASE_SECONDS = 120.0
"""How long a holder on another host is trusted without renewing its lease."""
_MAX_LOCK_BYTES = 4096


@dataclass
class RunLock:
    """The held lock of one run directory (``acquire`` it, ``release`` it)."""

    path: Path
    fd: int
    note: str = ""  #: what was said on taking it (a takeover), or ""
    _started: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _renewer: threading.Thread | None = None

    @classmethod
    def acquire(cls, folder: str | Path, purpose: str = "write",
                lease: float = LEASE_SECONDS) -> RunLock:
        """Take the lock of ``folder`` (created if missing) or raise RunDirError naming the
        holder; nothing else in the folder is touched either way."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / LOCK_FILE
        flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) \
            | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags, 0o644)
        except OSError as err:
            raise RunDirError(f"{path}: cannot open the run's lock ({err.strerror or err}; a "
                              "symbolic link is refused)") from None
        try:
            if fcntl is not None:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    raise RunDirError(_refusal(folder, _read(fd), purpose)) from None
            note = _check_holder(folder, _read(fd), purpose, lease)
            if note:
                print(f"note: {folder}: {note}", file=sys.stderr)
            lock = cls(path, fd, note)
            lock._write(started=time.time())
        except BaseException:
            os.close(fd)
            raise
        lock._start_renewing(lease)
        return lock

    def release(self) -> None:
        """Free the lock (the file stays, marked released, so that no one unlinks a lock a
        new holder has just taken)."""
        if self.fd < 0:
            return
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)
            os.write(self.fd, b'{"released": true}\n')
        os.close(self.fd)  # frees the OS lock
        self.fd = -1

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- the holder's record ----------------------------------------------------------------
    def _write(self, **fields: Any) -> None:
        record = {"host": socket.gethostname(), "pid": os.getpid(), "renewed": time.time(),
                  **fields}
        if "started" not in fields:
            record["started"] = self._started
        self._started = record["started"]
        data = (json.dumps(record) + "\n").encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)

    def _start_renewing(self, lease: float) -> None:
        def renew() -> None:
            while not self._stop.wait(lease / 4):
                with contextlib.suppress(OSError):
                    self._write()

        self._renewer = threading.Thread(target=renew, name="nasframe-run-lock", daemon=True)
        self._renewer.start()


def _read(fd: int) -> dict[str, Any]:
    try:
        data = os.pread(fd, _MAX_LOCK_BYTES, 0)
        record = json.loads(data.decode("utf-8")) if data.strip() else {}
    except (OSError, ValueError, RecursionError):
        return {}
    return record if isinstance(record, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    started = holder.get("started")
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) \
        if isinstance(started, (int, float)) else "an unknown time"
    return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} since {when}"


def _refusal(folder: Path, holder: dict[str, Any], purpose: str) -> str:
    return (f"{folder}: another writer holds this run ({_describe(holder)}); refusing to "
            f"{purpose} it beside it. Wait for it to finish, or use another --out")


def _check_holder(folder: Path, holder: dict[str, Any], purpose: str, lease: float) -> str:
    """With the OS lock held: refuse a live holder on another host whose lease runs; say so
    when taking over from a dead one."""
    if not holder or holder.get("released") or "pid" not in holder:
        return ""
    host, pid = holder.get("host"), holder.get("pid")
    if host == socket.gethostname():
        if isinstance(pid, int) and pid != os.getpid() and process_alive(pid):
            # alive, yet its OS lock is gone: a filesystem without flock; trust the lease
            if _lease_runs(holder, lease):
                raise RunDirError(_refusal(folder, holder, purpose))
        return f"took over the lock of {_describe(holder)}, which is no longer running"
    if _lease_runs(holder, lease):
        raise RunDirError(_refusal(folder, holder, purpose))
    return f"took over the lock of {_describe(holder)}, whose lease expired"


def _lease_runs(holder: dict[str, Any], lease: float) -> bool:
    renewed = holder.get("renewed")
    return isinstance(renewed, (int, float)) and time.time() - renewed < lease
