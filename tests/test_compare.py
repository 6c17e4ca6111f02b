"""nasframe compare: rows x seeds at matched size, its three files, resume, bad TOML, plots."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

import nasframe.compare.cells as cells
from nasframe.base.errors import CheckpointError, ConfigError
from nasframe.cli import main
from nasframe.compare import CompareSpec, compare, load_spec
from nasframe.compare.plots import alpha_history, plot_alphas, plot_curves

ROWS = [{"name": "transformer", "architecture": "transformer"},
        {"name": "dartsformer", "strategy": "darts-reversible", "space": "tiny"},
        {"name": "random", "strategy": "random", "space": "tiny"}]



def spec(corpus_dir: Path, rows: list[dict] = ROWS, **settings) -> CompareSpec:
    return CompareSpec(settings={"data": str(corpus_dir), "vocab_size": 200, **settings},
                       rows=rows)


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, corpus_dir):
    mp = pytest.MonkeyPatch()
    mp.setenv("NASFRAME_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
    out = tmp_path_factory.mktemp("cmp") / "quick"
    result = compare(spec(corpus_dir, seeds=2), out, quick=True, progress=False)
    mp.undo()
    return result


def test_quick_compare_writes_three_files_with_matched_parameters(quick_run):
    out = quick_run.out
    for name in ("compare.json", "compare.md", "compare.png"):
        assert (out / name).is_file(), name
    data = json.loads((out / "compare.json").read_text())
    rows = data["rows"]
    assert [(r["name"], r["seed"]) for r in rows] == [
        (n, s) for s in (1, 2) for n in ("transformer", "dartsformer", "random")]
    target = data["params_target"]
    assert data["params_matched_to"] == "transformer"
    for r in rows:
        assert abs(r["params"] - target) <= 0.05 * target, r
        assert r["params_embedding"] + r["params_non_embedding"] == r["params"]
        assert r["train_updates"] == 4 and 0 <= r["bleu"] <= 100 and r["test_sentences"] == 8
        assert Path(r["run_dir"], "train", "eval_test.json").is_file()
    searched = [r for r in rows if r["strategy"] != "fixed"]
    assert all(r["search_updates"] == 4 and r["search_seconds"] > 0 for r in searched)
    darts = [r for r in rows if r["name"] == "dartsformer"]
    assert all(0 < r["alpha_entropy"] <= r["alpha_entropy_uniform"] + 1e-9 for r in darts)
    # a random row draws one architecture per seed: the seeds may differ, a seed does not
    assert all(r["alpha_entropy"] is None for r in rows if r["name"] == "random")
    table = (out / "compare.md").read_text()
    assert "| dartsformer | darts-reversible | 2 |" in table and " ± " in table
    summary = {e["name"]: e for e in data["summary"]}
    assert summary["random"]["n"] == 2 and summary["random"]["bleu"]["std"] is not None


def test_compare_refuses_a_used_folder_without_resume(quick_run, corpus_dir):
    with pytest.raises(CheckpointError, match="--resume"):
        compare(spec(corpus_dir, seeds=2), quick_run.out, quick=True, progress=False)
    with pytest.raises(CheckpointError, match="other rows or settings"):
        compare(spec(corpus_dir, seeds=3), quick_run.out, quick=True, resume=True,
                progress=False)


def test_resume_skips_finished_cells_and_continues_the_interrupted_one(tmp_path, corpus_dir,
                                                                       monkeypatch):
    rows = [ROWS[0], {**ROWS[1], "train": {"checkpoint_every": 2}}]
    calls = {"search": 0, "train": 0}
    real_search, real_train = cells.search, cells.train

    def counting_search(*args, **kwargs):
        calls["search"] += 1
        return real_search(*args, **kwargs)

    def dying_train(*args, **kwargs):
        calls["train"] += 1
        if calls["train"] == 2:  # the second cell: killed after its checkpoint at update 2
            import nasframe.text.training as tr

            real_step = tr.Trainer.train_step

            def step(self, batch):
                if self.step == 3:
                    raise KeyboardInterrupt
                return real_step(self, batch)

            monkeypatch.setattr(tr.Trainer, "train_step", step)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(cells, "search", counting_search)
    monkeypatch.setattr(cells, "train", dying_train)
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        compare(spec(corpus_dir, rows), out, quick=True, progress=False)
    first = json.loads((out / "transformer" / "seed1" / "result.json").read_text())
    first_session = json.loads((out / "compare.json").read_text())["seconds_total"]
    assert first_session > 0
    assert not (out / "dartsformer" / "seed1" / "result.json").exists()
    assert (out / "dartsformer" / "seed1" / "search.json").is_file()
    assert calls == {"search": 1, "train": 2}

    monkeypatch.undo()
    monkeypatch.setattr(cells, "search", counting_search)
    monkeypatch.setattr(cells, "train", dying_train)
    calls["train"] = 10  # no more kills
    result = compare(spec(corpus_dir, rows), out, quick=True, resume=True, progress=False)
    assert calls == {"search": 1, "train": 11}  # no new search; one train, resumed
    assert result.records[0] == first
    resumed = result.records[1]
    assert resumed["train_resumed"] is True and resumed["train_updates"] == 4
    data = json.loads((out / "compare.json").read_text())
    assert data["rows"][1]["name"] == "dartsformer"
    # the wall time of both sessions, not only the resumed one
    assert data["seconds_total"] == pytest.approx(first_session + data["seconds"], abs=0.11)


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "t.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize(("text", "where"), [
    ('[compare]\ntrain_steps = -1\n[[rows]]\nname = "t"\narchitecture = "transformer"\n',
     "compare.train_steps"),
    ('[compare]\nparams = "lots"\n[[rows]]\nname = "t"\narchitecture = "transformer"\n',
     "params"),
    ('[[rows]]\nname = "t"\narchitecture = "transformer"\n[[rows]]\nname = "s"\n'
     'strategy = "no-such"\n', "rows[1].strategy"),
    ('[[rows]]\nname = "t"\nstrategy = "spos"\narchitecture = "transformer"\n', "rows[0]"),
    ('[[rows]]\nname = "t"\narchitecture = "dartsformer"\n', "rows[0].architecture"),
    ('[[rows]]\nname = "t"\nstrategy = "spos"\nspace_options = { colour = 1 }\n',
     "rows[0].space"),
    ('[[rows]]\nname = "t"\narchitecture = "transformer"\nlayers = 2\n', "rows[0].layers"),
    ('[compare\n', "t.toml"),
    ('[compair]\n', "compair"),
])
def test_bad_toml_names_file_and_field(tmp_path, text, where):
    path = _toml(tmp_path, text)
    with pytest.raises(ConfigError) as err:
        load_spec(path)
    assert str(path) in str(err.value) and where in str(err.value)


def test_committed_tables_load():
    root = Path(__file__).resolve().parents[1] / "benchmarks"
    for name in ("table1.toml", "table2.toml", "table5.toml"):
        loaded = load_spec(root / name)
        assert len(loaded.rows) >= 3 and loaded.baseline() is not None, name


def test_cli_compare_quick_and_errors(tmp_path, corpus_dir, capfd):
    assert main(["compare", "--out", str(tmp_path / "x")]) == 2
    assert "--config" in capfd.readouterr().err
    code = main(["compare", "--baselines", "transformer", "--strategies", "random", "--space",
                 "tiny", "--quick", "--data", str(corpus_dir), "--vocab-size", "200", "--out",
                 str(tmp_path / "c"), "--no-progress"])
    assert code == 0
    assert "| random | random | 1 |" in capfd.readouterr().out


def test_plot_alphas_and_curves(quick_run, tmp_path):
    search_dir = quick_run.out / "dartsformer" / "seed1" / "search"
    steps, history = alpha_history(search_dir)
    assert steps == [4] and "encoder.layer1.split1" in history
    png = plot_alphas(search_dir, tmp_path / "alphas.png")
    assert png.stat().st_size > 1000
    runs = [quick_run.out / n / "seed1" / "train" for n in ("transformer", "dartsformer")]
    png = plot_curves([*runs, search_dir], tmp_path / "curves.png")
    assert png.stat().st_size > 1000
    with pytest.raises(CheckpointError, match="no probabilities"):
        plot_alphas(quick_run.out / "random" / "seed1" / "search", tmp_path / "r.png")


def test_an_interrupted_search_resumes_from_its_checkpoint(tmp_path, corpus_dir, monkeypatch):
    rows = [ROWS[0], {**ROWS[1], "search": {"checkpoint_every": 2}}]
    real_search = cells.search
    seen = []

    def killed_after_checkpoint_2(*args, **kwargs):
        seen.append(kwargs.get("resume"))
        real_search(*args, **{**kwargs, "steps": 2})
        raise KeyboardInterrupt

    monkeypatch.setattr(cells, "search", killed_after_checkpoint_2)
    out = tmp_path / "cmp"
    with pytest.raises(KeyboardInterrupt):
        compare(spec(corpus_dir, rows), out, quick=True, progress=False)
    search_dir = out / "dartsformer" / "seed1" / "search"
    assert (search_dir / "checkpoints" / "checkpoint_2.pt").is_file()

    monkeypatch.setattr(cells, "search", lambda *a, **k: seen.append(k["resume"]) or
                        real_search(*a, **k))
    result = compare(spec(corpus_dir, rows), out, quick=True, resume=True, progress=False)
    assert seen == [False, True]
    record = result.records[1]
    assert record["search_resumed"] is True and record["search_updates"] == 4
    lines = (out / "dartsformer" / "seed1" / "search" / "metrics.jsonl").read_text().splitlines()
    assert json.loads(lines[-1])["step"] == 4


def test_jobs_run_cells_in_processes_with_the_same_results(quick_run, tmp_path, corpus_dir,
                                                           monkeypatch):
    """--jobs 2: each cell in its own process gives the records of the sequential run."""
    monkeypatch.setenv("NASFRAME_CACHE", str(quick_run.out.parent.parent / "cache"))
    result = compare(spec(corpus_dir, seeds=1), tmp_path / "jobs", quick=True, progress=False,
                     jobs=2)
    sequential = {r["name"]: r for r in quick_run.records if r["seed"] == 1}
    assert [r["name"] for r in result.records] == ["transformer", "dartsformer", "random"]
    for r in result.records:
        s = sequential[r["name"]]
        for key in ("params", "valid_loss", "bleu", "chrf", "choices", "search_updates"):
            assert r[key] == s[key], (r["name"], key)
        assert (Path(r["run_dir"]) / "console.log").stat().st_size > 0
    data = json.loads((tmp_path / "jobs" / "compare.json").read_text())
    assert data["jobs"] == 2 and data["threads"] == 1
    with pytest.raises(ConfigError, match="--jobs 0"):
        compare(spec(corpus_dir), tmp_path / "zero", quick=True, progress=False, jobs=0)


def test_contrasts_pair_by_seed_against_the_baseline_and_random(quick_run):
    from nasframe.compare.report import contrasts

    recs = [{"name": n, "strategy": st, "seed": s, "bleu": b} for n, st, s, b in [
        ("T", "fixed", 1, 10.0), ("T", "fixed", 2, 12.0), ("D", "darts", 1, 9.0),
        ("D", "darts", 2, 13.0), ("R", "random", 1, 8.0), ("R", "random", 2, 12.5),
        ("D", "darts", 3, 1.0)]]  # seed 3 has no reference: left out of the pairs
    (vs_t, vs_r) = contrasts(recs, ["T", "D", "R"])
    assert (vs_t["reference"], vs_t["seeds"], vs_t["diff"]["mean"]) == ("T", [1, 2], 0.0)
    assert vs_t["diff"]["std"] == pytest.approx(2 ** 0.5) and not vs_t["above_in_every_seed"]
    assert (vs_r["reference"], vs_r["diff"]["mean"]) == ("random", pytest.approx(0.75))
    assert vs_r["above_in_every_seed"]
    data = json.loads((quick_run.out / "compare.json").read_text())
    assert {(c["row"], c["reference"]) for c in data["contrasts"]} == {
        ("dartsformer", "transformer"), ("dartsformer", "random")}
    assert "| dartsformer | random | 2 |" in (quick_run.out / "compare.md").read_text()


@pytest.mark.parametrize("name,d,params", [("handpicked.json", 240, 1_151_440),
                                           ("handpicked_dec2.json", 224, 1_149_392)])
def test_committed_handpicked_architectures_have_the_reported_sizes(name, d, params):
    """README, 'why the reversible family lost': these sizes sit beside the Transformer's."""
    from nasframe.dsl.architecture import Architecture
    from nasframe.engine.supernet import build_model, count_parameters
    from nasframe.run.config import TrainConfig

    arch = Architecture.load(Path(__file__).parents[1] / "benchmarks" / "archs" / name)
    model = TrainConfig.preset_config("tiny").model.model_copy(update={"d_model": d})
    assert count_parameters(build_model(arch, model, 4000)) == params
