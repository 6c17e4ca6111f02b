"""One joint sentencepiece BPE vocabulary for source and target, trained once and cached.

Source and target share one vocabulary (and so can share embeddings). The special ids are
fixed, pad=0, unk=1, bos=2, eos=3, so that batching, synthetic tasks and models agree on them
without asking a vocabulary.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from nasframe.base.errors import DataError
from nasframe.base.files import (
    KiB,
    MiB,
    atomic_write_bytes,
    atomic_write_text,
    read_bytes,
    read_json,
)
from nasframe.base.limits import MAX_VOCAB_SIZE
from nasframe.text.data.corpus import ParallelCorpus

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "NUM_SPECIAL",
    "PAD_ID",
    "UNK_ID",
    "Vocab",
    "get_or_train_vocab",
    "vocab_cache_key",
]

PAD_ID = 0
"""Id of the padding token."""
UNK_ID = 1
"""Id of the unknown-piece token."""
BOS_ID = 2
"""Id of the beginning-of-sentence token."""
EOS_ID = 3
"""Id of the end-of-sentence token."""
NUM_SPECIAL = 4
"""Ids below this are special; ordinary tokens start here."""

#: Bounds training time on big corpora. Sentences past this many are not read (no sampling,
#: so the result does not depend on sentencepiece's random generator).
INPUT_SENTENCE_SIZE = 2_000_000

# Part of the cache key: change it whenever the training options below change.
_TRAINER_REVISION = "bpe-identity-v1"

#: The most a ``.model`` file may hold (a 32,000-piece model is under 1 MiB); a larger file,
#: like a link or a device, is refused before it is parsed.
MAX_MODEL_BYTES = 64 * MiB
#: What a cache entry's record (``spm-<size>-<key>.json``) says it was built from.
_ENTRY_FORMAT = "nasframe-vocab-cache-1"
_MAX_ENTRY_BYTES = 64 * KiB


class Vocab:
    """A loaded sentencepiece model with the fixed special ids."""

    def __init__(self, processor: spm.SentencePieceProcessor, path: Path | None = None) -> None:
        self._sp = processor
        self.path = path
        self._check_special_ids()

    def _check_special_ids(self) -> None:
        # A model trained elsewhere may number its specials differently; everything downstream
        # assumes these ids, so refuse it here rather than mistranslate later.
        got = (self._sp.pad_id(), self._sp.unk_id(), self._sp.bos_id(), self._sp.eos_id())
        if got != (PAD_ID, UNK_ID, BOS_ID, EOS_ID):
            raise DataError(
                f"{self.path or 'sentencepiece model'}: special ids (pad, unk, bos, eos) are "
                f"{got}, "
                f"expected {(PAD_ID, UNK_ID, BOS_ID, EOS_ID)}"
            )

    # ------------------------------------------------------------------ construction

    @classmethod
    def train(
        cls,
        texts: Iterable[str],
        model_prefix: str | Path,
        vocab_size: int = 8000,
        seed: int = 0,
        input_sentence_size: int = INPUT_SENTENCE_SIZE,
    ) -> Vocab:
        """Train a BPE model on ``texts`` and write ``<model_prefix>.model`` and ``.vocab``.

        Training reads sentences in order without shuffling, so the same texts always give
        the same model (byte for byte). ``seed`` only seeds sentencepiece's generator, which
        BPE without shuffling does not use; it is there so callers can pass their run seed.
        """
        if vocab_size <= NUM_SPECIAL:
            raise DataError(f"vocab_size {vocab_size}: must be larger than {NUM_SPECIAL}")
        if vocab_size > MAX_VOCAB_SIZE:
            raise DataError(f"vocab_size {vocab_size}: above the {MAX_VOCAB_SIZE:,} a "
                            "vocabulary may have")
        model = _train_model_bytes(iter(texts), vocab_size, seed, input_sentence_size)
        prefix = Path(model_prefix)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        path = prefix.with_name(prefix.name + ".model")
        atomic_write_bytes(model, path)
        vocab = cls(_processor_from_bytes(model, path), path)
        atomic_write_bytes(vocab._pieces_table().encode(), prefix.with_name(prefix.name + ".vocab"))
        return vocab

    @classmethod
    def load(cls, path: str | Path) -> Vocab:
        """Load a ``.model`` file written by :meth:`train` or :meth:`save`: a regular file of
        at most ``MAX_MODEL_BYTES``, never read through a link (a run's ``vocab.model`` may
        come from someone else)."""
        path = Path(path)
        return cls(_processor_from_bytes(_read_model(path), path), path)

    def save(self, path: str | Path) -> Path:
        """Write the model (e.g. into a run directory, so the run can be reproduced)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(self._sp.serialized_model_proto(), path)
        return path

    # ------------------------------------------------------------------ use

    def __len__(self) -> int:
        return self._sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def unk_id(self) -> int:
        return UNK_ID

    @property
    def bos_id(self) -> int:
        return BOS_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    def encode(self, text: str) -> list[int]:
        """Subword ids of ``text``, without bos or eos (batching adds those)."""
        return self._sp.encode(text, out_type=int)

    def encode_many(self, texts: Sequence[str]) -> list[list[int]]:
        """:meth:`encode` for many texts at once (sentencepiece runs them in C++)."""
        return self._sp.encode(list(texts), out_type=int)

    def decode(self, ids: Sequence[int]) -> str:
        """Detokenised text; pad, bos and eos are control pieces and decode to nothing."""
        return self._sp.decode([int(i) for i in ids])

    def piece(self, token_id: int) -> str:
        """The subword string of one id (for debugging and attention plots)."""
        return self._sp.id_to_piece(int(token_id))

    def _pieces_table(self) -> str:
        return "".join(
            f"{self._sp.id_to_piece(i)}\t{self._sp.get_score(i)}\n" for i in range(len(self))
        )

    def __repr__(self) -> str:
        return f"Vocab(size={len(self)}, path={str(self.path) if self.path else None!r})"


# ---------------------------------------------------------------------- sentencepiece glue


def _train_model_bytes(
    sentences: Iterator[str], vocab_size: int, seed: int, input_sentence_size: int
) -> bytes:
    spm.set_random_generator_seed(seed)
    model = io.BytesIO()
    try:
        with _silenced_stderr() as log:
            spm.SentencePieceTrainer.train(
                sentence_iterator=sentences,
                model_writer=model,
                logstream=log,
                vocab_size=vocab_size,
                model_type="bpe",
                character_coverage=1.0,
                # No NFKC: decode(encode(text)) must give the text back, or BLEU against raw
                # references loses points (NFKC turns the corpus's many "…" into "...").
                normalization_rule_name="identity",
                pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
                input_sentence_size=input_sentence_size,
                shuffle_input_sentence=False,
                num_threads=2,
                minloglevel=2,
            )
    except RuntimeError as e:
        raise _training_error(e, vocab_size) from e
    return model.getvalue()


def _silenced_stderr() -> contextlib.AbstractContextManager:
    """Where sentencepiece's trainer may write its log: /dev/null, by redirecting file
    descriptor 2, which needs a real stderr; in a notebook or under output capture (no
    ``fileno``) it gets None and logs only at its minimum level."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return contextlib.nullcontext(None)
    return open(os.devnull, "w")


def _training_error(error: RuntimeError, vocab_size: int) -> DataError:
    message = str(error)
    if "Vocabulary size too high" in message:
        # sentencepiece says e.g. "Please set it to a value <= 1103."
        limit = message.rsplit("<=", 1)[-1].strip(" .") if "<=" in message else "a smaller value"
        return DataError(
            f"vocab_size {vocab_size} is too large for this corpus; use vocab_size <= {limit} "
            "or train on more text"
        )
    return DataError(f"sentencepiece training failed: {message}")


def _processor_from_bytes(model: bytes, path: Path | None) -> spm.SentencePieceProcessor:
    processor = spm.SentencePieceProcessor()
    try:
        processor.LoadFromSerializedProto(model)
    except (RuntimeError, OSError) as e:
        raise DataError(f"{path or 'model'}: not a sentencepiece model ({e})") from e
    return processor


# ---------------------------------------------------------------------- cache


def _interleaved_texts(corpus: ParallelCorpus) -> Iterator[str]:
    # Interleaving keeps both languages represented if input_sentence_size cuts the input.
    for src, tgt in corpus.pairs():
        yield src
        yield tgt


def vocab_cache_key(corpus: ParallelCorpus, vocab_size: int) -> str:
    """What a cached model depends on: the corpus text, the size and the training options."""
    return _cache_key(corpus.digest(), vocab_size)


def get_or_train_vocab(
    corpus: ParallelCorpus, cache_dir: str | Path, vocab_size: int = 8000
) -> Vocab:
    """The joint vocabulary of ``corpus``, trained on first use and loaded from ``cache_dir``
    afterwards (keyed by content and size, so renaming or moving a corpus keeps the cache).

    A cache folder may be shared, so an entry is data to check, not to trust: beside
    ``spm-<size>-<key>.model`` a record (``.json``, written last) says what the model was
    built from (the cache key, the corpus digest, the size, the trainer's revision) and the
    SHA-256 of its bytes. An entry is used only if the record matches this corpus and these
    settings and the model's bytes (read once, from a regular file, never through a link)
    match the record; a missing, damaged, edited or linked entry is trained again and
    replaced (never written through)."""
    cache_dir = Path(cache_dir)
    digest = corpus.digest()
    key = _cache_key(digest, vocab_size)
    prefix = cache_dir / f"spm-{vocab_size}-{key}"
    model_path = prefix.with_name(prefix.name + ".model")
    record_path = prefix.with_name(prefix.name + ".json")
    expected = {"format": _ENTRY_FORMAT, "key": key, "corpus": digest,
                "vocab_size": vocab_size, "trainer": _TRAINER_REVISION,
                "input_sentence_size": INPUT_SENTENCE_SIZE}
    if model_path.exists() or model_path.is_symlink():
        cached = _cached_vocab(model_path, record_path, expected)
        if cached is not None:
            return cached
    vocab = Vocab.train(_interleaved_texts(corpus), prefix, vocab_size)
    # The bytes just written, from memory: re-reading the file would bless whatever another
    # user of the folder put there in between.
    model = vocab._sp.serialized_model_proto()
    record = {**expected, "sha256": hashlib.sha256(model).hexdigest()}
    atomic_write_text(json.dumps(record, indent=1) + "\n", record_path)
    return vocab


def _cache_key(digest: str, vocab_size: int) -> str:
    text = f"{digest}:{vocab_size}:{_TRAINER_REVISION}:{INPUT_SENTENCE_SIZE}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def _cached_vocab(model_path: Path, record_path: Path, expected: dict[str, object]
                  ) -> Vocab | None:
    """The entry at ``model_path`` if its record and bytes say it is the one expected; None
    (train again) otherwise."""
    try:
        record = read_json(record_path, _MAX_ENTRY_BYTES, "vocabulary cache record",
                           error=DataError)
        model = _read_model(model_path)
    except DataError:
        return None  # missing, a link, a device, too large, not JSON
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in expected.items()):
        return None  # another corpus's, other settings', or a record of another format
    if record.get("sha256") != hashlib.sha256(model).hexdigest():
        return None  # the model was edited or replaced (or half copied)
    try:
        vocab = Vocab(_processor_from_bytes(model, model_path), model_path)
    except DataError:
        return None
    return vocab if len(vocab) == expected["vocab_size"] else None


def _read_model(path: Path) -> bytes:
    return read_bytes(path, MAX_MODEL_BYTES, "vocabulary file", error=DataError)
