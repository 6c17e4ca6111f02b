"""Re-training: loss, schedule, exact resume, checkpoint averaging, budgets, user errors."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import nasframe as nf
from nasframe.base.runtime import inverse_sqrt, label_smoothed_loss
from nasframe.cli import main
from nasframe.run.config import TrainConfig
from nasframe.run.rundir import average_states, load_checkpoint
from nasframe.text.data import (
    DataSpec,
    corpus_split,
    load_data,
    load_split,
)
from nasframe.text.loading import load_run
from nasframe.text.training import train


def tiny_config(**changes) -> TrainConfig:
    base = dict(model=nf.ModelConfig(d_model=48, embed_dim=32, dropout=0.1), vocab_size=200,
                max_tokens=400, steps=6, lr=1e-3, warmup=4, checkpoint_every=2, log_every=1,
                device="cpu")
    return TrainConfig(**{**base, **changes})


def tiny_arch() -> nf.Architecture:
    space = nf.spaces.get("tiny")
    labels = ["self_attention", "conv:kernel=3", "ffn", "identity"]
    choices = {node: labels[i % len(labels)] for i, node in enumerate(space.choice_nodes())}
    return nf.Architecture(space=space, choices=choices)


# ----------------------------------------------------------------------------- pieces

def test_label_smoothed_loss_matches_torch_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=g)
    target = torch.randint(1, 11, (2, 5), generator=g)
    target[1, 3:] = 0
    loss, nll, n = label_smoothed_loss(logits, target, 0.1)
    assert n == 8
    ref = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0,
                          label_smoothing=0.1, reduction="sum")
    ref_nll = F.cross_entropy(logits.view(-1, 11), target.view(-1), ignore_index=0,
                              reduction="sum")
    assert float(loss) == pytest.approx(float(ref), rel=1e-6)
    assert float(nll) == pytest.approx(float(ref_nll), rel=1e-6)


def test_label_smoothed_loss_keeps_float64_and_raises_half_precision():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(3, 4, 9, generator=g, dtype=torch.float64)
    target = torch.randint(1, 9, (3, 4), generator=g)
    target[2, 1:] = 0
    loss, nll, n = label_smoothed_loss(logits, target, 0.1)
    assert loss.dtype == nll.dtype == torch.float64 and int(n) == 9
    ref = F.cross_entropy(logits.view(-1, 9), target.view(-1), ignore_index=0,
                          label_smoothing=0.1)
    assert abs(float(loss / n) - float(ref)) < 1e-12
    assert label_smoothed_loss(logits.bfloat16(), target, 0.1)[0].dtype == torch.float32


def test_inverse_sqrt_schedule():
    f = inverse_sqrt(100)  # f(k): the factor of update k + 1 (k updates done, as LambdaLR)
    assert f(0) == pytest.approx(0.01)
    assert f(49) == pytest.approx(0.5)
    assert f(99) == pytest.approx(1.0)
    assert f(399) == pytest.approx(0.5)


def test_averaging_averages():
    states = [{"w": torch.tensor(w), "count": torch.tensor(count)}
              for w, count in [([1.0, 2.0], 3), ([3.0, 6.0], 5)]]
    avg = average_states(states)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0]))
    assert avg["count"].dtype == torch.int64  # integer buffers are not averaged


def test_config_needs_an_end_and_names_bad_fields():
    with pytest.raises(nf.ConfigError, match="steps or minutes"):
        TrainConfig(steps=None, minutes=None)
    with pytest.raises(nf.ConfigError, match="train.lr"):
        TrainConfig(lr=-1.0)
    with pytest.raises(nf.ConfigError, match="unknown preset"):
        TrainConfig.preset_config("huge")


def test_a_single_file_holds_out_valid_and_test_pairs(small_tsv):
    spec = DataSpec(data=str(small_tsv))
    train_corpus, valid = load_data(spec)
    test = corpus_split(spec, "test")
    assert (len(train_corpus), len(valid), len(test)) == (270, 15, 15)
    whole = load_split(str(small_tsv), "train")
    assert sorted(train_corpus.src + valid.src + test.src) == sorted(whole.src)  # a partition
    assert corpus_split(spec, "test").src == test.src  # the same every time
    other = corpus_split(DataSpec(data=str(small_tsv), holdout_seed=1), "test")
    assert other.src != test.src
    with pytest.raises(nf.ConfigError, match="holdout"):
        DataSpec(data=str(small_tsv), holdout=(0.6, 0.5))


# ----------------------------------------------------------------------------- runs

def test_a_run_directory_holds_everything(tmp_path, small_tsv):
    out = tmp_path / "run"
    result = train(tiny_arch(), out, tiny_config(average_last=2),
                   DataSpec(data=str(small_tsv)), progress=False)
    assert result.steps == 6
    for name in ("config.json", "arch.json", "vocab.model", "metrics.jsonl"):
        assert (out / name).is_file(), name
    ckpts = {p.name for p in (out / "checkpoints").iterdir()}
    assert {"checkpoint_best.pt", "checkpoint_avg.pt", "checkpoint_4.pt",
            "checkpoint_6.pt"} <= ckpts
    avg = load_checkpoint(out / "checkpoints" / "checkpoint_avg.pt")["model"]
    a = load_checkpoint(out / "checkpoints" / "checkpoint_4.pt")["model"]
    b = load_checkpoint(out / "checkpoints" / "checkpoint_6.pt")["model"]
    key = "embed.tokens.weight"
    torch.testing.assert_close(avg[key], (a[key] + b[key]) / 2)
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").open()]
    assert events.count("train") == 6 and "valid" in events and events[-1] == "end"
    data = next(json.loads(line) for line in (out / "metrics.jsonl").open()
                if '"data"' in line)
    assert data["dropped_train"] == 0 and data["max_len"] == 250
    loaded = load_run(out)
    assert loaded.checkpoint.name == "checkpoint_avg.pt" and not loaded.model.training


def test_resume_is_bitwise_exact(tmp_path, small_tsv):
    data = DataSpec(data=str(small_tsv))
    straight = tmp_path / "straight"
    train(tiny_arch(), straight, tiny_config(steps=6), data, progress=False)
    killed = tmp_path / "killed"
    train(tiny_arch(), killed, tiny_config(steps=3), data, progress=False)
    result = train(None, killed, resume=True, overrides={"steps": 6}, progress=False)
    assert result.steps == 6
    a = load_checkpoint(straight / "checkpoints" / "checkpoint_6.pt")
    b = load_checkpoint(killed / "checkpoints" / "checkpoint_6.pt")
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key
    for sa, sb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        for key in sa:
            assert torch.equal(sa[key], sb[key])
    assert a["batcher"] == b["batcher"] and a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])

    def losses(run: Path) -> list[float]:
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").open())
                if r["event"] == "train"]
    assert losses(straight) == losses(killed)


def test_a_time_budget_ends_training(tmp_path, small_tsv):
    config = tiny_config(steps=None, minutes=1e-4, checkpoint_every=1000)
    result = train(tiny_arch(), tmp_path / "run", config, DataSpec(data=str(small_tsv)),
                   progress=False)
    assert result.steps >= 1
    assert json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1]
                      )["step"] == result.steps


def test_resume_may_change_only_how_long(tmp_path, small_tsv):
    out = tmp_path / "run"
    train(tiny_arch(), out, tiny_config(steps=2), DataSpec(data=str(small_tsv)), progress=False)
    with pytest.raises(nf.ConfigError, match="lr"):
        train(None, out, resume=True, overrides={"lr": 0.1}, progress=False)
    with pytest.raises(nf.CheckpointError, match="--resume"):
        train(tiny_arch(), out, tiny_config(), DataSpec(data=str(small_tsv)), progress=False)
    with pytest.raises(nf.CheckpointError, match="no such run directory"):
        train(None, tmp_path / "empty", resume=True, progress=False)


# ----------------------------------------------------------------------------- command line

def test_train_command_and_its_errors(tmp_path, small_tsv, capsys):
    arch = tmp_path / "arch.json"
    tiny_arch().save(arch)
    out = tmp_path / "run"
    args = ["train", "--arch", str(arch), "--out", str(out), "--data", str(small_tsv),
            "--steps", "2", "--vocab-size", "200", "--max-tokens", "400", "--no-progress"]
    assert main(args) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert main(args[:-3] + ["--steps", "3", "--resume", "--no-progress"]) == 0
    assert json.loads((out / "config.json").read_text())["train"]["steps"] == 3

    bad = tmp_path / "bad.tsv"
    bad.write_text("a sentence\tein Satz\nno tab here\n", encoding="utf-8")
    assert main(["train", "--arch", "transformer", "--out", str(tmp_path / "b"),
                 "--data", str(bad), "--steps", "1"]) == 2
    assert f"{bad}:2: no tab" in capsys.readouterr().err
    assert main(["train", "--arch", "dartsformer", "--out", str(tmp_path / "c")]) == 2
    assert "has choices" in capsys.readouterr().err
    assert main(["train", "--arch", "transformer", "--out", str(tmp_path / "d"),
                 "--src", str(small_tsv), "--steps", "1"]) == 2
    assert "--src and --tgt" in capsys.readouterr().err


def test_train_sizes_the_model_to_a_parameter_target(tmp_path, small_tsv, capsys):
    common = ["--data", str(small_tsv), "--steps", "1", "--vocab-size", "200", "--max-tokens",
              "400", "--no-progress", "--preset", "tiny"]
    for flags, target in ((["--params", "400k"], 400_000),
                          (["--match-params", "transformer", "--d-model", "96"], None)):
        out = tmp_path / flags[1]
        assert main(["train", "--arch", "transformer",
                     "--out", str(out), *common, *flags]) == 0
        data = next(json.loads(line) for line in (out / "metrics.jsonl").open()
                    if '"data"' in line)
        if target is not None:
            assert abs(data["parameters"] - target) <= 0.05 * target
        assert 0 < data["embedding_parameters"] < data["parameters"]
    assert "sized to" in capsys.readouterr().err
    assert main(["train", "--arch", "transformer", "--out", str(tmp_path / "x"), *common,
                 "--params", "1k"]) == 2


def test_a_training_step_takes_the_loss_of_the_whole_logits(tmp_path):
    """Re-training computes the output layer and its loss in chunks (``nasframe.text.output_loss``);
    the loss, NLL and count it logs and backpropagates are ``label_smoothed_loss``'s on the
    model's logits, and so are the gradients."""
    from nasframe.run.rundir import RunDir, RunKind
    from nasframe.text.data import TokenBatcher, synthetic_pairs
    from nasframe.text.training import Trainer

    pairs = synthetic_pairs("reverse", 40, 30, 3, 9, seed=0)
    config = tiny_config(model=nf.ModelConfig(d_model=48, embed_dim=32, dropout=0.0),
                         label_smoothing=0.1)
    trainer = Trainer(RunDir.create(tmp_path / "run", RunKind.TRAIN), config, tiny_arch(), 30,
                      pairs, pairs[:8], progress=False)
    batch = next(iter(TokenBatcher(pairs, 200, shuffle=False).iter_epoch()))
    model = trainer.model.double()
    terms = trainer._loss_terms(batch)
    ref = label_smoothed_loss(model(batch.src, batch.tgt_in), batch.tgt_out, 0.1, 0)
    for a, b in zip(terms, ref):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=0)
    params = [p for p in model.parameters() if p.requires_grad]
    for a, b in zip(torch.autograd.grad(terms[0], params), torch.autograd.grad(ref[0], params)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-13)
