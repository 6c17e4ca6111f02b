"""The user's own code: modules and files imported with ``--import``, and installed packages
that extend nasframe through entry points.

A user's op or space lives in a module that registers it when imported
(``@nf.register_op``, ``nf.spaces.register``). ``--import MODULE`` or ``--import FILE.py``
imports it before a command runs. A file is read once: its bytes are hashed (SHA-256) and
those same bytes are executed, so nothing can swap it between the check and the import.

Run directories record what was imported (a file also as a copy in the run's ``imports/``),
but a record is a list to check, never to execute: a run directory may come from someone
else. A command that needs a run's code (resume, derive, re-train, translate, evaluate)
refuses unless this command line imported the same code (the same module name, or a file
with the same SHA-256), and says which ``--import`` to pass.

Installed packages register through the entry-point groups ``nasframe.ops`` and
``nasframe.spaces`` (and ``nasframe.strategies``, see ``nasframe.searching.strategy``): an
``ops`` entry point names a module to import; a ``spaces`` entry point names a factory,
registered under the entry point's name. Installing a package is the user's own act of trust.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import re
import sys
from collections.abc import Callable, Mapping
from importlib.metadata import entry_points
from pathlib import Path
from types import ModuleType
from typing import Any

from nasframe.base.errors import ConfigError, NasframeError, RunDirError
from nasframe.base.files import MiB, atomic_write_bytes, read_bytes

__all__ = ["check_recorded", "find_imported", "import_user_code", "imported",
           "load_entry_points", "save_imports", "valid_records"]

#: A Python file given to --import.
MAX_SOURCE_BYTES = 16 * MiB
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")
_COPY_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,200}\.py$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

_IMPORTED: list[dict[str, str]] = []
_SOURCES: dict[str, bytes] = {}  # sha256 -> the bytes that were executed
_NAMED: dict[str, ModuleType] = {}  # module name -> module
_FILES: dict[str, ModuleType] = {}  # a file's sha256 -> its module
_LOADED_GROUPS: set[str] = set()


def import_user_code(spec: str, sha256: str | None = None) -> ModuleType:
    """Import ``spec`` (a module name or a ``.py`` file) and return the module; remember it
    for run directories. ``sha256``: refuse a file whose content is not that."""
    path = Path(spec).expanduser()
    if spec.endswith(".py") or path.is_file():
        return _import_file(spec, path, sha256)
    if not _MODULE_NAME.match(spec):
        raise ConfigError(f"--import {spec}: neither a .py file nor a module name")
    _run(lambda: importlib.import_module(spec), spec)
    record = {"module": spec}
    if record not in _IMPORTED:
        _IMPORTED.append(record)
    _NAMED[spec] = sys.modules[spec]
    return sys.modules[spec]


def _import_file(spec: str, path: Path, expected: str | None) -> ModuleType:
    if not path.exists():
        raise ConfigError(f"--import {spec}: no such file")
    path = path.resolve()  # a link the user typed is theirs to follow
    data = read_bytes(path, MAX_SOURCE_BYTES, "Python file", ConfigError)
    digest = hashlib.sha256(data).hexdigest()
    if expected is not None and digest != expected:
        raise ConfigError(f"--import {spec}: its content changed (SHA-256 {digest[:12]}..., "
                          f"expected {expected[:12]}...); refusing to run it")
    if digest not in _FILES:
        key = f"nasframe_user_{_identifier(path.stem)}_{digest[:8]}"
        loader_spec = importlib.util.spec_from_loader(key, loader=None, origin=str(path))
        module = importlib.util.module_from_spec(loader_spec)  # type: ignore[arg-type]
        module.__file__ = str(path)
        sys.modules[key] = module
        try:
            code = compile(data, str(path), "exec")
            _run(lambda: exec(code, module.__dict__), spec)  # the bytes that were hashed
        except (SyntaxError, ValueError) as err:  # ValueError: a NUL byte, on some Pythons
            del sys.modules[key]
            line = getattr(err, "lineno", None)
            where = f"line {line}: " if line else "not Python source: "
            raise ConfigError(f"--import {spec}: {where}{getattr(err, 'msg', err)}") from None
        except ConfigError:
            del sys.modules[key]
            raise
        _FILES[digest], _SOURCES[digest] = module, data
    record = {"file": str(path), "sha256": digest, "name": path.name}
    if all(r.get("sha256") != digest for r in _IMPORTED):
        _IMPORTED.append(record)
    return _FILES[digest]


def _identifier(stem: str) -> str:
    return re.sub(r"\W", "_", stem)


def _run(action: Callable[[], Any], spec: str) -> None:
    try:
        action()
    except ModuleNotFoundError as err:
        raise ConfigError(f"--import {spec}: {err}") from None
    except NasframeError as err:  # e.g. a SpaceError from a declaration in the user's file
        raise ConfigError(f"--import {spec}: {err}") from None
    except Exception as err:  # the user's code failed: say where, keep their message
        raise ConfigError(f"--import {spec}: importing it failed: {type(err).__name__}: "
                          f"{err}") from err


def imported() -> list[dict[str, str]]:
    """What this process imported with ``import_user_code``, in order."""
    return [dict(r) for r in _IMPORTED]


def find_imported(name: str) -> ModuleType | None:
    """The module this process imported as ``name``: a module name, or a file by its path,
    its file name or its stem (``--import userops.py`` makes ``userops`` and
    ``userops.py`` known). None if nothing imported goes by that name."""
    if name in _NAMED:
        return _NAMED[name]
    given = Path(name).expanduser()
    for record in _IMPORTED:
        if "file" not in record:
            continue
        path = Path(record["file"])
        if name in (path.stem, path.name) or (given.exists() and given.resolve() == path):
            return _FILES[record["sha256"]]
    return None


# ----------------------------------------------------------------------------- run records

def save_imports(run_dir: Path) -> list[dict[str, str]]:
    """Write the bytes of every imported file into ``run_dir/imports/`` (a folder the caller
    made sure holds nothing foreign) and return the records to keep in run.json."""
    records = imported()
    names: set[str] = set()
    for record in records:
        if "file" not in record:
            continue
        name = record["name"] if _COPY_NAME.match(record["name"]) else "user_code.py"
        if name in names:
            name = f"{Path(name).stem}_{record['sha256'][:8]}.py"
        names.add(name)
        atomic_write_bytes(_SOURCES[record["sha256"]], run_dir / "imports" / name)
        record["name"], record["copy"] = name, f"imports/{name}"
    return records


def valid_records(records: Any, where: str) -> list[dict[str, str]]:
    """``records`` (from a run.json) checked as data: a list of module or file records."""
    if not isinstance(records, list) or len(records) > 1000:
        raise RunDirError(f"{where}: imports: not a list of import records")
    for i, r in enumerate(records):
        module = isinstance(r, Mapping) and isinstance(r.get("module"), str) and \
            bool(_MODULE_NAME.match(r["module"]))
        file = isinstance(r, Mapping) and isinstance(r.get("sha256"), str) and \
            bool(_SHA256.match(r["sha256"])) and isinstance(r.get("name", ""), str) and \
            isinstance(r.get("file", ""), str)
        if not (module or file):
            raise RunDirError(f"{where}: imports[{i}]: not a module or file record")
    return [dict(r) for r in records]


def check_recorded(records: Any, run_dir: Path) -> None:
    """Refuse unless this command line imported every piece of code the run recorded. Nothing
    recorded is ever imported here: the error says what to pass."""
    missing = []
    for record in valid_records(records, str(run_dir / "run.json")):
        if "module" in record:
            if record["module"] not in _NAMED:
                missing.append(f"--import {record['module']}")
        elif record["sha256"] not in _FILES:
            missing.append(_file_hint(record, run_dir))
    if missing:
        raise ConfigError(f"{run_dir}: the run uses the user's code, which runs only when you "
                          f"name it: pass {'; '.join(missing)} (a recorded import is never run "
                          "by itself)")


def _file_hint(record: dict[str, str], run_dir: Path) -> str:
    """Which --import would pass: the file it was imported from if that still holds the same
    bytes (hashed here, never run), else the run's own copy."""
    original = Path(record.get("file") or "")
    if original.is_absolute() and _same_content(original, record["sha256"]):
        return f"--import {original}"
    copy = run_dir / "imports" / Path(record.get("name") or "code.py").name
    return (f"--import {copy} (the run's copy of {original.name or 'a file'}, SHA-256 "
            f"{record['sha256'][:12]}...; read it first if the run came from someone else)")


def _same_content(path: Path, sha256: str) -> bool:
    try:
        return hashlib.sha256(read_bytes(path, MAX_SOURCE_BYTES)).hexdigest() == sha256
    except NasframeError:
        return False


# ----------------------------------------------------------------------------- entry points

def load_entry_points(group: str) -> dict[str, Any]:
    """Load the installed packages of ``nasframe.ops`` or ``nasframe.spaces`` (once) and
    return what each entry point named, by name (empty after the first call): the caller
    registers it (``nf.spaces`` registers a ``spaces`` entry point's factory)."""
    if group in _LOADED_GROUPS:
        return {}
    _LOADED_GROUPS.add(group)
    loaded = {}
    for ep in entry_points(group=group):
        try:
            loaded[ep.name] = ep.load()
        except Exception as err:  # a broken plugin must say which one it is
            raise ConfigError(f"entry point {ep.name!r} of {group} ({ep.value}): cannot load: "
                              f"{err}") from err
    return loaded
