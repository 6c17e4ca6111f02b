"""Suite-wide settings: one torch thread (small shapes run faster, and timings do not depend
on other processes) and a private vocabulary cache (never the user's ~/.cache); and the small
corpora many tests train on."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from nasframe.text.data import ParallelCorpus, load_split, write_tsv


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def vocab_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="session")
def small_tsv(tmp_path_factory) -> Path:
    """300 real sentence pairs in one TSV: enough for a 200-piece vocabulary, quick to train
    on (a corpus without splits: 5% valid and 5% test are held out)."""
    corpus = load_split("lohelp", "train")
    path = tmp_path_factory.mktemp("data") / "small.tsv"
    write_tsv(ParallelCorpus(corpus.src[:300], corpus.tgt[:300], "small"), path)
    return path


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A folder with small train / valid / test splits of the embedded corpus."""
    folder = tmp_path_factory.mktemp("corpus")
    for split, n in (("train", 300), ("valid", 20), ("test", 20)):
        c = load_split("lohelp", split)
        write_tsv(ParallelCorpus(c.src[:n], c.tgt[:n], split), folder / f"{split}.tsv")
    return folder
