"""``load_run``: a trained model, ready to translate, from its run directory alone."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.base.runtime import resolve_device
from nasframe.dsl.architecture import Architecture
from nasframe.engine.supernet import Supernet, build_model
from nasframe.run.config import TrainConfig
from nasframe.run.rundir import RunDir, RunKind
from nasframe.text.data import DataSpec, Vocab

__all__ = ["ARCH", "AVERAGE", "BEST", "LoadedRun", "VOCAB", "choose_checkpoint",
           "load_run", "read_train_config"]

ARCH = "arch.json"
"""A run's architecture file."""
VOCAB = "vocab.model"
"""A run's sentencepiece model."""
BEST = "checkpoint_best.pt"
"""The checkpoint of a re-training's best validation loss."""
AVERAGE = "checkpoint_avg.pt"
"""The average of a re-training's last checkpoints (``average_last``)."""


@dataclass
class LoadedRun:
    """A trained model in eval mode, with what it needs from its run directory."""

    model: Supernet
    vocab: Vocab
    config: TrainConfig
    data: DataSpec
    arch: Architecture
    checkpoint: Path
    run: RunDir


def read_train_config(run: RunDir) -> tuple[TrainConfig, DataSpec]:
    """The recorded TrainConfig and DataSpec of a training run."""
    recorded = run.read_json("config.json")
    try:
        return TrainConfig(**recorded["train"]), DataSpec(**recorded["data"])
    except (KeyError, TypeError, ConfigError, ValueError) as err:
        raise CheckpointError(f"{run.file('config.json')}: not a training config ({err})"
                              ) from None


def choose_checkpoint(run: RunDir, which: str = "auto") -> Path:
    """``auto`` (averaged if present, else best, else the newest numbered), ``avg``, ``best``,
    ``last``, or a file name in ``checkpoints/``."""
    folder = run.checkpoints
    if which in ("auto", "last"):
        candidates = [folder / AVERAGE, folder / BEST] if which == "auto" else []
        for path in candidates:
            if path.is_file():
                return path
        latest = run.latest()
        if latest is None:
            raise CheckpointError(f"{folder}: no checkpoint yet (is training still starting?)")
        return latest
    path = folder / {"avg": AVERAGE, "best": BEST}.get(which, which)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint")
    return path


def load_run(run_dir: str | Path, checkpoint: str = "auto", device: str | None = None
             ) -> LoadedRun:
    """Load a training run's model in eval mode (``checkpoint`` as in ``choose_checkpoint``).

    Checkpoints are loaded with ``weights_only=True``: one that holds anything but tensors and
    plain data is refused, never unpickled.
    """
    run = RunDir.open(run_dir, RunKind.TRAIN, "load a trained model from")
    config, data = read_train_config(run)
    arch = Architecture.load(run.file(ARCH))
    vocab = Vocab.load(run.file(VOCAB))
    path = choose_checkpoint(run, checkpoint)
    model = build_model(arch, config.model, len(vocab))
    try:
        model.load_state_dict(run.load(path)["model"])
    except (RuntimeError, KeyError) as err:
        raise CheckpointError(f"{path}: does not fit the run's architecture ({err})"[:400]
                              ) from None
    model.to(resolve_device(device or config.device)).eval()
    return LoadedRun(model, vocab, config, data, arch, path, run)
