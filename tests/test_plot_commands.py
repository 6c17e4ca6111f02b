"""``nasframe show RUN --plot`` and ``nasframe plot RUN...`` draw from real runs."""
from __future__ import annotations

from pathlib import Path

import pytest

from nasframe.cli import main
from nasframe.run.config import SearchConfig, apply_overrides
from nasframe.searching.api import search

pytest.importorskip("matplotlib")

SETTINGS = {"device": "cpu", "steps": 4, "checkpoint_every": 1, "log_every": 1,
            "data.source": "synthetic:reverse", "data.vocab_size": 12,
            "data.synthetic_pairs": 60, "data.synthetic_len": [2, 6], "data.max_tokens": 40,
            "model.d_model": 48, "model.embed_dim": 16}


def test_show_plots_alphas_and_plot_overlays_runs(tmp_path: Path, capsys) -> None:
    cfg = apply_overrides(SearchConfig.preset_config("tiny"), SETTINGS)
    for name, seed in (("a", 1), ("b", 2)):
        search("tiny", "darts-reversible", config=apply_overrides(cfg, {"seed": seed}),
               out=tmp_path / name)
    png = tmp_path / "alphas.png"
    assert main(["show", str(tmp_path / "a"), "--plot", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "encoder.layer1.split1" in capsys.readouterr().out
    curves = tmp_path / "curves.png"
    assert main(["plot", str(tmp_path / "a"), str(tmp_path / "b"), "--out", str(curves)]) == 0
    assert curves.stat().st_size > 1000
    assert main(["show", str(tmp_path / "a" / "arch.json"), "--plot", str(png)]) == 2
    assert "give the search run directory" in capsys.readouterr().err
