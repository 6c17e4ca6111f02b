"""Ground truth: a table of architectures trained stand-alone, and lookups into it.

A table is plain JSON lines (``nasframe tabulate`` writes ``table.jsonl``), one record per
architecture and seed::

    {"digest": "3f2a...", "space": "tiny", "choices": {"encoder.layer1.split1": "ffn", ...},
     "seed": 1, "params": 412345, "valid_loss": 5.123, "bleu": null, "updates": 400,
     "seconds": 11.2}

``valid_loss`` is plain cross-entropy per target token on a fixed held-out set, the measure
every lookup ranks by (smaller is better). ``digest`` is ``arch_digest(choices)``: the
SHA-256 of the choices as sorted, compact JSON, so an architecture is found whatever its
space object or the order of its choices.

::

    import nasframe as nf
    table = nf.GroundTruth.load("tables/tiny/table.jsonl")
    table.query(arch)        # its loss, the mean over the seeds the table has
    table.percentile(arch)   # the fraction of the table it beats or ties: 1.0 is the best
    table.regret(arch)       # its loss minus the best loss of the table

A table may come from someone else: it is read with a size bound and never unpickled, and a
malformed line is one ``DataError`` naming ``path:line``.
"""
from __future__ import annotations

import hashlib
import json
import math
import statistics
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from nasframe.base.errors import DataError
from nasframe.base.files import MAX_LINE_BYTES, MiB, lines_of, read_text
from nasframe.compare.ranking import expected_best_of_k, kendall_tau, precision_at_k, spearman
from nasframe.dsl.architecture import Architecture

__all__ = ["MAX_TABLE_BYTES", "Entry", "GroundTruth", "RandomK", "arch_digest", "parse_record"]

MAX_TABLE_BYTES = 256 * MiB
"""The largest ground-truth table read (about a million records)."""

_REQUIRED = {"digest": str, "choices": dict, "seed": int, "params": int, "valid_loss": float,
             "updates": int, "seconds": float}
_OPTIONAL = {"bleu": float, "space": str}


class _Rng(Protocol):
    def randrange(self, stop: int) -> int: ...


def arch_digest(choices: Architecture | Mapping[str, str]) -> str:
    """The stable key of an architecture: SHA-256 (hex) of its choices as sorted, compact
    JSON."""
    if isinstance(choices, Architecture):
        choices = choices.choices
    text = json.dumps(dict(choices), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_record(line: str, where: str) -> dict[str, Any]:
    """One table line as a checked record, or ``DataError`` naming ``where`` (``path:line``):
    the fields and their types, a finite non-negative loss, and a digest that matches the
    choices."""
    try:
        record = json.loads(line)
    except (json.JSONDecodeError, RecursionError):
        raise DataError(f"{where}: not a JSON line") from None
    if not isinstance(record, dict):
        raise DataError(f"{where}: not a JSON object")
    for name, kind in _REQUIRED.items():
        if name not in record:
            raise DataError(f"{where}: the field {name!r} is missing")
        _check_type(record, name, kind, where)
    for name, kind in _OPTIONAL.items():
        if record.get(name) is not None:
            _check_type(record, name, kind, where)
    choices = record["choices"]
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in choices.items()):
        raise DataError(f"{where}: choices must map node names to op labels (strings)")
    loss = float(record["valid_loss"])
    if not math.isfinite(loss) or loss < 0:
        raise DataError(f"{where}: valid_loss {loss!r} is not a finite, non-negative loss")
    for name in ("params", "updates"):
        if record[name] < 0:
            raise DataError(f"{where}: {name} {record[name]!r} is negative")
    if record["digest"] != arch_digest(choices):
        raise DataError(f"{where}: digest {record['digest'][:16]}... does not match its "
                        "choices (the line was edited, or made by another digest)")
    record["valid_loss"] = loss
    record["seconds"] = float(record["seconds"])
    return record


def _check_type(record: dict[str, Any], name: str, kind: type, where: str) -> None:
    value = record[name]
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind) and not isinstance(value, bool)
    if not ok:
        raise DataError(f"{where}: {name} {str(value)[:40]!r} is not {_NAMES[kind]}")


_NAMES = {str: "a string", dict: "an object", int: "a whole number", float: "a number"}


@dataclass
class Entry:
    """One architecture of a table: its choices and its loss at each seed the table has."""

    digest: str
    choices: dict[str, str]
    losses: dict[int, float]                 #: seed -> held-out loss
    params: int
    space: str | None = None
    bleu: dict[int, float] = field(default_factory=dict)   #: seed -> BLEU, where recorded
    seconds: dict[int, float] = field(default_factory=dict)  #: seed -> training seconds
    updates: dict[int, int] = field(default_factory=dict)    #: seed -> updates

    @property
    def loss(self) -> float:
        """The mean held-out loss over the seeds this entry has."""
        return statistics.fmean(self.losses.values())

    def architecture(self, space: Any) -> Architecture:
        """This entry as an ``Architecture`` of ``space`` (a ``SearchSpace``)."""
        return Architecture(space=space, choices=self.choices)


@dataclass(frozen=True)
class RandomK:
    """The exact expectation of Random-K on a table: K architectures drawn uniformly without
    replacement, the best by the ``select_seed`` loss kept, and reported by ``report_seed``."""

    k: int
    pool: int          #: architectures with both seeds, the ones drawn from
    loss: float        #: expected ``report_seed`` loss of the one kept
    regret: float      #: expected loss minus the best ``report_seed`` loss of the pool
    percentile: float  #: expected fraction of the pool it beats or ties by ``report_seed``


class GroundTruth:
    """A table of stand-alone-trained architectures, looked up by their choices.

    Every lookup takes an ``Architecture``, a mapping of choices or a digest. ``seed=None``
    (the default) uses each architecture's mean loss over the seeds it has; a seed uses that
    seed's loss, over the architectures that have it.
    """

    def __init__(self, records: Iterable[Mapping[str, Any]] = (), source: str = "table"
                 ) -> None:
        self.source = source
        self.entries: dict[str, Entry] = {}
        for number, record in enumerate(records, 1):
            where = f"{source}:{number}"
            try:
                line = json.dumps(dict(record))
            except (TypeError, ValueError):
                raise DataError(f"{where}: not a JSON record") from None
            self._add(parse_record(line, where), where)
        self._check_nodes()

    # -- reading ----------------------------------------------------------------------------
    @classmethod
    def load(cls, path: str | Path, limit: int = MAX_TABLE_BYTES) -> GroundTruth:
        """Read a JSON-lines table (bounded, never through a link); blank lines are skipped,
        a malformed line is a ``DataError`` naming ``path:line``."""
        path = Path(path)
        text = read_text(path, limit, "ground-truth table", DataError)
        table = cls(source=str(path))
        for number, line in enumerate(lines_of(text, path, MAX_LINE_BYTES, DataError), 1):
            if line.strip():
                where = f"{path}:{number}"
                table._add(parse_record(line, where), where)
        table._check_nodes()
        return table

    def _add(self, rec: dict[str, Any], where: str) -> None:
        entry = self.entries.get(rec["digest"])
        if entry is None:
            entry = self.entries[rec["digest"]] = Entry(
                rec["digest"], dict(rec["choices"]), {}, rec["params"], rec.get("space"))
        elif entry.params != rec["params"]:
            raise DataError(f"{where}: architecture {rec['digest'][:12]} has {rec['params']} "
                            f"parameters here and {entry.params} on an earlier line")
        seed = rec["seed"]
        if seed in entry.losses:
            raise DataError(f"{where}: architecture {rec['digest'][:12]} at seed {seed} is "
                            "recorded twice")
        entry.losses[seed] = rec["valid_loss"]
        entry.seconds[seed] = rec["seconds"]
        entry.updates[seed] = rec["updates"]
        if rec.get("bleu") is not None:
            entry.bleu[seed] = float(rec["bleu"])

    def _check_nodes(self) -> None:
        nodes = {frozenset(e.choices) for e in self.entries.values()}
        if len(nodes) > 1:
            raise DataError(f"{self.source}: the architectures have different choice nodes "
                            "(a table holds one space)")

    # -- the table --------------------------------------------------------------------------
    def __len__(self) -> int:
        """The number of architectures (not records: one per seed)."""
        return len(self.entries)

    def __iter__(self) -> Iterator[Entry]:
        return iter(self.entries.values())

    def __contains__(self, arch: object) -> bool:
        try:
            return self._digest(arch) in self.entries  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return False

    @property
    def seeds(self) -> list[int]:
        """Every seed some architecture has, ascending."""
        return sorted({s for e in self.entries.values() for s in e.losses})

    def entry(self, arch: Architecture | Mapping[str, str] | str) -> Entry:
        """The table's entry of ``arch``; ``DataError`` if the table does not have it."""
        digest = self._digest(arch)
        found = self.entries.get(digest)
        if found is None:
            nodes = next(iter(self.entries.values())).choices if self.entries else {}
            given = arch.choices if isinstance(arch, Architecture) else \
                (arch if isinstance(arch, Mapping) else None)
            if given is not None and nodes and set(given) != set(nodes):
                raise DataError(f"{self.source}: the architecture's choice nodes are not the "
                                f"table's (it has {sorted(given)[:3]}..., the table "
                                f"{sorted(nodes)[:3]}...): another space")
            raise DataError(f"{self.source}: architecture {digest[:12]} is not in the table")
        return found

    def _digest(self, arch: Architecture | Mapping[str, str] | str) -> str:
        if isinstance(arch, str):
            return arch
        return arch_digest(arch)

    def _losses(self, seed: int | None) -> dict[str, float]:
        if not self.entries:
            raise DataError(f"{self.source}: the table is empty")
        if seed is None:
            return {d: e.loss for d, e in self.entries.items()}
        found = {d: e.losses[seed] for d, e in self.entries.items() if seed in e.losses}
        if not found:
            raise DataError(f"{self.source}: no architecture has seed {seed} (seeds: "
                            f"{self.seeds})")
        return found

    # -- lookups ----------------------------------------------------------------------------
    def query(self, arch: Architecture | Mapping[str, str] | str,
              seed: int | None = None) -> float:
        """The held-out loss of ``arch``: the mean over its seeds, or that ``seed``'s."""
        entry = self.entry(arch)
        if seed is None:
            return entry.loss
        if seed not in entry.losses:
            raise DataError(f"{self.source}: architecture {entry.digest[:12]} has no seed "
                            f"{seed} (it has {sorted(entry.losses)})")
        return entry.losses[seed]

    def rank(self, arch: Architecture | Mapping[str, str] | str,
             seed: int | None = None) -> int:
        """1 + how many architectures have a strictly smaller loss: 1 is the best, and tied
        architectures share a rank."""
        loss = self.query(arch, seed)
        return 1 + sum(v < loss for v in self._losses(seed).values())

    def percentile(self, arch: Architecture | Mapping[str, str] | str,
                   seed: int | None = None) -> float:
        """The fraction of the table that ``arch`` beats or ties (itself included): 1.0 for
        the best, 1/len for a worst without ties."""
        loss = self.query(arch, seed)
        losses = self._losses(seed).values()
        return sum(v >= loss for v in losses) / len(losses)

    def regret(self, arch: Architecture | Mapping[str, str] | str,
               seed: int | None = None) -> float:
        """The loss of ``arch`` minus the best loss of the table (0 for the best)."""
        return self.query(arch, seed) - min(self._losses(seed).values())

    def best(self, seed: int | None = None) -> Entry:
        """The entry with the smallest loss (the first recorded among ties)."""
        losses = self._losses(seed)
        return self.entries[min(losses, key=losses.__getitem__)]

    def sample(self, rng: _Rng) -> Entry:
        """One entry drawn uniformly with ``rng`` (a ``random.Random``)."""
        if not self.entries:
            raise DataError(f"{self.source}: the table is empty")
        return list(self.entries.values())[rng.randrange(len(self.entries))]

    # -- baselines --------------------------------------------------------------------------
    def random_one_percentile(self, seed: int | None = None) -> float:
        """The expected percentile of one uniform draw, exactly: (n + 1) / 2n without ties."""
        losses = list(self._losses(seed).values())
        n = len(losses)
        return sum(sum(v >= x for v in losses) for x in losses) / (n * n)

    def random_k(self, k: int, select_seed: int = 1, report_seed: int = 2) -> RandomK:
        """Random-K, exactly: the expectation over K architectures drawn uniformly without
        replacement (from those with both seeds) of the one with the best ``select_seed``
        loss, reported by ``report_seed`` (a second training, so that the draw's luck at
        ``select_seed`` does not flatter it)."""
        if select_seed == report_seed:
            raise DataError("random_k: select and report by different seeds (reporting the "
                            "seed that selected favours lucky draws)")
        pool = [e for e in self.entries.values()
                if select_seed in e.losses and report_seed in e.losses]
        if not 1 <= k <= len(pool):
            raise DataError(f"{self.source}: Random-{k} needs K between 1 and {len(pool)} (the "
                            f"architectures with seeds {select_seed} and {report_seed})")
        select = [e.losses[select_seed] for e in pool]
        report = [e.losses[report_seed] for e in pool]
        best = min(report)
        percentiles = [sum(v >= x for v in report) / len(report) for x in report]
        return RandomK(k, len(pool), expected_best_of_k(select, report, k),
                       expected_best_of_k(select, [r - best for r in report], k),
                       expected_best_of_k(select, percentiles, k))

    def k_for_seconds(self, seconds: float, seed: int = 1) -> int:
        """How many stand-alone trainings ``seconds`` buy at the table's mean training time
        at ``seed`` (at least 1, at most the table): Random-K's K for a search's cost."""
        times = [e.seconds[seed] for e in self.entries.values() if seed in e.seconds]
        if not times:
            raise DataError(f"{self.source}: no architecture has seed {seed}")
        per = statistics.fmean(times)
        return max(1, min(len(times), int(seconds // per) if per > 0 else len(times)))

    def correlation(self, scores: Mapping[str, float], k: int = 10,
                    seed: int | None = None) -> dict[str, float]:
        """How well a strategy's ``scores`` (digest -> score, smaller = better: negate a
        log-probability) rank the architectures it scored: Kendall tau-b, Spearman rho and
        precision@k (k cut to the number scored) against the table's losses."""
        losses = self._losses(seed)
        missing = [d for d in scores if d not in losses]
        if missing:
            raise DataError(f"{self.source}: {len(missing)} scored architecture(s) are not in "
                            f"the table (e.g. {missing[0][:12]})")
        digests = list(scores)
        predicted = [float(scores[d]) for d in digests]
        truth = [losses[d] for d in digests]
        top = min(k, len(digests))
        return {"n": len(digests), "kendall_tau": kendall_tau(predicted, truth),
                "spearman": spearman(predicted, truth), "k": top,
                "precision_at_k": precision_at_k(predicted, truth, top) if top else math.nan}
