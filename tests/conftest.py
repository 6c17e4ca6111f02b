"""Suite-wide settings: one torch thread (small shapes run faster, and timings do not depend
on other processes) and a private vocabulary cache (never the user's ~/.cache)."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def vocab_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
