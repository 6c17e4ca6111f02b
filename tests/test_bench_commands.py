"""``nasframe bench ...`` runs from the installed package at toy sizes and writes its JSON; a
hidden size that cannot split is one error line; the peak memory categories add up. No
timings are asserted (speed targets are the benchmarks' own paired ratios)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import nasframe as nf
from nasframe.base.errors import ConfigError
from nasframe.cli import main
from nasframe.engine.memory import parse_bytes, step_peak


def _bench(tmp_path: Path, *argv: str) -> dict:
    assert main(["bench", *argv, "--quick", "--threads", "1", "--out", str(tmp_path)]) == 0
    name = {"memory": "memory_vs_hidden"}.get(argv[0], argv[0])
    return json.loads((tmp_path / f"{name}.json").read_text())


def test_bench_memory_reports_the_peak_by_d_and_the_limit(tmp_path: Path) -> None:
    result = _bench(tmp_path, "memory", "--d", "48", "96", "--memory-limit", "6MiB")
    rows = result["rows"]
    assert result["meta"]["threads"] == 1 and "CPU" in result["meta"]["device"]
    assert [(r["d"], r["method"]) for r in rows] == [
        (48, "DARTS"), (48, "DARTSformer"), (96, "DARTS"), (96, "DARTSformer")]
    for r in rows:
        assert sum(r["categories (bytes)"].values()) == r["peak bytes"]
        assert r["peak MiB"] > r["kept MiB"] > 0
    darts, dartsformer = rows[0], rows[1]
    assert darts["peak MiB"] > dartsformer["peak MiB"]  # Fig. 1: reversible needs less
    assert darts["DARTS / this"] == 1.0 and dartsformer["DARTS / this"] > 1.0
    fits = result["meta"]["largest d within the limit"]
    assert fits["DARTS"]["measured"] is None and fits["DARTSformer"]["measured"] == 48
    assert fits["DARTS"]["estimated"] is None  # two sizes are too few for the fit


def test_bench_memory_takes_a_users_space(tmp_path: Path) -> None:
    rows = _bench(tmp_path, "memory", "--space", "tiny", "--space-option", "layers=1")["rows"]
    assert [r["method"] for r in rows] == ["tiny, reconstruction off", "tiny, reconstruction on"]
    spec = tmp_path / "transformer.json"
    spec.write_text(nf.spaces.get("transformer").to_json())
    rows = _bench(tmp_path, "memory", "--space", str(spec), "--d", "40")["rows"]
    assert [(r["d"], r["method"]) for r in rows] == [(40, "transformer, reconstruction off")]


def test_bench_memory_vocab_grows_the_peak_of_both(tmp_path: Path) -> None:
    """``--vocab``: the output layer's logits count in both peaks, reconstruction or not."""
    peaks = {}
    for vocab in ("100", "4000"):
        result = _bench(tmp_path / vocab, "memory", "--d", "48", "--vocab", vocab)
        assert result["meta"]["vocab"] == int(vocab)
        peaks[vocab] = {r["method"]: r["peak bytes"] for r in result["rows"]}
    # --quick: 2 x 8 tokens. The embedding's weights, gradients and Adam states grow by 4
    # floats per added word and width, and at least one (tokens x words) tensor is alive
    for method in ("DARTS", "DARTSformer"):
        assert peaks["4000"][method] - peaks["100"][method] >= (4 * 48 + 16) * 3900 * 4


def test_bench_memory_refuses_a_vocabulary_of_markers_only(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "memory", "--vocab", "4", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: --vocab must be above 4 (ids 0-3 are padding and markers), got 4"]
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("argv", [["memory", "--d", "72"], ["speed", "--d", "100"],
                                  ["decoding", "--d", "40"], ["reconstruction", "--d", "24"]])
def test_a_size_that_cannot_split_is_one_error_line(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", *argv, "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: --d {argv[2]}: not divisible by")
    assert "heads per split" in err[0] and "multiple of 48" in err[0]
    assert not list(tmp_path.iterdir())


def test_bench_decoding_compares_models_of_the_same_size(tmp_path: Path) -> None:
    result = _bench(tmp_path, "decoding", "--sentences", "4", "--beams", "1", "2")
    rows = result["rows"]
    assert result["meta"]["weights"] == "random (untrained)"
    assert [(r["model"], r["beam"]) for r in rows] == [
        ("reversible", 1), ("transformer", 1), ("reversible", 2), ("transformer", 2)]
    rev, tf = rows[0]["parameters"], rows[1]["parameters"]
    assert abs(rev - tf) / rev < 0.02
    assert all(r["sentences/s"] > 0 and 1 <= r["mean output tokens"] <= 8 for r in rows)


def test_bench_speed_and_reconstruction_write_their_results(tmp_path: Path) -> None:
    speed = _bench(tmp_path, "speed", "--d", "48", "--layers", "1", "--repeats", "1",
                   "--batch", "2", "6", "--depths", "1", "--precision-batch", "2", "5")
    assert [r["setting"] for r in speed["rows"]] == ["plain", "K=0", "K=1"]
    assert (tmp_path / "speed_precision.json").is_file()
    rec = _bench(tmp_path, "reconstruction", "--d", "48", "--depths", "1", "--repeats", "1",
                 "--batch", "2", "6", "--steps", "weights")
    assert [r["step"] for r in rec["rows"]] == ["weights"]


def test_bench_reconstruction_takes_a_search_preset_sizes(tmp_path: Path) -> None:
    """``--preset tiny``: the tiny search's d, E, vocabulary and space (2 layers per stack);
    the exactness column is still measured against plain autograd."""
    rec = _bench(tmp_path, "reconstruction", "--preset", "tiny", "--repeats", "1",
                 "--batch", "2", "6", "--steps", "weights")
    tiny = nf.SearchConfig.preset_config("tiny")
    meta, (row,) = rec["meta"], rec["rows"]
    assert (meta["vocabulary"], meta["embed_dim"]) == (tiny.data.vocab_size,
                                                       tiny.model.embed_dim)
    assert (row["d"], row["layers per stack"]) == (tiny.model.d_model, 2)
    assert row["max rel grad error"] < 1e-6


def test_bench_strategies_writes_its_results(tmp_path: Path) -> None:
    rows = _bench(tmp_path, "strategies", "--cases", "darts", "--steps", "2", "--repeats", "1",
                  "--data", "synthetic:reverse")["rows"]
    assert {r["strategy"] for r in rows} == {"darts", "darts-reversible, reconstruction off"}
    assert all(r["updates/s"] > 0 for r in rows)


@pytest.mark.parametrize("tracker", ["memtracker", "light"])
def test_peak_categories_add_up_and_count_what_a_step_holds(tracker: str) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    opt = torch.optim.Adam(model.parameters())
    x = torch.randn(64, 16)

    def step(between) -> None:  # noqa: ANN001
        opt.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        opt.step()

    step(lambda: None)
    peak = step_peak(step, model, [opt], torch.device("cpu"), tracker)
    weights = sum(p.numel() * 4 for p in model.parameters())
    assert sum(peak.categories.values()) == peak.total
    assert peak.categories["weights"] == weights
    assert peak.categories["optimiser states"] >= 2 * weights  # Adam's two moments
    # the step's own allocations (hidden activations 64x32 floats at least) are on top
    assert peak.total >= 3 * weights + 64 * 32 * 4


def test_parse_bytes() -> None:
    assert parse_bytes("2GiB") == 2 * 2**30 and parse_bytes("1.5 MB") == 1_500_000
    with pytest.raises(ConfigError, match="2 gigs"):
        parse_bytes("2 gigs")


def test_bench_ops_reports_kept_and_peak_over_the_input(tmp_path: Path) -> None:
    rows = _bench(tmp_path, "ops", "--ops", "dynamic_conv:kernel=31", "ffn",
                  "--repeats", "1")["rows"]
    assert [r["op"] for r in rows] == ["dynamic_conv:kernel=31", "ffn"]
    conv, ffn = rows
    # dynamic_conv keeps its input, the convolution output, the dropout mask and the norm's
    # input: no window and no (.., kernel) tensor; ffn keeps its 4x-wide hidden layer
    assert 3 <= conv["kept / input"] <= 4 < ffn["kept / input"]
    for r in rows:
        assert r["peak / input"] > r["kept / input"] > r["sublayer kept / input"] > 0
        assert r["fwd+bwd (ms)"] > 0


@pytest.mark.parametrize("op", ["dynamic_conv:kernl=3", "dynamic_conv:kernel=4", "nope"])
def test_bench_ops_refuses_a_bad_op_in_one_line(tmp_path: Path, op: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["bench", "ops", "--ops", op, "--quick", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --ops") and op in err[0]


@pytest.mark.parametrize("argv", [["ops", "--d", "0"], ["ops", "--batch", "0", "4"],
                                  ["reconstruction", "--repeats", "0"],
                                  ["strategies", "--steps", "-1"], ["memory", "--tokens", "0"]])
def test_a_count_below_one_is_refused_before_anything_runs(
        argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "results"
    with pytest.raises(SystemExit) as stop:
        main(["bench", *argv, "--out", str(out)])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith(f"error: argument {argv[1]}: must be at least 1")
    assert not out.exists()
