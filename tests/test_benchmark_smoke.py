"""The engine benchmarks run end to end at toy sizes and record what they must (no timings are
asserted: speed targets are read from the benchmarks' own paired ratios)."""
from __future__ import annotations

import json
from pathlib import Path

from nasframe.benchmarks import reconstruction, speed


def test_speed_and_reconstruction_benchmarks_write_their_results(tmp_path: Path) -> None:
    common = ["--out", str(tmp_path), "--threads", "1"]
    speed.main(["--d", "48", "--layers", "1", "--repeats", "1", "--batch", "2", "6",
                "--depths", "1", "--precision-d", "48", "--precision-batch", "2", "5", *common])
    reconstruction.main(["--d", "48", "--depths", "1", "--repeats", "2", "--batch", "2", "6",
                         *common])
    memory = json.loads((tmp_path / "speed.json").read_text())
    assert memory["meta"]["threads"] == 1
    assert [r["setting"] for r in memory["rows"]] == ["plain", "K=0", "K=1"]
    kept = [r["kept MiB"] for r in memory["rows"]]
    assert kept[1] < kept[2] and abs(kept[2] - kept[0]) < 1e-3  # K=L keeps what plain keeps
    prec = json.loads((tmp_path / "speed_precision.json").read_text())["rows"]
    assert {r["precision"] for r in prec} >= {"float32", "bf16 autocast"}
    assert all(r["finite"] for r in prec)
    f32 = next(r for r in prec if r["precision"] == "float32")
    assert f32["rel grad error (norm)"] < 1e-4
    rec = json.loads((tmp_path / "reconstruction.json").read_text())
    assert {r["step"] for r in rec["rows"]} == {"weights", "alpha"}
    assert all(r["pairs"] == 2 and r["ratio min"] <= r["ratio median"] <= r["ratio max"]
               for r in rec["rows"])
