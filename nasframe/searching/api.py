"""``nf.search``: one call from a space, a strategy, data and a config to a derived architecture.

It resolves names (space, strategy, preset), prepares the two search streams (Zhao et al. 2021 §5:
the training data split 2.5 : 2.0 into search-train for w and search-valid for alpha), builds
the supernet under a fixed seed and hands everything to the
:class:`~nasframe.searching.executor.Executor`.
"""
from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from nasframe.base.errors import ConfigError, DataError, RunDirError
from nasframe.base.files import MAX_JSON_BYTES, read_text
from nasframe.base.runtime import resolve_device, seed_everything
from nasframe.dsl.architecture import Architecture
from nasframe.dsl.plugins import find_imported, import_user_code
from nasframe.dsl.space import SearchSpace
from nasframe.engine.supernet import Supernet
from nasframe.run.config import SearchConfig, apply_overrides, load_config
from nasframe.run.resume import SEARCH_RESUMABLE, resume_config
from nasframe.run.rundir import RunDir, RunKind, check_recorded_code, load_checkpoint
from nasframe.searching.budget import keep_layers_for
from nasframe.searching.executor import Executor, SearchResult, World
from nasframe.searching.strategy import SearchContext, Strategy, get_strategy
from nasframe.spaces import get as builtin_space
from nasframe.spaces import is_registered_factory
from nasframe.text.data import (
    Batch,
    Pair,
    ParallelCorpus,
    TokenBatcher,
    Vocab,
    cache_dir,
    corpus_split,
    encode_corpus,
    get_or_train_vocab,
    split_search,
    synthetic_pairs,
)

__all__ = ["search", "SearchData", "import_space_code", "prepare_data", "resolve_config",
           "resolve_space", "derive_checkpoint", "SearchResult"]

VOCAB = "vocab.model"

_SYNTHETIC = "synthetic:"


@dataclass
class SearchData:
    """The two search streams, fixed search-valid batches for scoring, and the vocabulary."""

    train: TokenBatcher
    valid: TokenBatcher
    scoring: list[Batch]
    vocab_size: int
    vocab: Vocab | None = None
    description: str = ""

    @classmethod
    def from_pairs(cls, train: Sequence[Pair], valid: Sequence[Pair], vocab_size: int,
                   config: SearchConfig, world: World | None = None,
                   description: str = "pairs") -> SearchData:
        """Batch already-encoded pairs (ids >= 4; 0-3 are pad/unk/bos/eos)."""
        world = world or World()
        tokens, seed = config.data.max_tokens, config.seed
        train_b = TokenBatcher(train, tokens, seed=seed, rank=world.rank,
                               world_size=world.world_size)
        valid_b = TokenBatcher(valid, tokens, seed=seed + 1, rank=world.rank,
                               world_size=world.world_size)
        # Shuffled with their own seed: an unshuffled pass would start with the shortest
        # sentences. The same on every rank, so every process ranks architectures alike.
        scoring_b = TokenBatcher(valid, tokens, seed=seed + 2)
        n = min(config.evolution.eval_batches, len(scoring_b))
        scoring = [next(scoring_b) for _ in range(n)]
        return cls(train_b, valid_b, scoring, vocab_size, None, description)


def prepare_data(config: SearchConfig, world: World | None = None, vocab: Vocab | None = None,
                 corpus: ParallelCorpus | None = None) -> SearchData:
    """``config.data``: ``synthetic:TASK``, ``lohelp``, a TSV corpus or ``src``/``tgt`` files
    (the train split; a corpus without splits has its valid and test parts held out).

    Real text gets the joint sentencepiece vocabulary of the training split, from the cache
    (``$NASFRAME_CACHE``, trained there on first use) unless ``vocab`` is given (a resumed
    run's own copy). ``corpus`` replaces the training split named by the config (already
    loaded, e.g. by a comparison that runs many searches on it).
    """
    world = world or World()
    dc = config.data
    if dc.source.startswith(_SYNTHETIC):
        task = dc.source[len(_SYNTHETIC):]
        a, b = dc.split
        n_train = min(max(round(dc.synthetic_pairs * a / (a + b)), 1), dc.synthetic_pairs - 1)
        lo, hi = dc.synthetic_len
        train = synthetic_pairs(task, n_train, dc.vocab_size, lo, hi, seed=config.seed)  # type: ignore[arg-type]
        valid = synthetic_pairs(task, dc.synthetic_pairs - n_train, dc.vocab_size, lo, hi,  # type: ignore[arg-type]
                                seed=config.seed + 7919)
        return SearchData.from_pairs(train, valid, dc.vocab_size, config, world,
                                     f"synthetic {task}: {len(train)} + {len(valid)} pairs")
    if corpus is None:  # a corpus without splits: the rest of its hold-out
        corpus = corpus_split(dc.spec(), "train")
    search_train, search_valid = split_search(corpus, dc.split, seed=config.seed)
    if vocab is None:
        if not world.main:
            world.barrier()  # rank 0 trains the vocabulary once; the others load it
        vocab = get_or_train_vocab(corpus, cache_dir(), dc.vocab_size)
        if world.main:
            world.barrier()
    train, dropped_t = encode_corpus(search_train, vocab, dc.max_len)
    valid, dropped_v = encode_corpus(search_valid, vocab, dc.max_len)
    if not train or not valid:
        raise DataError(f"{dc.source}: no pairs left after dropping those over "
                        f"data.max_len={dc.max_len} tokens")
    data = SearchData.from_pairs(
        train, valid, len(vocab), config, world,
        f"{corpus.name}: {len(train)} + {len(valid)} pairs ({dropped_t + dropped_v} dropped "
        f"over {dc.max_len} tokens), vocab {len(vocab)}")
    data.vocab = vocab
    return data


# ----------------------------------------------------------------------------- resolving

def resolve_config(config: SearchConfig | str | Path | dict[str, Any] | None) -> SearchConfig:
    """A SearchConfig, a preset name, a TOML file, or dotted overrides of the paper defaults."""
    if config is None:
        return SearchConfig()
    if isinstance(config, SearchConfig):
        return config
    if isinstance(config, dict):
        return apply_overrides(SearchConfig(), config)
    text = str(config)
    if text.endswith(".toml") or Path(text).is_file():
        return load_config(text)
    return SearchConfig.preset_config(text)


def resolve_space(space: SearchSpace | str | Path, **options: Any) -> SearchSpace:
    """A space object, a built-in name (``nf.spaces.get``), a JSON file, or
    ``MODULE_OR_FILE:ATTRIBUTE`` of code already imported (``--import``,
    ``import_user_code``): a name read from a file never imports anything."""
    if isinstance(space, SearchSpace):
        return space
    text = str(space)
    if text.endswith(".json") or Path(text).is_file():
        if not Path(text).is_file():
            raise ConfigError(f"space: {text}: no such file")
        return SearchSpace.from_json(Path(text))
    if ":" in text:
        return _space_attribute(text, options)
    return builtin_space(text, **options)


def _space_attribute(text: str, options: dict[str, Any]) -> SearchSpace:
    """``module:NAME`` of imported code: a SearchSpace, or a factory registered with
    ``nf.spaces.register``, called with ``options``. Nothing else is ever called."""
    module_name, _, attribute = text.partition(":")
    module = find_imported(module_name)
    if module is None:
        raise ConfigError(f"space {text}: names code that this command line did not import; "
                          f"pass --import {module_name} to use it (a space named in a file "
                          "never imports code by itself)")
    value = getattr(module, attribute, None)
    if value is None:
        raise ConfigError(f"space {text}: module {module_name!r} has no attribute "
                          f"{attribute!r}")
    if callable(value) and not isinstance(value, SearchSpace):
        if not is_registered_factory(value):
            raise ConfigError(f"space {text}: is a {type(value).__name__}, neither a "
                              "SearchSpace nor a space factory registered with "
                              "nf.spaces.register; nothing else is called")
        value = value(**options)
    elif options:
        raise ConfigError(f"space {text}: a SearchSpace object takes no options")
    if not isinstance(value, SearchSpace):
        raise ConfigError(f"space {text}: is a {type(value).__name__}, not a SearchSpace")
    return value



def _strategy(strategy: str | type | Strategy | None, config: SearchConfig) -> Strategy:
    if strategy is None or isinstance(strategy, str):
        return get_strategy(strategy or config.strategy)()
    strat = strategy() if isinstance(strategy, type) else strategy
    if not getattr(strat, "name", None):  # an unregistered class: name it after itself
        strat.name = type(strat).__name__.lower()  # type: ignore[misc]
    return strat


def build_supernet(space: SearchSpace, config: SearchConfig, vocab_size: int,
                   device: torch.device | None = None) -> Supernet:
    """The supernet under ``config.seed``, in ``config.dtype`` on ``device``."""
    torch.manual_seed(config.seed)
    net = Supernet(space, config.model, vocab_size)
    return net.to(device=device or torch.device("cpu"), dtype=getattr(torch, config.dtype))


# ----------------------------------------------------------------------------- the API

def search(space: SearchSpace | str | None = None,
           strategy: str | type | Strategy | None = None,
           data: str | SearchData | None = None,
           config: SearchConfig | str | Path | dict[str, Any] | None = None, *,
           out: str | Path | None = None, resume: bool = False, progress: bool = False,
           steps: int | None = None, overrides: dict[str, Any] | None = None) -> SearchResult:
    """Search ``space`` with ``strategy`` and return the derived architecture and metrics.

    ``space``: SearchSpace, built-in name or JSON file (default: the strategy's default space).
    ``strategy``: registered name, class or instance (default: ``config.strategy``).
    ``data``: ``"synthetic:reverse"``, ``"lohelp"``, a TSV path, or a ``SearchData``
    (default: ``config.data.source``). ``config``: SearchConfig, preset name, TOML file or
    dotted overrides; ``overrides``: dotted fields replaced on top of it. ``out``: a new run
    directory (None: write nothing).

    ``resume=True`` continues the run in ``out`` from its newest checkpoint with the config,
    space and strategy it recorded; of those, only ``nasframe.run.resume.SEARCH_RESUMABLE`` fields
    may change (``steps``, ``overrides``, or a ``config`` that differs only there).
    """
    if resume:
        cfg, space_obj, strat, run = _resumed(space, strategy, data, config, out, steps,
                                              overrides or {})
    else:
        cfg, space_obj, strat = _fresh(space, strategy, data, config, steps, overrides or {})
        run = None
        if out is not None:
            RunDir.check_new(out, RunKind.SEARCH)  # before any work: a refused --out costs nothing

    try:
        device = resolve_device(cfg.device)
        world = World.from_env(device)
    except BaseException:
        if run is not None:
            run.close()
        raise
    try:
        result = _run(cfg, space_obj, strat, data, run, out, world, device, resume, progress)
    except BaseException:
        world.close(wait=False)
        raise
    world.close()
    return result


def _run(cfg: SearchConfig, space_obj: SearchSpace, strat: Strategy, data: Any,
         run: RunDir | None, out: str | Path | None, world: World, device: torch.device,
         resume: bool, progress: bool) -> SearchResult:
    try:
        if device.type == "cuda" and world.world_size > 1:
            device = torch.device("cuda", world.local_rank)
        own_vocab = Vocab.load(run.file(VOCAB)) \
            if run is not None and run.file(VOCAB).is_file() else None
        search_data = data if isinstance(data, SearchData) else \
            prepare_data(cfg, world, own_vocab)
        if out is not None and run is None:
            run = _create_run(out, cfg, space_obj, strat, search_data, world)
        seed_everything(cfg.seed)
        net = build_supernet(space_obj, cfg, search_data.vocab_size, device)
        if cfg.memory_limit is not None and not resume:
            cfg = _fit_keep_layers(net, cfg, search_data)
        if world.world_size > 1:  # same weights everywhere (broadcast), different dropout
            torch.manual_seed(cfg.seed + world.rank)
        executor = Executor(net, strat, search_data.train, search_data.valid, cfg, run,
                            valid_scoring=search_data.scoring, device=device, world=world,
                            progress=progress)
        return executor.run(resume=resume)
    finally:
        if run is not None:
            run.close()  # the run's lock: another writer may go on


def _fit_keep_layers(net: Supernet, cfg: SearchConfig, data: SearchData) -> SearchConfig:
    """``model.keep_layers`` for ``memory_limit``, measured on the largest scoring batch in
    the supernet's weighted mode (the most a step keeps); the stacks take it at once."""
    batches = data.scoring or [next(iter(data.valid))]
    batch = max(batches, key=lambda b: b.src.numel() + b.tgt_in.numel())
    device = next(net.parameters()).device
    k, spent = keep_layers_for(net, batch.to(device), cfg.memory_limit or 0)
    for stack in (net.encoder, net.decoder):
        if hasattr(stack, "keep_last"):
            stack.keep_last = k
    print(f"memory limit {cfg.memory_limit}: the top {k} layer(s) of each reversible stack keep "
          f"their activations ({spent / 2**20:.1f} MiB on the largest batch)", file=sys.stderr)
    return apply_overrides(cfg, {"model.keep_layers": k})


def _fresh(space: Any, strategy: Any, data: Any, config: Any, steps: int | None,
           overrides: dict[str, Any]) -> tuple[SearchConfig, SearchSpace, Strategy]:
    cfg = resolve_config(config)
    strat = _strategy(strategy, cfg)
    updates: dict[str, Any] = {"strategy": strat.name, **overrides}
    if steps is not None:
        updates["steps"] = steps
    if isinstance(data, str):
        updates["data.source"] = data
    if isinstance(space, str):
        import_space_code(space)  # named by the caller, not read from a config file
    space_obj = resolve_space(space if space is not None else cfg.space or strat.default_space)
    if isinstance(space, (str, Path)):
        updates["space"] = str(space)
    return apply_overrides(cfg, updates), space_obj, strat


def _resumed(space: Any, strategy: Any, data: Any, config: Any, out: str | Path | None,
             steps: int | None, overrides: dict[str, Any]
             ) -> tuple[SearchConfig, SearchSpace, Strategy, RunDir]:
    """The recorded config, space and strategy of the run in ``out``, checked against what
    the call gives."""
    if out is None:
        raise ConfigError("resume=True needs the run directory (out=...)")
    run = RunDir.resume(out, RunKind.SEARCH, lock=_main_process())
    try:
        return _resumed_run(run, space, strategy, data, config, steps, overrides)
    except BaseException:
        run.close()
        raise


def _main_process() -> bool:
    """Whether this process writes the run (the only one, or rank 0 under torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


def _resumed_run(run: RunDir, space: Any, strategy: Any, data: Any, config: Any,
                 steps: int | None, overrides: dict[str, Any]
                 ) -> tuple[SearchConfig, SearchSpace, Strategy, RunDir]:
    path = run.file("config.json")
    recorded = SearchConfig.from_json(read_text(path, MAX_JSON_BYTES, "config"), where=str(path))
    given = dict(overrides)
    if steps is not None:
        given["steps"] = steps
    if isinstance(data, str):
        given["data.source"] = data
    strat = _strategy(strategy if strategy is not None else recorded.strategy, recorded)
    if strat.name != recorded.strategy:
        raise RunDirError(f"{run.path}: was searched with strategy {recorded.strategy!r}, not "
                          f"{strat.name!r}")
    space_obj = SearchSpace.from_json(run.file("space.json"))
    if isinstance(space, str):
        import_space_code(space)
    if space is not None and resolve_space(space).digest() != space_obj.digest():
        raise RunDirError(f"{run.path}: was searched in another search space than "
                          f"{space!s:.80}; resume without a space (its space.json is used)")
    requested = resolve_config(config) if config is not None else None
    if requested is not None:  # what the call names by argument is checked just above
        requested = apply_overrides(requested, {"strategy": recorded.strategy,
                                                "space": recorded.space})
    cfg = resume_config(recorded, requested=requested, overrides=given,
                        allowed=SEARCH_RESUMABLE, where=f"{run.path}: --resume")
    return cfg, space_obj, strat, run


def _create_run(out: str | Path, cfg: SearchConfig, space: SearchSpace, strat: Strategy,
                data: SearchData, world: World) -> RunDir:
    """The new run directory (written by rank 0; the other processes wait for it)."""
    if world.main:
        run = RunDir.create(out, RunKind.SEARCH, {
            "strategy": strat.name, "space": space.name, "space_digest": space.digest(),
            "vocab_size": data.vocab_size, "data": data.description})
        run.write_text("space.json", space.to_json())
        if data.vocab is not None:
            data.vocab.save(run.file(VOCAB))
    world.barrier()
    return run if world.main else RunDir(Path(out), RunKind.SEARCH)


def derive_checkpoint(path: str | Path) -> Architecture:
    """Rebuild the supernet and strategy of a search checkpoint (or of a search run
    directory's newest one) and derive its architecture.

    Search-valid batches are prepared only if the strategy asks for them (SPOS without a
    stored evolution result), with the run's own vocabulary.
    """
    path = Path(path)
    if path.is_dir():
        run = RunDir.open(path, RunKind.SEARCH, "derive an architecture from")
        latest = run.latest()
        if latest is None:
            raise RunDirError(f"{path}: no checkpoint yet")
        path = latest
    run_dir = path.parent.parent if path.parent.name == "checkpoints" else path.parent
    check_recorded_code(run_dir)
    ckpt = load_checkpoint(path, RunKind.SEARCH)
    try:
        cfg = SearchConfig.from_json(ckpt["config"], where=f"{path}: config")
        space = SearchSpace.from_json(ckpt["space"])
        vocab_size, strategy, step = int(ckpt["vocab_size"]), str(ckpt["strategy_name"]), \
            int(ckpt["step"])
        model, state = ckpt["model"], ckpt["strategy"]
    except (KeyError, TypeError, ValueError) as err:  # ValueError: SpaceError, ConfigError too
        raise RunDirError(f"{path}: not a search checkpoint of this nasframe "
                          f"({type(err).__name__}: {str(err)[:200]})") from None
    net = build_supernet(space, cfg, vocab_size)
    strat = get_strategy(strategy)()
    ctx = SearchContext(net, cfg, valid_batches=_lazy_scoring(cfg, run_dir))
    strat.setup(ctx)
    try:
        net.load_state_dict(model)
        strat.load_state_dict(state)
    except (RuntimeError, KeyError, TypeError, ValueError) as err:
        raise RunDirError(f"{path}: does not fit its own space and strategy "
                          f"({str(err)[:200]})") from None
    ctx.step = step
    return strat.derive()


def import_space_code(space: str) -> None:
    """Import the module or file of a ``MODULE_OR_FILE:ATTRIBUTE`` space that the caller
    named (a command-line flag or an argument, never a value read from a file)."""
    if ":" in space and not Path(space).exists():
        import_user_code(space.partition(":")[0])


def _lazy_scoring(cfg: SearchConfig, run_dir: Path) -> Callable[[], list[Batch]]:
    cache: list[list[Batch]] = []

    def batches() -> list[Batch]:
        if not cache:
            vocab = Vocab.load(run_dir / VOCAB) if (run_dir / VOCAB).is_file() else None
            cache.append(prepare_data(cfg, vocab=vocab).scoring)
        return cache[0]

    return batches
