"""Cells of a comparison in worker processes (``compare --jobs N``).

Cells are independent (each has its own folder, seed and budgets), so N of them can run at
once, one process each. A worker is a fresh ``spawn``-ed interpreter per cell: nothing is
inherited from the parent but what is passed (the spec, the parameter target, the user's
``--import`` modules), so a cell computes exactly what it computes when run alone, and its
peak memory is its own. Each worker gets ``threads`` torch threads (default: the parent's
threads divided among the jobs) and writes its console to ``<cell>/console.log``.

A failed cell stops the comparison: cells not yet started are cancelled, the running ones
finish (their results are kept) and the error is raised; ``--resume`` carries on.

Workers are started with ``spawn``, which imports the caller's main module again: a script
that calls ``compare(..., jobs=N)`` must do so under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path
from typing import Any

import torch
from rich.console import Console

from nasframe.base.errors import ConfigError
from nasframe.compare.cells import Shared, cell_dir, load_inputs, run_cell
from nasframe.compare.spec import CompareSpec, Row
from nasframe.run.model_config import ModelConfig

__all__ = ["run_parallel", "worker_threads"]


def worker_threads(jobs: int, threads: int | None = None) -> int:
    """Threads per worker: ``threads`` if given, else this process's threads shared out."""
    if jobs < 1:
        raise ConfigError(f"compare --jobs {jobs}: must be at least 1")
    if threads is not None:
        if threads < 1:
            raise ConfigError(f"compare: threads per job {threads}: must be at least 1")
        return threads
    return max(1, torch.get_num_threads() // jobs)


def run_parallel(shared: Shared, spec: CompareSpec, cells: list[tuple[Row, int]], jobs: int,
                 threads: int, on_start: Callable[[int, str], None],
                 on_done: Callable[[int, dict[str, Any]], None]) -> Iterator[dict[str, Any]]:
    """Run ``cells`` ``jobs`` at a time; yield each record as its cell finishes."""
    from nasframe.dsl.plugins import imported

    job = {"spec_json": spec.model_dump_json(), "out": str(shared.out),
           "base": shared.base_model.model_dump(), "target": shared.target,
           "reference": shared.reference, "resume": shared.resume, "threads": threads,
           "imports": imported()}
    index = {id(row): i for i, row in enumerate(spec.rows)}
    context = multiprocessing.get_context("spawn")
    pending = list(enumerate(cells, 1))
    running: dict[Future[dict[str, Any]], int] = {}
    with ProcessPoolExecutor(jobs, mp_context=context, max_tasks_per_child=1) as pool:
        try:
            while pending or running:
                while pending and len(running) < jobs:
                    i, (row, seed) = pending.pop(0)
                    on_start(i, f"{row.name} · seed {seed} (log: "
                                f"{cell_dir(shared.out, row, seed) / 'console.log'})")
                    running[pool.submit(_cell, job, index[id(row)], seed)] = i
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in done:
                    i = running.pop(future)
                    record = future.result()  # a cell's error stops the comparison here
                    on_done(i, record)
                    yield record
        except BaseException as err:
            if running and not isinstance(err, (KeyboardInterrupt, GeneratorExit)):
                shared.console.print(f"a cell failed; waiting for {len(running)} running "
                                     "cell(s) to finish (kept for --resume)")
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def _cell(job: dict[str, Any], row_index: int, seed: int) -> dict[str, Any]:
    """One cell in a fresh process (the worker's entry point)."""
    from nasframe.dsl.plugins import import_user_code

    torch.set_num_threads(job["threads"])
    for record in job["imports"]:  # the parent's --import, read again: the same bytes only
        import_user_code(record.get("file") or record["module"], record.get("sha256"))
    spec = CompareSpec.model_validate_json(job["spec_json"])
    s = spec.settings
    corpora, vocab = load_inputs(s)
    out, row = Path(job["out"]), spec.rows[row_index]
    folder = cell_dir(out, row, seed)
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "console.log", "a", encoding="utf-8", opener=_no_follow) as log:
        console = Console(file=log, width=120, force_terminal=False)
        shared = Shared(s, out, corpora, vocab, ModelConfig(**job["base"]), job["target"],
                        job["reference"], console, progress=False, resume=job["resume"])
        return run_cell(shared, row, seed)


def _no_follow(path: str, flags: int) -> int:
    """``open``'s opener that never writes through a link."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0), 0o644)
