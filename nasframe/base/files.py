"""Files that may come from someone else, read and written without trusting them.

A run directory, a TOML file or a cache entry may have been made by another person: it is
data, never a set of instructions. Everything nasframe reads from such a place goes through
``read_bytes`` (and the helpers built on it), which

- never follows a symbolic link (``O_NOFOLLOW``): a planted link cannot make a command read
  a file outside the run;
- refuses anything but a regular file (``/dev/zero``, a FIFO, a folder) before reading a byte;
- refuses a file above a size, and reads at most that many bytes whatever ``stat`` said;

and every write is atomic (a temporary beside the target, then ``os.replace``) through a
temporary created exclusively (``O_CREAT | O_EXCL | O_NOFOLLOW``), so a link planted under a
temporary's name cannot redirect the write. Errors are one line naming the file.
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nasframe.base.errors import DiskFullError, NasframeError, RunDirError

__all__ = ["KiB", "MiB", "GiB", "MAX_JSON_BYTES", "MAX_LINE_BYTES", "MAX_TOML_BYTES",
           "append_line", "atomic_write_bytes", "atomic_write_text", "clean_temporaries",
           "find_links", "is_link", "process_alive", "read_bytes", "read_json", "read_text",
           "refuse_links"]

KiB = 1 << 10
"""Bytes in a kibibyte."""
MiB = 1 << 20
"""Bytes in a mebibyte."""
GiB = 1 << 30
"""Bytes in a gibibyte."""
MAX_JSON_BYTES = 64 * MiB
"""The largest JSON record of ours read (run.json, config.json, arch.json, a cell's record...)."""
MAX_TOML_BYTES = 4 * MiB
"""The largest config or compare TOML read."""
MAX_LINE_BYTES = 1 * MiB
"""The longest line of a text file read line by line (metrics.jsonl, a corpus)."""

_READ_FLAGS = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def _size(n: int) -> str:
    for unit, scale in (("GiB", GiB), ("MiB", MiB), ("KiB", KiB)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{n} bytes"


def is_link(path: str | Path) -> bool:
    """``path`` itself is a symbolic link (whether or not it points anywhere)."""
    return os.path.islink(path)


def read_bytes(path: str | Path, limit: int, what: str = "file",
               error: type[NasframeError] = RunDirError) -> bytes:
    """The bytes of the regular file ``path``, refusing a link, a non-regular file or one of
    more than ``limit`` bytes with ``error`` naming the file."""
    path = Path(path)
    try:
        fd = os.open(path, _READ_FLAGS)
    except FileNotFoundError:
        raise error(f"{path}: no such {what}") from None
    except OSError as err:
        if err.errno == errno.ELOOP or is_link(path):
            raise error(f"{path}: is a symbolic link; a {what} is read only from a regular "
                        "file, never through a link") from None
        raise error(f"{path}: cannot read ({err.strerror or err})") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            kind = "folder" if stat.S_ISDIR(info.st_mode) else "device, pipe or socket"
            raise error(f"{path}: is a {kind}, not a regular file; refused as a {what}")
        if info.st_size > limit:
            raise error(f"{path}: {_size(info.st_size)}, above the {_size(limit)} a {what} may "
                        "have; refused")
        chunks, left = [], limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 16 * MiB))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        data = b"".join(chunks)
        if len(data) > limit:  # grew while we read it
            raise error(f"{path}: above the {_size(limit)} a {what} may have; refused")
        return data
    finally:
        os.close(fd)


def read_text(path: str | Path, limit: int, what: str = "file",
              error: type[NasframeError] = RunDirError) -> str:
    """``read_bytes`` decoded as UTF-8 (an undecodable file is ``error``)."""
    data = read_bytes(path, limit, what, error)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        raise error(f"{path}: not UTF-8 text (byte {err.start})") from None


def read_json(path: str | Path, limit: int = MAX_JSON_BYTES, what: str = "JSON file",
              error: type[NasframeError] = RunDirError) -> Any:
    """``read_text`` parsed as JSON; malformed or absurdly nested JSON is ``error``."""
    text = read_text(path, limit, what, error)
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err})") from None
    except RecursionError:
        raise error(f"{path}: nested too deeply to be a {what}; refused") from None


def lines_of(text: str, path: str | Path, limit: int = MAX_LINE_BYTES,
             error: type[NasframeError] = RunDirError) -> list[str]:
    """``text`` split into lines, refusing a line longer than ``limit`` characters."""
    lines = text.split("\n")
    for number, line in enumerate(lines, 1):
        if len(line) > limit:
            raise error(f"{path}:{number}: a line of {_size(len(line))}, above the "
                        f"{_size(limit)} a line may have; refused")
    return lines


def find_links(root: str | Path, limit: int = 100_000) -> list[Path]:
    """The symbolic links under ``root`` (``root`` itself not included), without following
    any; stops after visiting ``limit`` entries."""
    found: list[Path] = []
    seen = 0
    for folder, dirs, files in os.walk(root, followlinks=False):
        for name in [*dirs, *files]:
            seen += 1
            path = Path(folder, name)
            if path.is_symlink():
                found.append(path)
            if seen >= limit:
                return found
    return found


def refuse_links(root: str | Path, what: str = "run directory") -> None:
    """Raise RunDirError naming the first symbolic link under ``root`` (a run directory or a
    comparison never holds one, so one there was planted)."""
    links = find_links(root)
    if links:
        raise RunDirError(f"{links[0]}: a symbolic link inside the {what} {root}; a {what} "
                          "never holds links, so it is refused (nothing was read through it)")


# ----------------------------------------------------------------------------- writing

#: ``.NAME.PID.TOKEN.tmp``: whose process wrote it (``clean_temporaries``), and a random part
#: so that no one can plant the name in advance.
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)(\.[0-9a-f]+)?\.tmp$")
_WRITE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def _atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to a fresh temporary beside ``path``, fsync it, then ``os.replace`` it:
    a kill never leaves half a file, and a link at ``path`` is replaced, never written
    through. A full disk is one clear error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(6)}.tmp")
    try:
        fd = os.open(tmp, _WRITE_FLAGS, 0o644)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if not isinstance(err, FileExistsError):  # never remove what is not ours
            tmp.unlink(missing_ok=True)
        if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on device; nothing was half written"
                                ) from None
        if isinstance(err, OSError):
            raise RunDirError(f"{path}: cannot write ({err.strerror or err})") from None
        raise


def atomic_write_bytes(data: bytes, path: str | Path) -> None:
    """``path.write_bytes(data)``, atomically, never through a link."""
    _atomic(Path(path), data)


def atomic_write_text(text: str, path: str | Path) -> None:
    """``path.write_text(text)`` in UTF-8, atomically, never through a link."""
    _atomic(Path(path), text.encode("utf-8"))


def append_line(path: str | Path, line: str) -> None:
    """Append ``line`` (and a newline) to the regular file ``path``, never through a link."""
    path = Path(path)
    flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) \
        | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags, 0o644)
    except OSError as err:
        if err.errno == errno.ELOOP or is_link(path):
            raise RunDirError(f"{path}: is a symbolic link; refusing to write through it"
                              ) from None
        raise RunDirError(f"{path}: cannot write ({err.strerror or err})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise RunDirError(f"{path}: not a regular file; refusing to write to it")
        os.write(fd, (line + "\n").encode("utf-8"))
    except OSError as err:
        if err.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(f"{path}: no space left on device") from None
        raise RunDirError(f"{path}: cannot write ({err.strerror or err})") from None
    finally:
        os.close(fd)


def clean_temporaries(folder: str | Path) -> list[Path]:
    """Remove the temporaries that killed processes left in ``folder`` (those of live
    processes are kept); returns what was removed. A link is unlinked, never followed."""
    removed = []
    for tmp in _entries(Path(folder)):
        m = _TMP.match(tmp.name)
        if m is None or _live_writer(int(m.group("pid"))):
            continue
        tmp.unlink(missing_ok=True)
        removed.append(tmp)
    return removed


def _entries(folder: Path) -> Iterable[Path]:
    try:
        return [p for p in folder.iterdir() if p.name.startswith(".") and
                p.name.endswith(".tmp")]
    except OSError:
        return []


def process_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this host (one we may not signal counts as running)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _live_writer(pid: int) -> bool:
    """Whether the process that named a temporary may still be writing it (never this one:
    no write of ours is under way while we clean)."""
    return pid != os.getpid() and process_alive(pid)
