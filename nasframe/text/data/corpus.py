"""Parallel corpora: reading, writing and strict validation of TSV and aligned text files.

A corpus is read whole and checked line by line, because a silently shifted or truncated
corpus trains a model that looks fine and translates badly. Every problem raises
:class:`~nasframe.base.errors.DataError` with ``path:line`` and what is wrong.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import random
import stat
import zlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from nasframe.base.errors import DataError
from nasframe.base.files import MAX_LINE_BYTES, MiB
from nasframe.run.data_spec import EMBEDDED_NAME

__all__ = [
    "EMBEDDED_NAME",
    "EMBEDDED_SPLITS",
    "ParallelCorpus",
    "embedded_corpus_dir",
    "load_split",
    "read_pair",
    "read_tsv",
    "split_search",
    "write_pair",
    "write_tsv",
]

EMBEDDED_SPLITS = ("train", "valid", "test")
"""The splits of the corpus shipped inside the package (``--data lohelp``)."""
_EMBEDDED_FOLDER = "lohelp-en-de"


@dataclass(frozen=True)
class ParallelCorpus:
    """Aligned source and target sentences; ``src[i]`` translates to ``tgt[i]``."""

    src: list[str]
    tgt: list[str]
    name: str

    def __post_init__(self) -> None:
        if len(self.src) != len(self.tgt):
            raise DataError(
                f"corpus {self.name!r}: {len(self.src)} source but {len(self.tgt)} target sentences"
            )

    def __len__(self) -> int:
        return len(self.src)

    def pairs(self) -> Iterator[tuple[str, str]]:
        """The (source, target) pairs in corpus order."""
        return zip(self.src, self.tgt)

    def digest(self) -> str:
        """SHA-256 of the content (not the name), so caches follow the text, not the file."""
        h = hashlib.sha256()
        for text in (*self.src, *self.tgt):
            # Length-prefixed, so no choice of texts can collide with another by shifting
            # characters between neighbours.
            data = text.encode("utf-8")
            h.update(len(data).to_bytes(8, "little") + data)
        return h.hexdigest()


# ----------------------------------------------------------------------------- reading


def _is_gzip(path: Path) -> bool:
    return path.suffix == ".gz"


def _corpus_name(path: Path) -> str:
    """``train.en-de.tsv.gz`` -> ``train.en-de``: the name without format suffixes."""
    name = path.name
    for suffix in (".gz", ".tsv", ".txt"):
        name = name.removesuffix(suffix)
    return name or path.name


def _read_lines(path: Path) -> list[str]:
    """All lines of a UTF-8 text file (gzipped if the name ends in ``.gz``), without line ends.

    Only a regular file is read (``/dev/zero``, a FIFO or a folder is refused before a byte is
    read: a corpus path may come from a run directory someone sent), and no line may be
    longer than ``MAX_LINE_BYTES`` characters, decompressed: the file is read in chunks of
    bounded size, so an endless line is an error, not an exhausted machine. There is no bound
    on the whole file (corpora can be gigabytes). Errors name ``path:line``.
    """
    path = Path(path)
    raw = _open_regular(path)
    lines: list[str] = []
    try:
        with raw, (gzip.GzipFile(fileobj=raw, mode="rb") if _is_gzip(path) else raw) as f:
            tail = b""
            while True:
                chunk = f.read(_CHUNK)
                if not chunk:
                    break
                data = tail + chunk if tail else chunk
                cut = data.rfind(b"\n")
                if cut < 0:
                    tail = data
                else:
                    lines.extend(_decode_lines(data[:cut], path, len(lines)))
                    tail = data[cut + 1:]
                if len(tail) > _MAX_LINE_UTF8:  # more characters than a line may have
                    _too_long(path, len(lines) + 1)
            if tail:
                lines.extend(_decode_lines(tail, path, len(lines)))
    except (gzip.BadGzipFile, EOFError, zlib.error) as e:
        raise DataError(f"{path}: not a readable gzip file ({e})") from e
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    if not lines:
        raise DataError(f"{path}: file is empty, expected one sentence per line")
    return lines


#: Bytes read at a time: large enough that reading costs no more than before, small enough
#: to bound memory whatever the file holds.
_CHUNK = 4 * MiB
#: Bytes of an unfinished line beyond which it has more than MAX_LINE_BYTES characters
#: whatever they are (UTF-8 uses at most 4 bytes a character).
_MAX_LINE_UTF8 = 4 * MAX_LINE_BYTES + 1  # + 1: a Windows '\r'
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)


def _open_regular(path: Path) -> io.FileIO:
    """``path`` opened for reading if it is a regular file (a link the user named is
    followed); a folder, device, FIFO or socket is refused without reading it. ``O_NONBLOCK``
    keeps the open of a FIFO from waiting for a writer."""
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, expected a corpus file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read ({e.strerror or e})") from e
    try:
        mode = os.fstat(fd).st_mode
        if stat.S_ISDIR(mode):
            raise DataError(f"{path}: is a directory, expected a corpus file")
        if not stat.S_ISREG(mode):
            raise DataError(f"{path}: is a device, pipe or socket, not a regular file; a "
                            "corpus is read only from a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return io.FileIO(fd, "rb", closefd=True)
    except BaseException:
        os.close(fd)
        raise


def _too_long(path: Path, number: int) -> NoReturn:
    raise DataError(f"{path}:{number}: a line longer than {MAX_LINE_BYTES:,} characters; "
                    "refused (one sentence per line is expected)")


def _decode_lines(data: bytes, path: Path, before: int) -> list[str]:
    """The lines of ``data`` (complete lines, without the last one's end), numbered from
    ``before + 1`` in errors; each stripped of one ``\n`` and a Windows ``\r``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:  # find the line, and say where in it
        number = before + data.count(b"\n", 0, e.start) + 1
        line = data[data.rfind(b"\n", 0, e.start) + 1:].split(b"\n", 1)[0]
        _decode_line(line, path, number)
        raise AssertionError("unreachable") from e  # pragma: no cover
    lines = text.split("\n")
    if max(map(len, lines)) > MAX_LINE_BYTES:
        longest = max(range(len(lines)), key=lambda i: len(lines[i]))
        if len(lines[longest].removesuffix("\r")) > MAX_LINE_BYTES:
            _too_long(path, before + longest + 1)
    if "\r" in text:  # tolerate Windows line ends; a lone '\r' inside a line is text
        lines = [line[:-1] if line.endswith("\r") else line for line in lines]
    return lines


def _decode_line(raw: bytes, path: Path, number: int) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            f"{path}:{number}: invalid UTF-8 (byte {raw[e.start]:#04x} at column {e.start + 1})"
        ) from e
    # Tolerate Windows line ends; a lone '\r' inside a line is left as text.
    return text.removesuffix("\n").removesuffix("\r")


def _parse_tsv_line(line: str, path: Path, number: int) -> tuple[str, str]:
    fields = line.split("\t")
    if len(fields) == 1:
        what = "empty line" if not line.strip() else "no tab"
        raise DataError(f"{path}:{number}: {what}; expected 'source<TAB>target'")
    if len(fields) > 2:
        raise DataError(
            f"{path}:{number}: {len(fields) - 1} tabs; expected exactly one ('source<TAB>target')"
        )
    src, tgt = (field.strip() for field in fields)
    if not src:
        raise DataError(f"{path}:{number}: empty source side")
    if not tgt:
        raise DataError(f"{path}:{number}: empty target side")
    return src, tgt


def read_tsv(path: str | Path) -> ParallelCorpus:
    """Read ``source<TAB>target`` lines; ``.gz`` files are decompressed on the fly."""
    path = Path(path)
    src: list[str] = []
    tgt: list[str] = []
    for number, line in enumerate(_read_lines(path), start=1):
        s, t = _parse_tsv_line(line, path, number)
        src.append(s)
        tgt.append(t)
    return ParallelCorpus(src, tgt, _corpus_name(path))


def read_pair(src_path: str | Path, tgt_path: str | Path) -> ParallelCorpus:
    """Read two aligned text files, one sentence per line (gz or plain, by suffix)."""
    src_path, tgt_path = Path(src_path), Path(tgt_path)
    src_lines, tgt_lines = _read_lines(src_path), _read_lines(tgt_path)
    if len(src_lines) != len(tgt_lines):
        raise DataError(
            f"{src_path} has {len(src_lines)} lines but {tgt_path} has {len(tgt_lines)}; "
            "aligned files must have the same number of lines"
        )
    src = _stripped_nonempty(src_lines, src_path)
    tgt = _stripped_nonempty(tgt_lines, tgt_path)
    return ParallelCorpus(src, tgt, _corpus_name(src_path))


def _stripped_nonempty(lines: list[str], path: Path) -> list[str]:
    out = [line.strip() for line in lines]
    for number, text in enumerate(out, start=1):
        if not text:
            raise DataError(f"{path}:{number}: empty line; every line must hold a sentence")
    return out


# ----------------------------------------------------------------------------- writing


def _write_lines(path: Path, lines: Iterable[str]) -> None:
    """Write lines (gzipped if ``path`` ends in ``.gz``), built in memory: corpora are small.

    gzip output has no name and mtime 0 in its header, so it is byte-reproducible like the
    embedded corpus.
    """
    data = "".join(f"{line}\n" for line in lines).encode("utf-8")
    if _is_gzip(path):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def _check_writable(corpus: ParallelCorpus) -> None:
    """Refuse, before writing anything, what :func:`read_tsv` / :func:`read_pair` would reject."""
    if len(corpus) == 0:
        raise DataError(f"corpus {corpus.name!r} is empty; an empty file could not be read back")
    for index, pair in enumerate(corpus.pairs()):
        for side, text in zip(("source", "target"), pair):
            where = f"corpus {corpus.name!r}, pair {index + 1}"
            if not text.strip():
                raise DataError(f"{where}: empty {side} side")
            if "\t" in text or "\n" in text or "\r" in text:
                raise DataError(
                    f"{where}: {side} side contains a tab or line break and cannot be "
                    "written one sentence per line"
                )


def write_tsv(corpus: ParallelCorpus, path: str | Path) -> None:
    """Write ``source<TAB>target`` lines (gzipped if ``path`` ends in ``.gz``).

    Sides are written as they are; reading strips surrounding whitespace.
    """
    _check_writable(corpus)
    _write_lines(Path(path), (f"{s}\t{t}" for s, t in corpus.pairs()))


def write_pair(corpus: ParallelCorpus, src_path: str | Path, tgt_path: str | Path) -> None:
    """Write the two sides as aligned text files, one sentence per line."""
    _check_writable(corpus)
    _write_lines(Path(src_path), corpus.src)
    _write_lines(Path(tgt_path), corpus.tgt)


# ----------------------------------------------------------------------------- splits


def embedded_corpus_dir() -> Path:
    """The folder of the LibreOffice-help English-German corpus shipped with the package."""
    return Path(__file__).resolve().parent / _EMBEDDED_FOLDER


def load_split(data: str | Path, split: str) -> ParallelCorpus:
    """Load one split of a corpus named on the command line.

    ``data`` is ``"lohelp"`` (the embedded corpus: ``train``, ``valid`` or ``test``), a TSV
    file (used as is, whatever the split), a path with a ``{split}`` placeholder such as
    ``corpus/{split}.tsv.gz``, or a folder holding ``<split>.tsv``, ``<split>.tsv.gz``,
    ``<split>.<langs>.tsv`` or ``<split>.<langs>.tsv.gz``.
    """
    if str(data) == EMBEDDED_NAME:
        return _load_embedded(split)
    text = str(data)
    if "{split}" in text:
        return read_tsv(text.replace("{split}", split))
    path = Path(data)
    if path.is_dir():
        return read_tsv(_find_split_file(path, split))
    if not path.exists():
        raise DataError(f"{path}: no such file (expected {EMBEDDED_NAME!r} or a TSV corpus)")
    return read_tsv(path)


def _load_embedded(split: str) -> ParallelCorpus:
    if split not in EMBEDDED_SPLITS:
        raise DataError(
            f"{EMBEDDED_NAME}: unknown split {split!r}; choose one of {', '.join(EMBEDDED_SPLITS)}"
        )
    corpus = read_tsv(embedded_corpus_dir() / f"{split}.en-de.tsv.gz")
    return ParallelCorpus(corpus.src, corpus.tgt, f"{EMBEDDED_NAME}-{split}")


def _find_split_file(folder: Path, split: str) -> Path:
    patterns = (f"{split}.tsv", f"{split}.tsv.gz", f"{split}.*.tsv", f"{split}.*.tsv.gz")
    found = sorted({p for pattern in patterns for p in folder.glob(pattern) if p.is_file()})
    if len(found) != 1:
        what = "no" if not found else f"{len(found)} ({', '.join(p.name for p in found)})"
        raise DataError(
            f"{folder}: {what} files for split {split!r}; expected exactly one of "
            f"{', '.join(patterns)}"
        )
    return found[0]


def split_search(
    corpus: ParallelCorpus, ratio: tuple[float, float] = (2.5, 2.0), seed: int = 0
) -> tuple[ParallelCorpus, ParallelCorpus]:
    """Split a training corpus into search-train (weights) and search-valid (alphas) parts.

    The paper divides the training data 2.5:2.0 between the two bilevel streams. The shuffle
    uses :class:`random.Random` with ``seed``, so a split is the same on every platform.
    """
    a, b = ratio
    if a <= 0 or b <= 0:
        raise DataError(f"split ratio {ratio}: both parts must be positive")
    n = len(corpus)
    if n < 2:
        raise DataError(f"corpus {corpus.name!r}: {n} pair(s), need at least 2 to split")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    n_train = min(max(round(n * a / (a + b)), 1), n - 1)
    return (
        _subset(corpus, order[:n_train], f"{corpus.name}-search-train"),
        _subset(corpus, order[n_train:], f"{corpus.name}-search-valid"),
    )


def _subset(corpus: ParallelCorpus, indices: list[int], name: str) -> ParallelCorpus:
    return ParallelCorpus([corpus.src[i] for i in indices], [corpus.tgt[i] for i in indices], name)
