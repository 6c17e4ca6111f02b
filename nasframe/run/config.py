"""Search configuration: pydantic models, named presets, TOML files, dotted overrides.

Precedence, lowest first: field defaults (the paper's settings, Zhao et al. 2021 §5) < preset < TOML
file < command-line flags. A run directory records the final config as ``config.json``, so a
resumed or reproduced run never depends on which of these produced it.

Values the paper does not state are marked *(ours)* in the field descriptions.
"""
from __future__ import annotations

import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from nasframe.base.errors import ConfigError, describe_validation_error
from nasframe.base.files import MAX_TOML_BYTES, read_text
from nasframe.run.data_spec import DataSpec
from nasframe.run.model_config import ModelConfig

__all__ = [
    "DataConfig", "WeightOptim", "OptimConfig", "EvolutionConfig", "SearchConfig", "PRESETS",
    "preset_names", "PRESET_HELP", "default_preset", "TrainConfig", "TRAIN_PRESETS",
    "load_config", "apply_overrides",
]


C = TypeVar("C", "SearchConfig", "TrainConfig")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """Where the two search streams come from and how they are batched."""

    source: str = Field("lohelp", description="'lohelp' (embedded corpus), 'synthetic:TASK' "
                        "(copy|reverse|sort) or a TSV path/folder")
    vocab_size: int = Field(8000, ge=5, description="sentencepiece vocabulary size; for "
                            "synthetic data the number of token ids")
    max_tokens: int = Field(4096, ge=1, description="token budget of a batch, per process")
    max_len: int = Field(250, ge=1, description="drop real-text pairs with a side longer "
                         "than this (subword tokens)")
    split: tuple[float, float] = Field((2.5, 2.0), description="search-train : search-valid "
                                       "ratio (Zhao et al. 2021 §5: 2.5M / 2.0M)")
    synthetic_pairs: int = Field(9000, ge=2, description="pairs of a synthetic task, both "
                                 "splits together")
    synthetic_len: tuple[int, int] = Field((4, 12), description="min and max length of a "
                                           "synthetic sequence")
    src: str | None = Field(None, description="source side as a text file (with tgt: "
                            "instead of source)")
    tgt: str | None = Field(None, description="target side, aligned with src")
    holdout: tuple[float, float] = Field((0.05, 0.05), description="valid and test fractions "
                                         "held out of a corpus without splits (never searched)")
    holdout_seed: int = Field(0, description="seed of that hold-out (the same for training)")

    def spec(self) -> DataSpec:
        """The real-text corpus this names, as training names it."""
        if self.src is not None or self.tgt is not None:
            return DataSpec(src=self.src, tgt=self.tgt, holdout=self.holdout,
                            holdout_seed=self.holdout_seed)
        return DataSpec(data=self.source, holdout=self.holdout, holdout_seed=self.holdout_seed)


class WeightOptim(_Section):
    """How the weights w are optimised: the section search and re-training share (Zhao et al. 2021
    §5: Adam, inverse-square-root warmup, label smoothing 0.1)."""

    lr: float = Field(7e-4, gt=0, description="peak learning rate of the weights w")
    warmup: int = Field(4000, ge=1, description="inverse-sqrt schedule warmup updates")
    betas: tuple[float, float] = (0.9, 0.98)
    eps: float = Field(1e-9, gt=0)
    weight_decay: float = Field(0.0, ge=0, description="weight decay of w (ours)")
    clip_norm: float | None = Field(1.0, gt=0, description="max gradient norm of w; None: no "
                                    "clipping (ours)")
    label_smoothing: float = Field(0.1, ge=0, lt=1)


class OptimConfig(WeightOptim):
    """The two Adam optimisers of the bilevel search (Zhao et al. 2021 §5): w as in re-training, and
    the alphas."""

    alpha_lr: float = Field(3e-4, gt=0, description="learning rate of the alphas (fixed)")
    alpha_betas: tuple[float, float] = (0.5, 0.999)
    alpha_weight_decay: float = Field(1e-3, ge=0)
    alpha_warmup: int = Field(0, ge=0, description="updates that train only w before the "
                              "alphas start moving (ours; 0 as in the paper)")
    second_order: bool = Field(False, description="DARTS second-order alpha gradient "
                               "(finite-difference Hessian-vector product)")
    unrolled_lr: float | None = Field(None, gt=0, description="xi of the unrolled step "
                                      "w' = w - xi grad_w L_train; None: the current lr of w")
    fd_eps: float = Field(0.01, gt=0, description="finite-difference step, divided by "
                          "||grad_w' L_val|| as in DARTS")


class EvolutionConfig(_Section):
    """SPOS' evolutionary search over architectures scored with the shared weights."""

    population: int = Field(20, ge=2)
    parents: int = Field(5, ge=1, description="best architectures so far that breed")
    iterations: int = Field(10, ge=0, description="generations after the random one")
    mutation_prob: float = Field(0.1, ge=0, le=1, description="per-node resampling "
                                 "probability of a mutated child")
    crossover_rate: float = Field(0.5, ge=0, le=1, description="share of each generation made "
                                  "by crossover (the rest by mutation)")
    top_k: int = Field(5, ge=1, description="architectures returned with their scores")
    eval_batches: int = Field(8, ge=1, description="search-valid batches scoring one "
                              "architecture")
    seed: int | None = Field(None, description="None: the search seed")


class SearchConfig(_Section):
    """Everything a search run needs besides the space (recorded as space.json)."""

    preset: str | None = Field(None, description="the preset this config started from")
    strategy: str = Field("darts-reversible", description="registered strategy name")
    space: str | None = Field(None, description="built-in space name or JSON file; None: the "
                              "strategy's default space")
    steps: int = Field(60000, ge=1, description="updates of the search")
    checkpoint_every: int = Field(10000, ge=1, description="updates between checkpoints")
    keep_checkpoints: int | None = Field(None, ge=1, description="keep only the newest k "
                                         "checkpoint files; None: keep all")
    log_every: int = Field(100, ge=1, description="updates between metrics lines")
    skip_nonfinite: int = Field(0, ge=0, description="batches with a non-finite loss or "
                                "gradient that may be skipped (w and alpha unchanged) before "
                                "the run stops; 0: stop at the first")
    seed: int = 1
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["float32", "float64"] = "float32"
    precision: Literal["fp32", "bf16"] = Field("fp32", description="fp32, or bf16 autocast "
                                               "of the ops (the reversible stream stays fp32)")
    memory_limit: str | None = Field(None, description="activation memory the reversible "
                                     "layers may keep (e.g. 500MB): sets model.keep_layers to "
                                     "the largest K that fits, measured at the start")
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(d_model=960, embed_dim=256))
    data: DataConfig = Field(default_factory=DataConfig)
    optim: OptimConfig = Field(default_factory=OptimConfig)
    evolution: EvolutionConfig = Field(default_factory=EvolutionConfig)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(_format(err)) from None

    @classmethod
    def preset_config(cls, name: str) -> SearchConfig:
        """``tiny`` (CPU, minutes), ``small``, ``paper`` (Zhao et al. 2021 §5)."""
        if name not in PRESETS:
            raise ConfigError(f"preset: unknown preset {name!r}; choose one of "
                              f"{', '.join(preset_names())}")
        return apply_overrides(cls(), {"preset": name, **flatten(PRESETS[name])})

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    @classmethod
    def from_json(cls, text: str, where: str = "config") -> SearchConfig:
        try:
            return cls.model_validate_json(text)
        except ValidationError as err:
            raise ConfigError(f"{where}: {_format(err)}") from None


# The paper preset is the field defaults; the others change only what they name.
PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "small": {  # Zhao et al. 2021 Table 5 "small" search size (E, d) = (128, 240)
        "steps": 10000, "checkpoint_every": 2000, "log_every": 50,
        "model": {"d_model": 240, "embed_dim": 128},
        "data": {"max_tokens": 2048},
        "optim": {"warmup": 1000},
    },
    "tiny": {  # CPU in minutes: a smoke test of the whole pipeline, not a real search
        "steps": 300, "checkpoint_every": 100, "log_every": 10,
        "model": {"d_model": 48, "embed_dim": 32},
        "data": {"max_tokens": 512, "vocab_size": 1000, "synthetic_pairs": 2000},
        # (ours) 300 updates at the paper's alpha lr 3e-4 move an alpha by at most ~0.09,
        # leaving softmax(alpha) uniform: the tiny budget needs a larger alpha step.
        "optim": {"warmup": 100, "lr": 2e-3, "alpha_lr": 1e-2},
        "evolution": {"population": 8, "parents": 3, "iterations": 3, "eval_batches": 4},
    },
}
"""The search presets: what each changes from the field defaults (``paper`` is the
defaults)."""


def preset_names() -> list[str]:
    """Names of the search presets (``tiny``, ``small``, ``paper``)."""
    return list(PRESETS)


PRESET_HELP = {"tiny": "CPU, minutes: search ~2 min, re-training ~5 min on 2 cores",
               "small": "one GPU, about an hour (not yet timed)",
               "paper": "the paper's sizes, days on one GPU (not yet timed)"}
"""What each preset is for, as --help and the "chose preset" line say it."""


def default_preset(device: str = "auto") -> str:
    """The preset a command uses when none is given: ``tiny`` on a CPU, ``small`` on a GPU."""
    import torch

    gpu = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    return "small" if gpu else "tiny"


class TrainConfig(WeightOptim):
    """How to re-train a fixed architecture. Values the paper does not state are *(ours)*."""

    preset: str | None = None
    # Re-trained reversible models use pre-norm splits (split_norm "branch"): at matched size
    # and 600 updates they cut the BLEU gap to the Transformer from 4.8 to 1.9 (README).
    model: ModelConfig = Field(default_factory=lambda: ModelConfig(
        d_model=528, embed_dim=512, blocks=3, split_norm="branch"))
    vocab_size: int = Field(8000, ge=5, description="joint sentencepiece vocabulary size")
    max_len: int = Field(250, ge=1, description="drop pairs with a side longer than this")
    max_tokens: int = Field(4096, ge=1, description="token budget of a batch")
    steps: int | None = Field(100_000, ge=1, description="updates; None: only the time limit")
    minutes: float | None = Field(None, gt=0, description="wall-clock limit of training")
    checkpoint_every: int = Field(1000, ge=1, description="updates between checkpoints")
    valid_every: int | None = Field(None, ge=1, description="updates between validations; "
                                    "None: at every checkpoint")
    keep_checkpoints: int = Field(5, ge=1, description="numbered checkpoints kept")
    average_last: int = Field(0, ge=0, description="average the last k numbered checkpoints")
    log_every: int = Field(50, ge=1)
    skip_nonfinite: int = Field(0, ge=0, description="batches with a non-finite loss or "
                                "gradient that may be skipped before the run stops")
    seed: int = 1
    device: str = Field("auto", description="'auto', 'cpu', 'cuda', 'cuda:1', ...")
    precision: Literal["fp32", "bf16", "fp16"] = Field(
        "fp32", description="fp32, or autocast in bf16 or fp16 (fp16 with a gradient scaler)")

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as err:
            raise ConfigError(describe_validation_error(err, root="train", field_prefix="train.")
                              ) from None
        if self.steps is None and self.minutes is None:
            raise ConfigError("train: give steps or minutes (or both): training needs an end")

    @classmethod
    def preset_config(cls, name: str, **overrides: Any) -> TrainConfig:
        """``tiny`` (CPU, minutes), ``small`` (one GPU, hours), ``paper`` (base size)."""
        if name not in TRAIN_PRESETS:
            raise ConfigError(f"preset: unknown preset {name!r}; choose one of "
                              f"{', '.join(TRAIN_PRESETS)}")
        data = {**TRAIN_PRESETS[name], "preset": name}
        data["model"] = ModelConfig(**data["model"])
        return cls(**{**data, **{k: v for k, v in overrides.items() if v is not None}})


# d_model must split evenly into 2 and 3 splits of a width divisible by 8 heads: 48 | d.
TRAIN_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {  # 2 CPU cores, ~5 minutes (1,500 updates took 254 s): a demonstration
        "model": {"d_model": 144, "embed_dim": 128, "blocks": 1, "dropout": 0.1,
                  "split_norm": "branch"},
        # lr 3e-3: better than 2e-3 for both families at <= 1,000 updates (README)
        "vocab_size": 4000, "max_tokens": 1536, "steps": 1500, "lr": 3e-3, "warmup": 300,
        "checkpoint_every": 500, "log_every": 10,
    },
    "small": {  # one GPU, about an hour (Zhao et al. 2021 Fig. 5 "small": d = 128..256)
        "model": {"d_model": 288, "embed_dim": 256, "blocks": 2, "dropout": 0.1,
                  "split_norm": "branch"},
        "vocab_size": 8000, "max_tokens": 4096, "steps": 30_000, "lr": 1e-3, "warmup": 2000,
        "checkpoint_every": 2000, "average_last": 5, "log_every": 50,
    },
    "paper": {  # base size (Zhao et al. 2021 §5: E = 512, ~62.5M parameters); d rounded to 48 | d
        "model": {"d_model": 528, "embed_dim": 512, "blocks": 3, "dropout": 0.1,
                  "split_norm": "branch"},
        "vocab_size": 32000, "max_tokens": 4096, "steps": 100_000, "lr": 7e-4,
        "warmup": 4000, "checkpoint_every": 2000, "average_last": 5, "log_every": 100,
    },
}
"""The re-training presets (``tiny``, ``small``, ``paper``): the values each sets."""


def load_config(path: str | Path, base: C | None = None,
                kind: type[C] | None = None) -> C:
    """Read a TOML file over ``base`` (or over its own ``preset = "..."``, else the defaults).

    ``kind`` is SearchConfig (the default) or TrainConfig. A search TOML has top-level fields,
    then ``[model]``, ``[data]``, ``[optim]``, ``[evolution]`` sections; a training TOML
    top-level fields and ``[model]``.
    """
    path = Path(path)
    cls: Any = kind or (type(base) if base is not None else SearchConfig)
    try:
        table = tomllib.loads(read_text(path, MAX_TOML_BYTES, "config file", ConfigError))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as err:
        raise ConfigError(f"{path}: {err}") from None
    if base is None:
        preset = table.get("preset")
        base = cls.preset_config(preset) if isinstance(preset, str) else cls()
    try:
        return apply_overrides(base, flatten(table))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from None


def apply_overrides(config: C, overrides: dict[str, Any]) -> C:
    """A copy of ``config`` (a SearchConfig or TrainConfig) with dotted keys replaced
    (``{"model.d_model": 96}``), validated."""
    data = config.model_dump()
    for key, value in overrides.items():
        node, parts = data, key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{key}: unknown setting ({part!r} is not a section)")
            node = node[part]
        if parts[-1] not in node:
            known = ", ".join(sorted(node))
            raise ConfigError(f"{key}: unknown setting (known here: {known})")
        node[parts[-1]] = value
    return type(config)(**data)


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"model.d_model=96"`` -> ``("model.d_model", 96)``; the value is read as TOML."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. model.d_model=96")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word such as cpu or synthetic:reverse
    return key.strip(), value


def flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"model": {"d_model": 96}}`` -> ``{"model.d_model": 96}``."""
    out: dict[str, Any] = {}
    for key, value in table.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def _format(err: ValidationError) -> str:
    return describe_validation_error(err, root="config")
