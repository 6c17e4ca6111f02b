"""Ground truth (issue 25): lookups on a hand-made table, the rank statistics and Random-K
against hand or brute-force values, and tabulating a 4-architecture space (resumable)."""
from __future__ import annotations

import itertools
import json
import math
import random
from pathlib import Path

import pytest

import nasframe as nf
from nasframe.base.errors import DataError
from nasframe.cli import main
from nasframe.compare.groundtruth import arch_digest
from nasframe.compare.ranking import (
    average_ranks,
    expected_best_of_k,
    kendall_tau,
    precision_at_k,
    spearman,
)

SPACE = nf.SearchSpace(
    name="four",
    encoder=nf.Sequential(["self_attention", ["ffn", "glu"]]),
    decoder=nf.Sequential(["self_attention", "cross_attention", ["ffn", "glu"]]),
)
ENC, DEC = "encoder.layer1.sub2", "decoder.layer1.sub3"


def _record(enc: str, dec: str, seed: int, loss: float, seconds: float = 10.0) -> dict:
    choices = {ENC: enc, DEC: dec}
    return {"digest": arch_digest(choices), "choices": choices, "seed": seed, "params": 1000,
            "valid_loss": loss, "bleu": None, "updates": 400, "seconds": seconds}


#: mean losses: ffn/ffn 2.0, ffn/glu 3.0, glu/ffn 3.0 (a tie), glu/glu 4.0
TABLE = [_record("ffn", "ffn", 1, 1.9), _record("ffn", "ffn", 2, 2.1),
         _record("ffn", "glu", 1, 3.0), _record("glu", "ffn", 1, 2.8),
         _record("glu", "ffn", 2, 3.2), _record("glu", "glu", 1, 4.0)]


def _arch(enc: str, dec: str) -> nf.Architecture:
    return nf.Architecture(space=SPACE, choices={ENC: enc, DEC: dec})


# ----------------------------------------------------------------------------- lookups

def test_lookup_rank_percentile_regret_best_and_sample() -> None:
    gt = nf.GroundTruth(TABLE)
    assert len(gt) == 4 and gt.seeds == [1, 2]
    best, tie, worst = _arch("ffn", "ffn"), _arch("glu", "ffn"), _arch("glu", "glu")
    assert gt.query(best) == pytest.approx(2.0)
    assert gt.query(best, seed=2) == pytest.approx(2.1)
    assert gt.query({DEC: "ffn", ENC: "glu"}) == pytest.approx(3.0)  # choices in any order
    assert gt.query(arch_digest(worst.choices)) == 4.0                 # or a digest
    assert [gt.rank(a) for a in (best, tie, _arch("ffn", "glu"), worst)] == [1, 2, 2, 4]
    assert gt.percentile(best) == 1.0
    assert gt.percentile(tie) == 0.75      # beats or ties 3 of 4 (itself, its tie, the worst)
    assert gt.percentile(worst) == 0.25
    assert gt.regret(best) == 0.0 and gt.regret(worst) == pytest.approx(2.0)
    assert gt.best().choices == best.choices
    assert gt.best(seed=1).choices == best.choices and gt.rank(tie, seed=1) == 2
    assert gt.regret(tie, seed=2) == pytest.approx(3.2 - 2.1)
    drawn = {gt.sample(random.Random(s)).digest for s in range(40)}
    assert drawn == {e.digest for e in gt}
    assert best in gt and {ENC: "zero", DEC: "ffn"} not in gt
    assert gt.best().architecture(SPACE) == best


def test_a_missing_architecture_or_seed_is_one_error() -> None:
    gt = nf.GroundTruth(TABLE[:3])
    with pytest.raises(DataError, match="not in the table"):
        gt.query(_arch("glu", "glu"))
    with pytest.raises(DataError, match="has no seed 2"):
        gt.query(_arch("ffn", "glu"), seed=2)
    with pytest.raises(DataError, match="choice nodes are not the table's"):
        gt.query({"encoder.layer1.split1": "ffn"})
    with pytest.raises(DataError, match="recorded twice"):
        nf.GroundTruth([TABLE[0], TABLE[0]])


def test_load_reads_json_lines_and_names_a_malformed_line(tmp_path: Path) -> None:
    path = tmp_path / "table.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in TABLE) + "\n")
    assert len(nf.GroundTruth.load(path)) == 4
    bad = [json.dumps(TABLE[0]), "{not json", json.dumps(TABLE[1])]
    path.write_text("\n".join(bad) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: not a JSON line"):
        nf.GroundTruth.load(path)
    edited = dict(TABLE[1], choices={ENC: "glu", DEC: "glu"})  # the digest no longer matches
    path.write_text(json.dumps(TABLE[0]) + "\n" + json.dumps(edited) + "\n")
    with pytest.raises(DataError, match=rf"{path}:2: digest .* does not match"):
        nf.GroundTruth.load(path)
    path.write_text(json.dumps(dict(TABLE[0], valid_loss="low")) + "\n")
    with pytest.raises(DataError, match=rf"{path}:1: valid_loss 'low' is not a number"):
        nf.GroundTruth.load(path)


# ----------------------------------------------------------------------------- statistics

def test_kendall_tau_b_spearman_and_precision_on_hand_computed_cases() -> None:
    assert kendall_tau([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(4 / 6)
    # ties: concordant 4, discordant 0, one tie in x and one in y: 4 / sqrt(5 * 5)
    assert kendall_tau([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(0.8)
    assert kendall_tau([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    assert average_ranks([10, 20, 20, 5]) == [2.0, 3.5, 3.5, 1.0]
    # average ranks (1, 2.5, 2.5, 4) and (1, 2, 3.5, 3.5): 3.75 / sqrt(4.5 * 4.5)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 3]) == pytest.approx(3.75 / 4.5)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    predicted, truth = [0.1, 0.2, 0.3, 0.4], [1, 3, 2, 2]
    assert precision_at_k(predicted, truth, 1) == 1.0
    assert precision_at_k(predicted, truth, 2) == 0.5       # index 1 (truth 3) is not top 2
    assert precision_at_k(predicted, truth, 3) == pytest.approx(2 / 3)
    assert precision_at_k(predicted, truth, 4) == 1.0


def test_correlation_of_a_strategys_scores_against_the_table() -> None:
    gt = nf.GroundTruth(TABLE)
    losses = {e.digest: e.loss for e in gt}
    perfect = gt.correlation(losses, k=2)
    assert perfect["kendall_tau"] == pytest.approx(1.0) and perfect["precision_at_k"] == 1.0
    reversed_ = gt.correlation({d: -v for d, v in losses.items()}, k=10)
    assert reversed_["kendall_tau"] == pytest.approx(-1.0) and reversed_["k"] == 4


def _brute_best_of_k(select: list[float], report: list[float], k: int) -> float:
    """The mean over every k-subset of the report of its best by select (a tie: the mean of
    the tied ones, each equally likely to be kept)."""
    total = []
    for subset in itertools.combinations(range(len(select)), k):
        low = min(select[i] for i in subset)
        tied = [report[i] for i in subset if select[i] == low]
        total.append(sum(tied) / len(tied))
    return sum(total) / len(total)


def test_random_k_is_the_exact_expectation_of_a_brute_force_enumeration() -> None:
    rng = random.Random(7)
    select = [round(rng.uniform(2, 3), 2) for _ in range(6)]
    select[4] = select[1]  # a tie in the selecting seed
    report = [s + rng.gauss(0, 0.1) for s in select]
    for k in range(1, 7):
        assert expected_best_of_k(select, report, k) == pytest.approx(
            _brute_best_of_k(select, report, k), abs=1e-12)
    # on a table: draws among the architectures with both seeds
    records = []
    for i, (s1, s2) in enumerate(zip(select, report)):
        choices = {"node": f"op{i}"}
        for seed, loss in ((1, s1), (2, s2)):
            records.append({"digest": arch_digest(choices), "choices": choices, "seed": seed,
                            "params": 1, "valid_loss": loss, "updates": 1, "seconds": 5.0})
    gt = nf.GroundTruth(records)
    best2 = min(report)
    pct = [sum(v >= x for v in report) / 6 for x in report]
    for k in range(1, 7):
        r = gt.random_k(k)
        assert r.pool == 6
        assert r.loss == pytest.approx(_brute_best_of_k(select, report, k))
        assert r.regret == pytest.approx(_brute_best_of_k(select, [v - best2 for v in report], k))
        assert r.percentile == pytest.approx(_brute_best_of_k(select, pct, k))
    assert gt.random_one_percentile(seed=2) == pytest.approx(7 / 12)  # (n + 1) / 2n, no ties
    assert gt.k_for_seconds(23) == 4 and gt.k_for_seconds(1) == 1 and gt.k_for_seconds(1e9) == 6
    with pytest.raises(DataError, match="different seeds"):
        gt.random_k(2, select_seed=2, report_seed=2)


# ----------------------------------------------------------------------------- tabulate

def _tabulate(tmp_path: Path, corpus_dir: Path, *extra: str) -> int:
    space = tmp_path / "four.json"
    if not space.exists():
        space.write_text(SPACE.to_json())
    return main(["tabulate", str(space), "--steps", "2", "--out", str(tmp_path / "t"),
                 "--data", str(corpus_dir), "--vocab-size", "200", "--no-progress", *extra])


def test_tabulating_four_architectures_takes_seconds_and_resumes(
        tmp_path: Path, corpus_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert _tabulate(tmp_path, corpus_dir) == 0
    table = tmp_path / "t" / "table.jsonl"
    lines = table.read_text().splitlines()
    gt = nf.GroundTruth.load(table)
    assert len(gt) == 4 and gt.seeds == [1]
    assert {e.updates[1] for e in gt} == {2}
    assert not (tmp_path / "t" / "runs").exists()  # each run deleted after its line
    # a kill after the first record: --resume trains only the three missing ones
    table.write_text(lines[0] + "\n" + lines[1][:20])  # and a torn second line
    assert _tabulate(tmp_path, corpus_dir, "--resume") == 0
    resumed = table.read_text().splitlines()
    assert resumed[0] == lines[0] and len(resumed) == 4
    again = nf.GroundTruth.load(table)
    for entry in gt:  # the same config, seed and data order: the same losses
        assert again.query(entry.digest) == pytest.approx(entry.loss, abs=1e-5)
    assert "1 already recorded" in capsys.readouterr().err
    # a second tabulation into the same folder without --resume is refused
    assert _tabulate(tmp_path, corpus_dir) == 2
    assert "already holds a tabulation" in capsys.readouterr().err
    # a malformed line (not the torn last one) is one error line, exit 2
    table.write_text(resumed[0] + "\n{oops\n" + "\n".join(resumed[1:]) + "\n")
    assert _tabulate(tmp_path, corpus_dir, "--resume") == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"error: {table}:2: not a JSON line"]
    # two workers: the same records as one process
    assert _tabulate(tmp_path, corpus_dir, "--jobs", "2", "--out", str(tmp_path / "j")) == 0
    parallel = nf.GroundTruth.load(tmp_path / "j" / "table.jsonl")
    assert {e.digest: e.loss for e in parallel} == pytest.approx({e.digest: e.loss for e in gt})


def test_a_space_above_the_limit_is_refused_with_its_size(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["tabulate", "tiny", "--steps", "1", "--out", str(tmp_path / "t"),
                 "--max-archs", "100"])
    assert code == 2
    assert "900 architectures, above the limit of 100" in capsys.readouterr().err
    assert not (tmp_path / "t").exists()
