"""One joint sentencepiece BPE vocabulary for source and target, trained once and cached.

Source and target share one vocabulary (and so can share embeddings). The special ids are
fixed, pad=0, unk=1, bos=2, eos=3, so that batching, synthetic tasks and models agree on them
without asking a vocabulary.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import os
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import sentencepiece as spm

from nasframe.data.corpus import ParallelCorpus
from nasframe.errors import DataError
from nasframe.runtime import atomic_write_bytes

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

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3
#: Ids below this are special; ordinary tokens start here.
NUM_SPECIAL = 4

#: Bounds training time on big corpora. Sentences past this many are not read (no sampling,
#: so the result does not depend on sentencepiece's random generator).
INPUT_SENTENCE_SIZE = 2_000_000

# Part of the cache key: change it whenever the training options below change.
_TRAINER_REVISION = "bpe-identity-v1"


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
        """Load a ``.model`` file written by :meth:`train` or :meth:`save`."""
        path = Path(path)
        try:
            model = path.read_bytes()
        except FileNotFoundError as e:
            raise DataError(f"{path}: no such vocabulary file") from e
        except OSError as e:
            raise DataError(f"{path}: cannot read vocabulary ({e.strerror or e})") from e
        return cls(_processor_from_bytes(model, path), path)

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
    text = f"{corpus.digest()}:{vocab_size}:{_TRAINER_REVISION}:{INPUT_SENTENCE_SIZE}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def get_or_train_vocab(
    corpus: ParallelCorpus, cache_dir: str | Path, vocab_size: int = 8000
) -> Vocab:
    """The joint vocabulary of ``corpus``, trained on first use and loaded from ``cache_dir``
    afterwards (keyed by content and size, so renaming or moving a corpus keeps the cache)."""
    cache_dir = Path(cache_dir)
    prefix = cache_dir / f"spm-{vocab_size}-{vocab_cache_key(corpus, vocab_size)}"
    model_path = prefix.with_name(prefix.name + ".model")
    if model_path.exists():
        try:
            cached = Vocab.load(model_path)
        except DataError:
            cached = None  # a damaged cache entry (a truncated copy): train it again
        if cached is not None and len(cached) == vocab_size:
            return cached
    return Vocab.train(_interleaved_texts(corpus), prefix, vocab_size)
