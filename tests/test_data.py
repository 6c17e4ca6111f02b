"""Tests of nasframe.text.data: corpus reading and validation, vocabulary, batching, synthetic
tasks."""
from __future__ import annotations

import gzip
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from nasframe.base.errors import CheckpointError, ConfigError, DataError, NasframeError
from nasframe.text.data import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Batch,
    ParallelCorpus,
    SyntheticTask,
    TokenBatcher,
    Vocab,
    batch_cost,
    collate,
    embedded_corpus_dir,
    encode_corpus,
    get_or_train_vocab,
    load_split,
    read_pair,
    read_tsv,
    split_search,
    synthetic_pairs,
    write_pair,
    write_tsv,
)

SMALL = ParallelCorpus(
    src=["Hello world.", "Choose Tools - Options.", "The cat sat on the mat."],
    tgt=["Hallo Welt.", "Wählen Sie Extras – Optionen…", "Die Katze saß auf der Matte."],
    name="small",
)


def _write_bytes(path: Path, data: bytes) -> Path:
    if path.suffix == ".gz":
        data = gzip.compress(data)
    path.write_bytes(data)
    return path


def _pairs(corpus: ParallelCorpus) -> list[tuple[str, str]]:
    return list(corpus.pairs())


@pytest.fixture(scope="module")
def lohelp_train() -> ParallelCorpus:
    return load_split("lohelp", "train")


@pytest.fixture(scope="module")
def tiny_corpus(lohelp_train: ParallelCorpus) -> ParallelCorpus:
    n = 400
    return ParallelCorpus(lohelp_train.src[:n], lohelp_train.tgt[:n], "tiny")


@pytest.fixture(scope="module")
def tiny_vocab(tiny_corpus: ParallelCorpus, tmp_path_factory: pytest.TempPathFactory) -> Vocab:
    return get_or_train_vocab(tiny_corpus, tmp_path_factory.mktemp("vocab"), vocab_size=300)


# ----------------------------------------------------------------------------- corpus files


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_tsv_round_trip(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"c{suffix}"
    write_tsv(SMALL, path)
    back = read_tsv(path)
    assert _pairs(back) == _pairs(SMALL)
    assert back.name == "c"
    assert (path.read_bytes()[:2] == b"\x1f\x8b") == (suffix == ".tsv.gz")


@pytest.mark.parametrize("suffix", [".txt", ".gz"])
def test_pair_round_trip_equals_tsv(tmp_path: Path, suffix: str) -> None:
    write_pair(SMALL, tmp_path / f"c.en{suffix}", tmp_path / f"c.de{suffix}")
    write_tsv(SMALL, tmp_path / "c.tsv")
    from_pair = read_pair(tmp_path / f"c.en{suffix}", tmp_path / f"c.de{suffix}")
    assert _pairs(from_pair) == _pairs(read_tsv(tmp_path / "c.tsv")) == _pairs(SMALL)


def test_gzip_output_is_reproducible(tmp_path: Path) -> None:
    write_tsv(SMALL, tmp_path / "a.tsv.gz")
    write_tsv(SMALL, tmp_path / "b.tsv.gz")
    assert (tmp_path / "a.tsv.gz").read_bytes() == (tmp_path / "b.tsv.gz").read_bytes()


def test_windows_line_ends_and_surrounding_spaces_are_tolerated(tmp_path: Path) -> None:
    path = _write_bytes(tmp_path / "crlf.tsv", b"a b \tc\r\n d\te f\r\n")
    assert _pairs(read_tsv(path)) == [("a b", "c"), ("d", "e f")]


BAD_TSV = [
    (b"a\tb\nno tab here\n", 2, "no tab"),
    (b"a\tb\nc\td\nx\ty\tz\n", 3, "2 tabs"),
    (b"a\tb\n \tb\n", 2, "empty source side"),
    (b"a\tb\nc\t  \n", 2, "empty target side"),
    (b"a\tb\n\nc\td\n", 2, "empty line"),
    (b"a\tb\nc\td\xff\xfe\n", 2, "invalid UTF-8"),
]


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
@pytest.mark.parametrize(("content", "line", "what"), BAD_TSV)
def test_malformed_tsv_names_file_and_line(
    tmp_path: Path, suffix: str, content: bytes, line: int, what: str
) -> None:
    path = _write_bytes(tmp_path / f"bad{suffix}", content)
    with pytest.raises(DataError) as info:
        read_tsv(path)
    assert f"bad{suffix}:{line}:" in str(info.value)
    assert what in str(info.value)


@pytest.mark.parametrize("suffix", [".tsv", ".tsv.gz"])
def test_empty_file_is_an_error(tmp_path: Path, suffix: str) -> None:
    path = _write_bytes(tmp_path / f"empty{suffix}", b"")
    with pytest.raises(DataError, match=rf"empty{suffix}: file is empty"):
        read_tsv(path)


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nothere\.tsv: no such file"):
        read_tsv(tmp_path / "nothere.tsv")
    with pytest.raises(DataError, match=r"nothere\.de: no such file"):
        read_pair(_write_bytes(tmp_path / "ok.en", b"a\n"), tmp_path / "nothere.de")


def test_corrupt_gzip_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "plain.tsv.gz").write_bytes(b"a\tb\n")
    with pytest.raises(DataError, match=r"plain\.tsv\.gz: not a readable gzip file"):
        read_tsv(tmp_path / "plain.tsv.gz")


def test_unequal_line_counts_name_both_files_and_counts(tmp_path: Path) -> None:
    src = _write_bytes(tmp_path / "x.en", b"a\nb\nc\n")
    tgt = _write_bytes(tmp_path / "x.de.gz", b"a\nb\n")
    with pytest.raises(DataError) as info:
        read_pair(src, tgt)
    message = str(info.value)
    assert "x.en has 3 lines" in message and "x.de.gz has 2" in message


def test_pair_files_report_empty_line_and_bad_utf8(tmp_path: Path) -> None:
    src = _write_bytes(tmp_path / "y.en", b"a\nb\nc\n")
    with pytest.raises(DataError, match=r"y\.de:2: empty line"):
        read_pair(src, _write_bytes(tmp_path / "y.de", b"a\n  \nc\n"))
    with pytest.raises(DataError, match=r"z\.de\.gz:3: invalid UTF-8"):
        read_pair(src, _write_bytes(tmp_path / "z.de.gz", b"a\nb\n\xc3\x28\n"))


def test_data_error_is_a_user_error() -> None:
    assert issubclass(DataError, NasframeError) and issubclass(DataError, ValueError)


def test_write_refuses_what_cannot_be_read_back(tmp_path: Path) -> None:
    with_tab = ParallelCorpus(["a\tb"], ["c"], "tabbed")
    with pytest.raises(DataError, match="pair 1: source side contains a tab"):
        write_tsv(with_tab, tmp_path / "t.tsv")
    assert not (tmp_path / "t.tsv").exists()
    with pytest.raises(DataError, match="pair 2: empty target side"):
        blank = ParallelCorpus(["a", "b"], ["c", " "], "e")
        write_pair(blank, tmp_path / "e.en", tmp_path / "e.de")
    with pytest.raises(DataError, match="is empty"):
        write_tsv(ParallelCorpus([], [], "none"), tmp_path / "n.tsv")


def test_corpus_sides_must_align() -> None:
    with pytest.raises(DataError, match="2 source but 1 target"):
        ParallelCorpus(["a", "b"], ["c"], "bad")


# ----------------------------------------------------------------------------- splits


def test_embedded_corpus_ships_with_licence(lohelp_train: ParallelCorpus) -> None:
    folder = embedded_corpus_dir()
    assert "MPL-2.0" in (folder / "README.md").read_text(encoding="utf-8")
    assert len(lohelp_train) > 30_000
    assert lohelp_train.name == "lohelp-train"
    for split in ("valid", "test"):
        assert len(load_split("lohelp", split)) > 0


def test_load_split_by_folder_placeholder_or_file(tmp_path: Path) -> None:
    write_tsv(SMALL, tmp_path / "valid.en-de.tsv.gz")
    assert _pairs(load_split(tmp_path, "valid")) == _pairs(SMALL)
    assert _pairs(load_split(str(tmp_path / "{split}.en-de.tsv.gz"), "valid")) == _pairs(SMALL)
    assert _pairs(load_split(str(tmp_path / "valid.en-de.tsv.gz"), "train")) == _pairs(SMALL)
    with pytest.raises(DataError, match="no files for split 'test'"):
        load_split(tmp_path, "test")
    with pytest.raises(DataError, match="no such file"):
        load_split(str(tmp_path / "missing.tsv"), "train")
    with pytest.raises(DataError, match="unknown split 'dev'"):
        load_split("lohelp", "dev")


def test_split_search_ratio_and_determinism(tiny_corpus: ParallelCorpus) -> None:
    train, valid = split_search(tiny_corpus, seed=3)
    assert len(train) + len(valid) == len(tiny_corpus)
    assert abs(len(train) - len(tiny_corpus) * 2.5 / 4.5) <= 1
    assert Counter(_pairs(train) + _pairs(valid)) == Counter(_pairs(tiny_corpus))
    again = split_search(tiny_corpus, seed=3)
    assert _pairs(again[0]) == _pairs(train) and _pairs(again[1]) == _pairs(valid)
    assert _pairs(split_search(tiny_corpus, seed=4)[0]) != _pairs(train)
    with pytest.raises(DataError, match="at least 2"):
        split_search(ParallelCorpus(["a"], ["b"], "one"))


# ----------------------------------------------------------------------------- vocabulary


def test_vocab_special_ids_and_size(tiny_vocab: Vocab) -> None:
    assert len(tiny_vocab) == 300
    assert (tiny_vocab.pad_id, tiny_vocab.unk_id, tiny_vocab.bos_id, tiny_vocab.eos_id) == (
        PAD_ID, UNK_ID, BOS_ID, EOS_ID,
    ) == (0, 1, 2, 3)
    assert [tiny_vocab.piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]


def test_vocab_round_trip(tiny_vocab: Vocab, tiny_corpus: ParallelCorpus) -> None:
    for text in (tiny_corpus.src[0], tiny_corpus.tgt[0], "Wählen Sie Extras - Optionen…"):
        ids = tiny_vocab.encode(text)
        assert ids and all(4 <= i < len(tiny_vocab) for i in ids)
        assert tiny_vocab.decode(ids) == text
        assert tiny_vocab.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == text
    assert tiny_vocab.encode_many(tiny_corpus.src[:3]) == [
        tiny_vocab.encode(s) for s in tiny_corpus.src[:3]
    ]


def test_vocab_cache_does_not_retrain(
    tiny_corpus: ParallelCorpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    original = Vocab.train.__func__  # type: ignore[attr-defined]

    def counting_train(cls: type[Vocab], *args: Any, **kwargs: Any) -> Vocab:
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Vocab, "train", classmethod(counting_train))
    first = get_or_train_vocab(tiny_corpus, tmp_path, vocab_size=250)
    assert first.path is not None
    mtime = first.path.stat().st_mtime_ns
    renamed = ParallelCorpus(tiny_corpus.src, tiny_corpus.tgt, "other-name")
    second = get_or_train_vocab(renamed, tmp_path, vocab_size=250)
    assert calls == [1]
    assert second.path == first.path and first.path.stat().st_mtime_ns == mtime
    assert second.encode(tiny_corpus.src[1]) == first.encode(tiny_corpus.src[1])
    get_or_train_vocab(tiny_corpus, tmp_path, vocab_size=260)
    assert calls == [1, 1]


def test_vocab_training_is_deterministic(tiny_corpus: ParallelCorpus, tmp_path: Path) -> None:
    texts = tiny_corpus.src[:200] + tiny_corpus.tgt[:200]
    a = Vocab.train(texts, tmp_path / "a", vocab_size=200)
    b = Vocab.train(texts, tmp_path / "b", vocab_size=200)
    assert a.path is not None and b.path is not None
    assert a.path.read_bytes() == b.path.read_bytes()
    assert (tmp_path / "a.vocab").read_text(encoding="utf-8").startswith("<pad>\t")


def test_vocab_save_load(tiny_vocab: Vocab, tmp_path: Path) -> None:
    loaded = Vocab.load(tiny_vocab.save(tmp_path / "run" / "vocab.model"))
    assert loaded.encode("Hello world") == tiny_vocab.encode("Hello world")


def test_vocab_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"use vocab_size <= \d+"):
        Vocab.train(["a tiny corpus", "ein winziges Korpus"], tmp_path / "v", vocab_size=5000)
    with pytest.raises(DataError, match=r"missing\.model: no such vocabulary file"):
        Vocab.load(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a model")
    with pytest.raises(DataError, match=r"junk\.model: not a sentencepiece model"):
        Vocab.load(tmp_path / "junk.model")


# ----------------------------------------------------------------------------- batching


def test_collate_adds_bos_eos_and_pads() -> None:
    batch = collate([([5, 6, 7], [8]), ([9], [10, 11])])
    assert batch.src.tolist() == [[5, 6, 7], [9, 0, 0]]
    assert batch.tgt_in.tolist() == [[BOS_ID, 8, 0], [BOS_ID, 10, 11]]
    assert batch.tgt_out.tolist() == [[8, EOS_ID, 0], [10, 11, EOS_ID]]
    assert batch.src.dtype == torch.long and len(batch) == 2
    assert (batch.n_src_tokens, batch.n_tgt_tokens) == (4, 5)
    moved = batch.to("cpu")
    assert isinstance(moved, Batch) and torch.equal(moved.tgt_out, batch.tgt_out)


def test_encode_corpus_counts_dropped_pairs(tiny_vocab: Vocab, tiny_corpus: ParallelCorpus) -> None:
    lengths = [
        max(len(tiny_vocab.encode(s)), len(tiny_vocab.encode(t))) for s, t in tiny_corpus.pairs()
    ]
    max_len = sorted(lengths)[len(lengths) // 2]
    pairs, dropped = encode_corpus(tiny_corpus, tiny_vocab, max_len=max_len)
    assert dropped == sum(n > max_len for n in lengths) > 0
    assert len(pairs) + dropped == len(tiny_corpus)
    assert all(len(s) <= max_len and len(t) <= max_len for s, t in pairs)
    assert encode_corpus(tiny_corpus, tiny_vocab, max_len=10_000)[1] == 0


def _rows(batch: Batch) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """The pairs of a batch, read back from the padded tensors."""
    rows = []
    for src, tgt in zip(batch.src.tolist(), batch.tgt_out.tolist()):
        src = [i for i in src if i != PAD_ID]
        tgt = [i for i in tgt if i != PAD_ID]
        assert tgt[-1] == EOS_ID
        rows.append((tuple(src), tuple(tgt[:-1])))
    return rows


def _as_counter(pairs: list[tuple[list[int], list[int]]]) -> Counter:
    return Counter((tuple(s), tuple(t)) for s, t in pairs)


def _check_epoch(batches: list[Batch], pairs: list, max_tokens: int) -> None:
    seen: Counter = Counter()
    for batch in batches:
        padded = len(batch) * max(batch.src.shape[1], batch.tgt_in.shape[1])
        assert len(batch) == 1 or padded <= max_tokens
        seen.update(_rows(batch))
    assert seen == _as_counter(pairs)


def test_batches_respect_budget_and_cover_each_pair_once_per_epoch() -> None:
    pairs = synthetic_pairs("reverse", 300, vocab_size=50, min_len=1, max_len=30, seed=1)
    batcher = TokenBatcher(pairs, max_tokens=120, shuffle=True, seed=7)
    first = [next(batcher) for _ in range(len(batcher))]
    second = [next(batcher) for _ in range(len(batcher))]
    _check_epoch(first, pairs, 120)
    _check_epoch(second, pairs, 120)
    assert [b.src.shape for b in first] != [b.src.shape for b in second]  # reshuffled
    assert batcher.state_dict()["epoch"] == 1


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=60),
    max_tokens=st.integers(1, 200),
)
def test_packing_property(lengths: list[tuple[int, int]], max_tokens: int) -> None:
    pairs = [([4] * s, [5] * t) for s, t in lengths]
    batcher = TokenBatcher(pairs, max_tokens=max_tokens, shuffle=True, seed=0)
    indices = sorted(i for batch in batcher.batches for i in batch)
    assert indices == list(range(len(pairs)))
    for batch in batcher.batches:
        assert len(batch) == 1 or batch_cost([pairs[i] for i in batch]) <= max_tokens


def test_over_long_pair_gets_its_own_batch() -> None:
    pairs = [([4] * 50, [5] * 3), ([4] * 2, [5] * 2), ([4] * 2, [5] * 3)]
    batcher = TokenBatcher(pairs, max_tokens=10, shuffle=False, seed=0)
    sizes = sorted(len(b) for b in batcher.iter_epoch())
    assert sizes == [1, 2]


def test_resume_yields_identical_batches() -> None:
    pairs = synthetic_pairs("sort", 200, vocab_size=30, min_len=2, max_len=20, seed=2)
    reference = TokenBatcher(pairs, max_tokens=100, shuffle=True, seed=11)
    n = len(reference)
    for stop in (0, 5, n, n + 3):  # fresh, mid-epoch, exactly at the boundary, next epoch
        original = TokenBatcher(pairs, max_tokens=100, shuffle=True, seed=11)
        for _ in range(stop):
            next(original)
        state = original.state_dict()
        assert set(state) >= {"epoch", "index", "seed"}
        resumed = TokenBatcher(pairs, max_tokens=100, shuffle=True, seed=999)
        resumed.load_state_dict(state)
        for _ in range(n + 2):
            a, b = next(original), next(resumed)
            assert torch.equal(a.src, b.src) and torch.equal(a.tgt_in, b.tgt_in)


def test_resume_refuses_different_data() -> None:
    pairs = synthetic_pairs("copy", 100, vocab_size=30, min_len=2, max_len=20, seed=2)
    state = TokenBatcher(pairs, max_tokens=100, shuffle=True, seed=0).state_dict()
    with pytest.raises(CheckpointError, match="batches per epoch"):
        TokenBatcher(pairs, max_tokens=50, shuffle=True, seed=0).load_state_dict(state)


def test_iter_epoch_and_unshuffled_order() -> None:
    pairs = synthetic_pairs("copy", 120, vocab_size=30, min_len=1, max_len=25, seed=5)
    batcher = TokenBatcher(pairs, max_tokens=80, shuffle=False, seed=0)
    first = list(batcher.iter_epoch())
    assert len(first) == len(batcher)
    _check_epoch(first, pairs, 80)
    assert batcher.state_dict()["index"] == len(batcher)
    second = list(batcher.iter_epoch())
    assert [torch.equal(a.src, b.src) for a, b in zip(first, second)] == [True] * len(first)
    lengths = [b.src.shape[1] for b in first]
    assert lengths == sorted(lengths)


def test_ranks_get_disjoint_equal_shares() -> None:
    pairs = synthetic_pairs("copy", 150, vocab_size=30, min_len=1, max_len=25, seed=6)
    shards = [TokenBatcher(pairs, 60, shuffle=True, seed=1, rank=r, world_size=3) for r in range(3)]
    whole = TokenBatcher(pairs, 60, shuffle=True, seed=1)
    assert len({len(s) for s in shards}) == 1 and 3 * len(shards[0]) > len(whole) - 3
    seen: Counter = Counter()
    for shard in shards:
        for batch in shard.iter_epoch():
            seen.update(_rows(batch))
    assert not seen - _as_counter(pairs)  # no pair twice
    with pytest.raises(ConfigError):
        TokenBatcher(pairs, 60, shuffle=True, seed=1, rank=3, world_size=3)


def test_batcher_input_errors() -> None:
    with pytest.raises(DataError, match="no sentence pairs"):
        TokenBatcher([], max_tokens=100, shuffle=False, seed=0)
    with pytest.raises(ConfigError, match="max_tokens 0"):
        TokenBatcher([([4], [4])], max_tokens=0, shuffle=False, seed=0)


def test_real_text_batches(tiny_vocab: Vocab, tiny_corpus: ParallelCorpus) -> None:
    pairs, _ = encode_corpus(tiny_corpus, tiny_vocab)
    batcher = TokenBatcher(pairs, max_tokens=500, shuffle=True, seed=0)
    batch = next(batcher)
    row = batch.tgt_out[0][batch.tgt_out[0] != PAD_ID].tolist()
    assert row[-1] == EOS_ID
    assert tiny_vocab.decode(row) in tiny_corpus.tgt


# ----------------------------------------------------------------------------- synthetic


@pytest.mark.parametrize("task", ["copy", "reverse", "sort"])
def test_synthetic_tasks(task: SyntheticTask) -> None:
    shape = {"vocab_size": 20, "min_len": 3, "max_len": 9}
    pairs = synthetic_pairs(task, 50, **shape, seed=4)
    assert len(pairs) == 50
    expected = {"copy": lambda s: s, "reverse": lambda s: s[::-1], "sort": sorted}[task]
    for src, tgt in pairs:
        assert 3 <= len(src) <= 9 and all(4 <= i < 20 for i in src)
        assert tgt == expected(src)
    assert pairs == synthetic_pairs(task, 50, **shape, seed=4)
    assert pairs != synthetic_pairs(task, 50, **shape, seed=5)


def test_synthetic_argument_errors() -> None:
    with pytest.raises(ConfigError, match="synthetic task 'shuffle'"):
        unknown: Any = "shuffle"
        synthetic_pairs(unknown, 5, vocab_size=20, min_len=1, max_len=3, seed=0)
    with pytest.raises(ConfigError, match="vocab_size 4"):
        synthetic_pairs("copy", 5, vocab_size=4, min_len=1, max_len=3, seed=0)
    with pytest.raises(ConfigError, match="min_len <= max_len"):
        synthetic_pairs("copy", 5, vocab_size=20, min_len=4, max_len=3, seed=0)
