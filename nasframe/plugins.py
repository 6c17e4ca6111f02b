"""The user's own code: modules and files imported with ``--import``, and installed packages
that extend nasframe through entry points.

A user's op or space lives in a module that registers it when imported
(``@nf.register_op``, ``nf.spaces.register``). ``--import MODULE`` or ``--import FILE.py``
imports it before a command runs, and every run directory records what was imported (a
file is also copied into the run's ``imports/``), so that resuming, deriving, re-training,
translating and evaluating the run import it again.

Recorded files are re-imported only from the path they were imported from, and only while
their content is unchanged (SHA-256): a run directory received from someone else never runs
the code it carries unless the user imports that copy explicitly (``--import
RUN/imports/FILE.py``), just as its checkpoints are never unpickled.

Installed packages register through the entry-point groups ``nasframe.ops`` and
``nasframe.spaces`` (and ``nasframe.strategies``, see ``nasframe.strategy``): an ``ops`` entry
point names a module to import; a ``spaces`` entry point names a factory, registered under
the entry point's name.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import shutil
import sys
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from nasframe.errors import ConfigError

__all__ = ["import_user_code", "imported", "load_entry_points", "reimport", "save_imports"]

_IMPORTED: list[dict[str, str]] = []
_LOADED_GROUPS: set[str] = set()


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def import_user_code(spec: str) -> ModuleType:
    """Import ``spec`` (a module name or a ``.py`` file), remember it for run directories and
    return the module."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"--import {spec}: no such file")
        path = path.resolve()
        record = {"file": str(path), "sha256": _digest(path), "name": path.name}
        key = f"nasframe_user_{path.stem}_{record['sha256'][:8]}"
        if key not in sys.modules:
            loader = importlib.util.spec_from_file_location(key, path)
            if loader is None or loader.loader is None:
                raise ConfigError(f"--import {spec}: not a Python file")
            module = importlib.util.module_from_spec(loader)
            sys.modules[key] = module
            try:
                _exec(lambda: loader.loader.exec_module(module), spec)  # type: ignore[union-attr]
            except ConfigError:
                del sys.modules[key]
                raise
    else:
        record, key = {"module": spec}, spec
        _exec(lambda: importlib.import_module(spec), spec)
    if record not in _IMPORTED:
        _IMPORTED.append(record)
    return sys.modules[key]


def _exec(run: Any, spec: str) -> None:
    try:
        run()
    except ModuleNotFoundError as err:
        raise ConfigError(f"--import {spec}: {err}") from None
    except ConfigError:
        raise
    except Exception as err:  # the user's code failed: say where, keep their message
        raise ConfigError(f"--import {spec}: importing it failed: {type(err).__name__}: "
                          f"{err}") from err


def imported() -> list[dict[str, str]]:
    """What this process imported with ``import_user_code``, in order."""
    return [dict(r) for r in _IMPORTED]


def save_imports(run_dir: Path) -> list[dict[str, str]]:
    """Copy the imported files into ``run_dir/imports/``; the records to keep in run.json."""
    records = imported()
    for record in records:
        if "file" in record:
            target = run_dir / "imports" / record["name"]
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(record["file"], target)
            record["copy"] = f"imports/{record['name']}"
    return records


def reimport(records: list[dict[str, str]], run_dir: Path) -> None:
    """Import again what a run recorded (see the module docstring for what is trusted)."""
    for record in records:
        if "module" in record:
            import_user_code(record["module"])
            continue
        path = Path(record["file"])
        if path.is_file() and _digest(path) == record["sha256"]:
            import_user_code(str(path))
            continue
        if any(r.get("sha256") == record["sha256"] for r in _IMPORTED):
            continue  # the user imported the same code (e.g. the run's copy) explicitly
        copy = run_dir / record.get("copy", "")
        hint = f"; its copy is {copy}: pass --import {copy} if you trust it" \
            if record.get("copy") and copy.is_file() else ""
        raise ConfigError(f"{run_dir}: the run uses code from {path}, which is not there or "
                          f"has changed{hint}")


def load_entry_points(group: str) -> None:
    """Load the installed packages of ``nasframe.ops`` or ``nasframe.spaces`` (once)."""
    if group in _LOADED_GROUPS:
        return
    _LOADED_GROUPS.add(group)
    for ep in entry_points(group=group):
        try:
            value = ep.load()
        except Exception as err:  # a broken plugin must say which one it is
            raise ConfigError(f"entry point {ep.name!r} of {group} ({ep.value}): cannot load: "
                              f"{err}") from err
        if group == "nasframe.spaces" and callable(value):
            from nasframe import spaces

            spaces.register(ep.name, value)
