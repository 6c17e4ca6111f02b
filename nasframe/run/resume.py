"""One resume policy, for search and training, from Python and from the command line.

A resumed run continues the config it recorded. Only the fields of an allow-list may change
(how long to run, how often to checkpoint and log, the device): anything else would make the
resumed run a different experiment than its checkpoints, so it is refused with the list of
fields that differ. The processes and threads of every session are recorded: another number
of processes is refused (the data shards would change), another thread count is allowed with
a warning, because bitwise equality with an uninterrupted run then no longer holds.
"""
from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

import torch
from pydantic import BaseModel
from rich.console import Console

from nasframe.base.errors import ConfigError
from nasframe.run.config import flatten
from nasframe.run.rundir import RunDir

__all__ = ["SEARCH_RESUMABLE", "TRAIN_RESUMABLE", "record_session", "resume_config"]

M = TypeVar("M", bound=BaseModel)

SEARCH_RESUMABLE = ("steps", "checkpoint_every", "log_every", "keep_checkpoints", "device",
                    "skip_nonfinite", "preset")
"""Search fields a resumed run may change (dotted names); ``preset`` only names where a config
began."""
TRAIN_RESUMABLE = ("steps", "minutes", "checkpoint_every", "valid_every", "log_every",
                   "keep_checkpoints", "average_last", "device", "skip_nonfinite", "preset")
"""Re-training fields a resumed run may change."""


def _unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in flat.items():
        node = out
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return out


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


def resume_config(recorded: M, *, requested: M | None = None,
                  overrides: Mapping[str, Any] | None = None,
                  allowed: Iterable[str] = SEARCH_RESUMABLE, where: str = "--resume") -> M:
    """The config of a resumed run: ``recorded``, with ``requested`` (a whole config, as the
    Python API receives it) and/or dotted ``overrides`` (the flags a user gave) applied, as
    long as they change only ``allowed`` fields."""
    base = flatten(recorded.model_dump(mode="json"))
    merged = dict(base)
    if requested is not None:
        merged.update(flatten(requested.model_dump(mode="json")))
    for key, value in (overrides or {}).items():
        if key not in base:
            raise ConfigError(f"{key}: unknown setting")
        merged[key] = value
    allowed = set(allowed)
    refused = [k for k in base if k not in allowed and not _same(base[k], merged.get(k))]
    if refused:
        changes = "; ".join(f"{k}: recorded {base[k]!r}, given {merged[k]!r}" for k in refused)
        raise ConfigError(
            f"{where}: a resumed run continues its recorded config, and these fields differ: "
            f"{changes}. Only {', '.join(sorted(allowed - {'preset'}))} may change; start a "
            "new run (another --out) to change the others")
    return type(recorded)(**_unflatten(merged))  # the config's own errors: ConfigError


def record_session(run: RunDir, step: int, world_size: int, device: str,
                   console: Console | None = None) -> dict[str, Any]:
    """Check this session's processes and threads against the run's first session, then
    append it to ``run.json``'s ``sessions``."""
    info = run.info()
    session = {"step": step, "started": time.time(), "world_size": world_size,
               "threads": torch.get_num_threads(), "device": device}
    sessions = list(info.get("sessions", []))
    if sessions:
        first = sessions[0]
        if int(first.get("world_size", 1)) != world_size:
            raise ConfigError(
                f"{run.path}: the run was started with {first['world_size']} process(es), this "
                f"session has {world_size}; the data shards and the averaged gradients would "
                f"change. Resume it with {first['world_size']} process(es)")
        if int(first.get("threads", 0)) != session["threads"] and console is not None:
            console.print(f"[yellow]warning:[/] {run.path} was started with "
                          f"{first['threads']} torch thread(s), this session uses "
                          f"{session['threads']}: the run continues, but it is no longer "
                          "bitwise equal to an uninterrupted one (set --threads or "
                          "OMP_NUM_THREADS to match)")
    run.update_info(sessions=[*sessions, session])
    return session
