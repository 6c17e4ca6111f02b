"""Issue 21, bounded inputs: corpora are read only from regular files with lines of bounded
length, the vocabulary cache checks what an entry was built from, and a model's size is
checked before anything is allocated (``nasframe.base.limits``, ``--max-params``)."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import random
import shutil
import threading
import time
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest
import torch

import nasframe as nf
import nasframe.engine.supernet as supernet_module
import nasframe.text.data.corpus as corpus_module
from nasframe.base import limits
from nasframe.base.errors import ConfigError, DataError
from nasframe.base.files import MAX_LINE_BYTES
from nasframe.cli import main
from nasframe.engine.model_size import model_parameters
from nasframe.engine.supernet import ModelConfig, Supernet, build_model, count_parameters
from nasframe.run.config import TrainConfig
from nasframe.text.data import DataSpec, ParallelCorpus, Vocab, get_or_train_vocab, load_split
from nasframe.text.data.corpus import read_pair, read_tsv
from nasframe.text.data.vocab import MAX_MODEL_BYTES
from nasframe.text.training import train


@pytest.fixture(autouse=True)
def default_limit(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Every test starts from the default limit and leaves it (and the environment) as it
    found them, whatever ``--max-params`` set."""
    monkeypatch.setenv(limits.ENV_MAX_PARAMS, "1")  # so that undoing restores the original
    monkeypatch.delenv(limits.ENV_MAX_PARAMS)
    limits.set_max_params(None)
    yield
    limits.set_max_params(None)


def _in_thread(fn: Any, timeout: float = 20.0) -> BaseException | None:
    """Run ``fn`` in a thread; fail if it has not returned in ``timeout`` seconds (a read
    that blocks on a FIFO would hang the suite)."""
    caught: list[BaseException] = []

    def run() -> None:
        try:
            fn()
        except BaseException as err:  # noqa: BLE001 - handed to the test
            caught.append(err)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout)
    assert not thread.is_alive(), f"still running after {timeout} s (blocked or unbounded)"
    return caught[0] if caught else None


# ----------------------------------------------------------------------------- corpora

@pytest.mark.skipif(not Path("/dev/zero").exists(), reason="needs /dev/zero")
def test_dev_zero_as_a_corpus_is_refused_before_reading() -> None:
    for read in (lambda: read_tsv("/dev/zero"), lambda: load_split("/dev/zero", "train"),
                 lambda: read_pair("/dev/zero", "/dev/zero")):
        err = _in_thread(read, timeout=10)
        assert isinstance(err, DataError), err
        assert str(err).startswith("/dev/zero: ") and "not a regular file" in str(err)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_as_a_corpus_is_refused_without_waiting_for_a_writer(tmp_path: Path) -> None:
    fifo = tmp_path / "train.tsv"
    os.mkfifo(fifo)
    err = _in_thread(lambda: read_tsv(fifo), timeout=10)
    assert isinstance(err, DataError) and f"{fifo}: " in str(err)
    assert "not a regular file" in str(err)


def test_a_folder_as_a_corpus_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="is a directory"):
        read_pair(tmp_path, tmp_path)


def test_a_linked_corpus_the_user_names_is_read(tmp_path: Path) -> None:
    real = tmp_path / "real.tsv"
    real.write_text("a\tb\nc\td\n")
    (tmp_path / "link.tsv").symlink_to(real)
    assert read_tsv(tmp_path / "link.tsv").src == ["a", "c"]


@pytest.mark.parametrize("gz", [False, True])
def test_an_over_long_line_is_refused_naming_file_and_line(tmp_path: Path, gz: bool) -> None:
    path = tmp_path / ("long.tsv.gz" if gz else "long.tsv")
    data = b"a\tb\nc\td\n" + b"x" * (MAX_LINE_BYTES + 1) + b"\tb\ne\tf\n"
    path.write_bytes(gzip.compress(data) if gz else data)
    with pytest.raises(DataError, match=rf"^{path}:3: a line longer than 1,048,576 "):
        read_tsv(path)


def test_a_line_at_the_limit_is_read_whatever_its_characters_and_line_end(
        tmp_path: Path) -> None:
    """The bound counts characters: a line of MAX_LINE_BYTES two-byte characters (2 MiB, more
    than one read) and a Windows line end is accepted; one character more is not."""
    side = "é" * (MAX_LINE_BYTES - 2)
    path = tmp_path / "edge.tsv"
    path.write_bytes(f"a\tb\r\n{side}\tb\r\n".encode())
    corpus = read_tsv(path)
    assert corpus.src == ["a", side] and corpus.tgt == ["b", "b"]
    path.write_bytes(f"a\tb\r\n{side}é\tb\r\n".encode())
    with pytest.raises(DataError, match=rf"{path}:2: a line longer"):
        read_tsv(path)


def test_an_endless_compressed_line_is_refused_in_bounded_memory(tmp_path: Path) -> None:
    """256 MiB of one line, 250 KiB compressed: refused after a few MiB of it, quickly."""
    path = tmp_path / "bomb.tsv.gz"
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # 31: a gzip header
    block = b"y" * (16 << 20)
    with path.open("wb") as f:
        f.write(packer.compress(b"a\tb\n"))
        for _ in range(16):
            f.write(packer.compress(block))
        f.write(packer.flush())
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(DataError, match=rf"{path}:2: a line longer"):
            read_tsv(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 48 << 20, f"peak {peak / 2**20:.0f} MiB"
    assert time.perf_counter() - start < 10


def _reference_lines(data: bytes) -> list[str]:
    """What the reader must give: lines split at '\\n' (a last line without one kept), one
    '\\r' before it dropped."""
    lines = data.decode("utf-8").split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64])
def test_chunked_reading_gives_the_same_lines_at_any_chunk_size(tmp_path: Path, chunk: int,
                                                                monkeypatch) -> None:
    """Chunk boundaries inside a line, a multi-byte character or a '\\r\\n' change nothing,
    and an invalid byte is reported on its own line and column whatever chunk holds it."""
    monkeypatch.setattr(corpus_module, "_CHUNK", chunk)
    rng = random.Random(chunk)
    alphabet = ["a", "b", " ", "é", "€", "𝄞", "\r", "\t"]
    rows = ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 12)))
            for _ in range(60)]
    for ending in ("\n", "\r\n"):
        for last in ("", "tail"):
            data = (ending.join(rows) + ending + last).encode()
            for gz in (False, True):
                path = tmp_path / ("c.txt.gz" if gz else "c.txt")
                path.write_bytes(gzip.compress(data) if gz else data)
                assert corpus_module._read_lines(path) == _reference_lines(data)
    bad = b"ok\nfine\nab\xffcd\nmore\n"
    path = tmp_path / "bad.txt"
    path.write_bytes(bad)
    with pytest.raises(DataError, match=rf"{path}:3: invalid UTF-8 \(byte 0xff at column 3\)"):
        corpus_module._read_lines(path)


# ----------------------------------------------------------------------------- vocabulary

@pytest.fixture(scope="module")
def two_corpora() -> tuple[ParallelCorpus, ParallelCorpus]:
    corpus = load_split("lohelp", "train")
    return (ParallelCorpus(corpus.src[:300], corpus.tgt[:300], "a"),
            ParallelCorpus(corpus.src[300:600], corpus.tgt[300:600], "b"))


@pytest.fixture
def counted_training(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = Vocab.train.__func__  # type: ignore[attr-defined]

    def counting(cls: type[Vocab], *args: Any, **kwargs: Any) -> Vocab:
        calls.append(1)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(Vocab, "train", classmethod(counting))
    return calls


def _entry(cache: Path) -> tuple[Path, Path]:
    (model,) = cache.glob("*.model")
    return model, model.with_suffix(".json")


def test_a_cache_entry_records_what_it_was_built_from(two_corpora, tmp_path: Path,
                                                      counted_training: list[int]) -> None:
    a, _ = two_corpora
    vocab = get_or_train_vocab(a, tmp_path, 200)
    model, record_path = _entry(tmp_path)
    record = json.loads(record_path.read_text())
    assert record["corpus"] == a.digest() and record["vocab_size"] == 200
    assert record["sha256"] == hashlib.sha256(model.read_bytes()).hexdigest()
    assert get_or_train_vocab(a, tmp_path, 200).encode("Open the dialog") == \
        vocab.encode("Open the dialog")
    assert counted_training == [1]  # the second call used the entry


@pytest.mark.parametrize("damage", ["model replaced", "model truncated", "record missing",
                                    "record of another corpus", "record not JSON"])
def test_a_wrong_or_edited_cache_entry_is_trained_again(two_corpora, tmp_path: Path,
                                                        counted_training: list[int],
                                                        damage: str) -> None:
    """An entry is used only if its record matches this corpus and the model's bytes match
    the record: an entry replaced by another valid model (of another corpus, same size) is
    rebuilt, not trusted."""
    a, b = two_corpora
    honest = get_or_train_vocab(a, tmp_path / "cache", 200)
    model, record_path = _entry(tmp_path / "cache")
    honest_bytes = model.read_bytes()
    get_or_train_vocab(b, tmp_path / "other", 200)
    foreign_model, foreign_record = _entry(tmp_path / "other")
    assert foreign_model.read_bytes() != honest_bytes
    if damage == "model replaced":
        shutil.copyfile(foreign_model, model)
    elif damage == "record missing":
        record_path.unlink()
    elif damage == "record of another corpus":  # the other entry's record, renamed
        record = json.loads(foreign_record.read_text())
        record["key"] = json.loads(record_path.read_text())["key"]
        record_path.write_text(json.dumps(record))
        shutil.copyfile(foreign_model, model)
    elif damage == "model truncated":
        model.write_bytes(honest_bytes[: len(honest_bytes) // 2])
    else:
        record_path.write_text("{")
    counted_training.clear()
    again = get_or_train_vocab(a, tmp_path / "cache", 200)
    assert counted_training == [1]
    pieces = [again.piece(i) for i in range(len(again))]
    assert pieces == [honest.piece(i) for i in range(len(honest))]
    assert model.read_bytes() == honest_bytes
    counted_training.clear()
    get_or_train_vocab(a, tmp_path / "cache", 200)
    assert counted_training == []  # the rebuilt entry is trusted again


def test_a_linked_cache_entry_is_not_followed(two_corpora, tmp_path: Path,
                                              counted_training: list[int]) -> None:
    """A link to a copy of the very same model (its record matching) is still not read:
    the entry is rebuilt as a regular file and the link's target is left alone."""
    a, _ = two_corpora
    cache = tmp_path / "cache"
    get_or_train_vocab(a, cache, 200)
    model, _ = _entry(cache)
    target = tmp_path / "elsewhere.model"
    shutil.copyfile(model, target)
    model.unlink()
    model.symlink_to(target)
    before = target.read_bytes()
    target_stat = target.stat()
    counted_training.clear()
    get_or_train_vocab(a, cache, 200)
    assert counted_training == [1]
    assert not model.is_symlink() and model.read_bytes() == before
    assert target.read_bytes() == before and target.stat().st_mtime_ns == target_stat.st_mtime_ns


def test_vocab_load_reads_only_a_bounded_regular_file(two_corpora, tmp_path: Path) -> None:
    a, _ = two_corpora
    vocab = get_or_train_vocab(a, tmp_path / "cache", 200)
    saved = vocab.save(tmp_path / "run" / "vocab.model")
    assert len(Vocab.load(saved)) == 200
    link = tmp_path / "run" / "linked.model"
    link.symlink_to(saved)
    with pytest.raises(DataError, match=r"linked\.model: is a symbolic link"):
        Vocab.load(link)
    if Path("/dev/zero").exists():
        with pytest.raises(DataError, match="not a regular file"):
            Vocab.load("/dev/zero")
    huge = tmp_path / "huge.model"
    with huge.open("wb") as f:  # sparse: no disk used, refused by its size before reading
        f.truncate(MAX_MODEL_BYTES + 1)
    with pytest.raises(DataError, match=r"huge\.model: .*above the 64 MiB"):
        Vocab.load(huge)


# ----------------------------------------------------------------------------- model size

def _transformer() -> nf.Architecture:
    return nf.Architecture(space=nf.spaces.get("transformer"), choices={})


@pytest.mark.parametrize(("field", "value"), [("blocks", 10**7), ("d_model", 199_998),
                                              ("embed_dim", 10**6), ("pad_id", -1)])
def test_absurd_model_fields_are_one_config_error(field: str, value: int) -> None:
    start = time.perf_counter()
    with pytest.raises(ConfigError, match=rf"^model\.{field}: "):
        ModelConfig(**{field: value})
    # model_copy does not validate: the build checks the fields again, before allocating
    config = ModelConfig(d_model=48).model_copy(update={field: value})
    with pytest.raises(ConfigError, match=rf"^model\.{field}: "):
        build_model(_transformer(), config, 100)
    assert time.perf_counter() - start < 2


def test_a_model_above_the_limit_is_refused_before_allocating() -> None:
    """d_model 65520 (within its field's bound) is 1.2e11 parameters, 480 GB of float32: one
    ConfigError, in milliseconds, without allocating it."""
    start = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        build_model(_transformer(), ModelConfig(d_model=65_520), 1000)
    assert str(caught.value) == ("model: 1.2e11 parameters, above the limit 2e9 "
                                 "(--max-params to raise it)")
    with pytest.raises(ConfigError, match="above the limit 2e9"):
        Supernet(nf.spaces.get("tiny"), ModelConfig(d_model=48, embed_dim=4096), 4_000_000)
    with pytest.raises(ConfigError, match=r"^vocab_size: 5000000 is outside"):
        build_model(_transformer(), ModelConfig(d_model=48), 5_000_000)
    assert time.perf_counter() - start < 5


def test_too_many_op_modules_are_refused_before_building_them() -> None:
    space = nf.spaces.get("tiny")
    wide = space.model_copy(update={"encoder": space.encoder.model_copy(
        update={"layers": 10**6})})
    start = time.perf_counter()
    with pytest.raises(ConfigError, match="op modules"):
        Supernet(wide, ModelConfig(d_model=48), 100)
    assert time.perf_counter() - start < 2


def test_the_limit_comes_from_set_max_params_then_the_environment(monkeypatch) -> None:
    arch, config = _transformer(), ModelConfig(d_model=48)
    size = count_parameters(build_model(arch, config, 100))
    monkeypatch.setenv(limits.ENV_MAX_PARAMS, str(size - 1))
    with pytest.raises(ConfigError, match=f"{size:,} parameters, above the limit {size - 1:,}"):
        build_model(arch, config, 100)
    limits.set_max_params(size)  # raises it again, over the environment
    build_model(arch, config, 100)
    limits.set_max_params(None)
    with pytest.raises(ConfigError):
        build_model(arch, config, 100)
    monkeypatch.setenv(limits.ENV_MAX_PARAMS, "lots")
    with pytest.raises(ConfigError, match="NASFRAME_MAX_PARAMS 'lots'"):
        build_model(arch, config, 100)
    assert limits.parse_max_params("2.5e9") == 2_500_000_000
    for bad in ("0", "-3", "1.5", "inf", "nan"):
        with pytest.raises(ConfigError, match="--max-params"):
            limits.parse_max_params(bad)


@pytest.mark.parametrize("name", nf.spaces.names())
def test_the_count_before_building_is_the_built_models(name: str) -> None:
    """``model_parameters`` (each distinct op counted once on the meta device) equals the
    parameters of the model then built, for the supernet and for an architecture."""
    space = nf.spaces.get(name)
    rng = random.Random(name)
    arch = nf.Architecture(space=space, choices={n: rng.choice(labels) for n, labels
                                                 in space.choice_nodes().items()})
    for config in (ModelConfig(d_model=48), ModelConfig(d_model=96, embed_dim=32, blocks=3,
                                                        split_norm="branch")):
        assert model_parameters(space, config, 300) == \
            count_parameters(Supernet(space, config, 300))
        assert model_parameters(space, config, 300, arch) == \
            count_parameters(build_model(arch, config, 300))


def test_the_check_changes_no_weight(monkeypatch) -> None:
    """Counting draws no random number: the weights are those of a build without it."""
    arch, config = _transformer(), ModelConfig(d_model=48, embed_dim=32)
    torch.manual_seed(7)
    checked = build_model(arch, config, 300).state_dict()
    after = torch.rand(3)
    monkeypatch.setattr(supernet_module, "check_model_size", lambda space, cfg, vocab, a: vocab)
    torch.manual_seed(7)
    unchecked = build_model(arch, config, 300).state_dict()
    assert torch.equal(after, torch.rand(3))
    assert checked.keys() == unchecked.keys()
    assert all(torch.equal(checked[k], unchecked[k]) for k in checked)


def test_the_check_costs_little_next_to_a_build() -> None:
    arch, config = _transformer(), ModelConfig(d_model=144, embed_dim=128)
    build_model(arch, config, 4000)
    start = time.perf_counter()
    for _ in range(5):
        model_parameters(arch.space, config, 4000, arch)
    counting = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(5):
        build_model(arch, config, 4000)
    building = time.perf_counter() - start
    assert counting < 0.25 * building, (counting, building)


# ----------------------------------------------------------------------------- the CLI

def _cli(capfd: pytest.CaptureFixture[str], *args: Any) -> tuple[int, str]:
    capfd.readouterr()
    code = main([str(a) for a in args])
    return code, capfd.readouterr().err


def _one_error(err: str) -> str:
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, err
    return errors[0]


def test_max_params_raises_and_lowers_the_bound(capfd, monkeypatch) -> None:
    small = ["space", "tiny", "--memory", "--d-model", "48", "--blocks", "1", "--tokens", "4",
             "--batch", "1"]
    code, err = _cli(capfd, *small, "--max-params", "1000")
    assert code == 2
    assert _one_error(err) == ("error: model: 86,118 parameters, above the limit 1,000 "
                               "(--max-params to raise it)")
    monkeypatch.setenv(limits.ENV_MAX_PARAMS, "1000")
    code, err = _cli(capfd, *small)
    assert code == 2 and "above the limit 1,000" in _one_error(err)
    code, err = _cli(capfd, *small, "--max-params", "1e9")
    assert code == 0, err
    assert os.environ[limits.ENV_MAX_PARAMS] == "1000000000"  # for the workers it spawns
    code, err = _cli(capfd, "space", "tiny", "--max-params", "many")
    assert code == 2 and _one_error(err) == \
        "error: --max-params 'many': expected a parameter count such as 2e9"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, corpus_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("limits") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        mp.delenv(limits.ENV_MAX_PARAMS, raising=False)
        config = TrainConfig(model=ModelConfig(d_model=48, embed_dim=32), vocab_size=200,
                             max_tokens=400, steps=2, lr=1e-3, warmup=2, checkpoint_every=2,
                             log_every=1, device="cpu", seed=3)
        train(_transformer(), out, config, DataSpec(data=str(corpus_dir)), progress=False)
    return out


@pytest.mark.parametrize(("field", "value", "words"), [
    ("blocks", 10**7, "model.blocks"), ("d_model", 199_998, "model.d_model"),
    ("d_model", 65_520, "1.2e11 parameters")])
def test_absurd_recorded_sizes_are_one_error_line(capfd, trained: Path, tmp_path: Path,
                                                  field: str, value: int, words: str) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained, run, symlinks=True)
    config = json.loads((run / "config.json").read_text())
    config["train"]["model"][field] = value
    (run / "config.json").write_text(json.dumps(config))
    (tmp_path / "in.txt").write_text("Open the dialog\n")
    start = time.perf_counter()
    code, err = _cli(capfd, "translate", "--model", run, "--input", tmp_path / "in.txt",
                     "--output", tmp_path / "out.txt")
    assert code == 2 and words in _one_error(err)
    assert time.perf_counter() - start < 20
    assert not (tmp_path / "out.txt").exists()
