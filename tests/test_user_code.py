"""The user's own op, space and two-file corpus, from the command line only: every step runs
in a fresh process, so each must import the user's file again from what the runs recorded."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nasframe.text.data import load_split

USER_OPS = '''
import nasframe as nf
from torch import nn


class GatedFFN(nn.Module):
    def __init__(self, dim, expansion):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(dim, 2 * expansion * dim), nn.GLU(),
                                  nn.Linear(expansion * dim, dim))

    def forward(self, x, ctx):
        return self.body(x)


@nf.register_op("gated_ffn_cli")
def gated_ffn(dim, *, causal, dropout, expansion=2):
    return nf.Residual(dim, GatedFFN(dim, expansion), dropout)


SPACE = nf.SearchSpace(
    name="my-space",
    encoder=nf.Stack(choices=["ffn", nf.op("gated_ffn_cli", expansion=3)]),
    decoder=nf.Stack(splits=3, choices=["ffn", "gated_ffn_cli", "cross_attention"],
                     fixed={3: "cross_attention"}),
)
'''


def nasframe(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "nasframe", *args], cwd=cwd, text=True,
                          capture_output=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.fixture
def user_dir(tmp_path: Path) -> Path:
    (tmp_path / "user_ops.py").write_text(USER_OPS, encoding="utf-8")
    corpus = load_split("lohelp", "train")
    (tmp_path / "corpus.en").write_text("\n".join(corpus.src[:400]) + "\n", encoding="utf-8")
    (tmp_path / "corpus.de").write_text("\n".join(corpus.tgt[:400]) + "\n", encoding="utf-8")
    return tmp_path


def test_a_custom_op_space_and_corpus_from_search_to_bleu(user_dir: Path) -> None:
    data = ["--src", "corpus.en", "--tgt", "corpus.de", "--vocab-size", "200"]
    done = nasframe("search", "--import", "user_ops.py", "--space", "user_ops.py:SPACE",
                    "--preset", "tiny", "--steps", "3", "--set", "data.max_tokens=400",
                    "--d-model", "48", *data, "--no-progress", "--out", "s", cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    info = json.loads((user_dir / "s" / "run.json").read_text())
    assert info["imports"][0]["copy"] == "imports/user_ops.py"
    assert (user_dir / "s" / "imports" / "user_ops.py").read_text() == USER_OPS

    # a fresh process imports nothing a run recorded: it says which --import to pass
    done = nasframe("derive", "s", cwd=user_dir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert f"pass --import {user_dir / 'user_ops.py'}" in done.stderr
    mine = ["--import", "user_ops.py"]
    done = nasframe("derive", "s", *mine, cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    done = nasframe("train", "--arch", "s/arch.json", "--out", "t", *data, "--steps", "3",
                    "--d-model", "48", "--max-tokens", "400", "--no-progress", *mine,
                    cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    (user_dir / "in.txt").write_text("Open the dialog.\nClick OK.\n")
    done = nasframe("translate", "--model", "t", "--input", "in.txt", "--beam", "2", *mine,
                    cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert len(done.stdout.split("\n")) == 3
    done = nasframe("evaluate", "--model", "t", "--split", "test", "--limit", "5",
                    "--beam", "1", "--no-progress", "--json", *mine, cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    scores = json.loads(done.stdout)
    assert scores["pairs_seen_in_training"] == 0 and scores["of"] == 20  # 5% of 400 held out
    done = nasframe("evaluate", "--model", "t", "--src", "corpus.en", "--tgt", "corpus.de",
                    "--no-progress", *mine, cwd=user_dir)
    assert done.returncode == 2 and "were in the training data" in done.stderr

    # the user's file changed: it no longer passes for the run's code; the run's copy does
    (user_dir / "user_ops.py").write_text(USER_OPS + "\n# changed\n")
    done = nasframe("translate", "--model", "t", "--input", "in.txt", *mine, cwd=user_dir)
    assert done.returncode == 2
    assert "pass --import t/imports/user_ops.py (the run's copy" in done.stderr
    done = nasframe("translate", "--model", "t", "--input", "in.txt", "--beam", "2",
                    "--import", "t/imports/user_ops.py", cwd=user_dir)
    assert done.returncode == 0, done.stderr[-2000:]
