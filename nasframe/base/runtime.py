"""What the search executor and re-training share: devices, RNG state, atomic files, the lr
schedule, the loss and the progress bar.

Only ``nasframe.base.errors`` is imported from the package, so any module may use this one without
an import cycle.
"""
from __future__ import annotations

import contextlib
import io
import math
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from rich.console import Console
from rich.progress import (
    BarColumn,
    Progress,
    ProgressColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor

from nasframe.base.errors import ConfigError
from nasframe.base.files import atomic_write_bytes, atomic_write_text, clean_temporaries

__all__ = [
    "Precision",
    "atomic_save",
    "autocast",
    "atomic_write_bytes",
    "atomic_write_text",
    "clean_temporaries",
    "compute_dtype",
    "inverse_sqrt",
    "label_smoothed_loss",
    "progress_bar",
    "resolve_device",
    "rng_state",
    "seed_everything",
    "set_random_state",
    "set_rng_state",
    "smoothed_terms",
]


# ----------------------------------------------------------------------------- devices

def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA if available, else CPU) or a torch device name, checked to be usable."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"device: {name!r} is not a device (use cpu, cuda, cuda:1 or auto)"
                          ) from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device: {name!r} requested but CUDA is not available here "
                          "(use cpu or auto)")
    return device


# ----------------------------------------------------------------------------- precision

Precision = Literal["fp32", "bf16", "fp16"]
"""The arithmetic of the ops: float32, or bfloat16/float16 autocast."""
_AUTOCAST = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """Mixed precision for a forward pass: ``fp32`` runs as is; ``bf16``/``fp16`` run the
    ops autocast allows in that dtype (the reversible stream stays in float64, or float32
    with ``stream_dtype="model"``, see ``nasframe.engine.reversible``), with losses computed in
    float32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision not in _AUTOCAST:
        raise ConfigError(f"precision: {precision!r} is not one of fp32, bf16, fp16")
    return torch.autocast(device_type=device.type, dtype=_AUTOCAST[precision])


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype a product of ``x`` runs in: the autocast dtype of its device where autocast is
    on, else ``x``'s (for ops that cast explicitly and compute with autocast off)."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


# ----------------------------------------------------------------------------- random state

def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (numpy takes ``seed mod 2**32``)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every global generator a run draws from (CPU, ``device``'s CUDA, Python, numpy), as
    data that ``torch.load(weights_only=True)`` accepts."""
    np_state = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state(device) if device.type == "cuda" else None,
        # numpy's key array as a tensor: checkpoints load with torch.load(weights_only=True).
        "numpy": (np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]),
        "python": random.getstate(),
    }


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what ``rng_state`` returned (the CUDA state only when ``device`` is CUDA)."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)
    name, key, *rest = state["numpy"]
    np.random.set_state((name, key.numpy().astype(np.uint32), *rest))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def set_random_state(rng: random.Random, state: Any) -> None:
    """``rng.setstate(state)`` for a state that went through a checkpoint (``rng.getstate()``
    saves as plain data that ``weights_only`` loading accepts, but may come back with lists
    where ``random`` wants tuples)."""
    version, internal, gauss = state
    rng.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------- atomic files

def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save(obj, path)``, atomically. Serialised in memory first, so a full disk
    fails in the write (one ``DiskFullError``), never inside torch's zip writer."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(buffer.getvalue(), Path(path))


# ----------------------------------------------------------------------------- optimisation

def inverse_sqrt(warmup: int) -> Callable[[int], float]:
    """Factor of the peak lr at update ``k + 1``: linear warmup, then 1/sqrt decay
    (Zhao et al. 2021 §5).

    ``k`` is the scheduler's count of finished updates (``LambdaLR``), so the first update
    uses 1/warmup of the peak rather than zero, update ``warmup`` the peak, and update ``s``
    after it ``sqrt(warmup / s)`` of the peak.
    """

    def factor(k: int) -> float:
        step = k + 1
        return min(step / warmup, math.sqrt(warmup / step))

    return factor


def label_smoothed_loss(logits: Tensor, target: Tensor, smoothing: float, pad_id: int = 0
                        ) -> tuple[Tensor, Tensor, Tensor]:
    """Summed label-smoothed cross entropy and summed NLL over non-pad targets, and their
    count (a 0-d integer tensor: nothing here waits for the device).

    The smoothed target puts ``1 - smoothing`` on the reference and spreads ``smoothing``
    uniformly over the vocabulary (Szegedy et al. 2016), as ``F.cross_entropy``'s
    ``label_smoothing``; pad positions count for nothing. The loss is computed in the logits'
    dtype (float64 stays float64); float16 and bfloat16 are raised to float32 first.
    """
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    lprobs = torch.log_softmax(logits, dim=-1).reshape(-1, logits.size(-1))
    loss, nll, keep = smoothed_terms(lprobs, target.reshape(-1), smoothing, pad_id)
    return loss.sum(), nll.sum(), keep.sum()


def smoothed_terms(lprobs: Tensor, target: Tensor, smoothing: float, pad_id: int = 0
                   ) -> tuple[Tensor, Tensor, Tensor]:
    """Per token, from (tokens, vocabulary) log-probabilities and (tokens,) targets: the
    label-smoothed loss and the NLL, both zero at padding, and the non-pad mask."""
    keep = target.ne(pad_id)
    nll = -lprobs.gather(1, target.unsqueeze(1)).squeeze(1)
    uniform = -lprobs.mean(dim=-1)
    loss = (1.0 - smoothing) * nll + smoothing * uniform
    return loss.masked_fill(~keep, 0.0), nll.masked_fill(~keep, 0.0), keep


# ----------------------------------------------------------------------------- progress

def progress_bar(console: Console, *columns: ProgressColumn | str,
                 disable: bool = False) -> Progress:
    """A rich bar: the task's name and bar, ``columns``, then elapsed time and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), *columns,
                    TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, disable=disable)
