"""BLEU and chrF of a trained run on a corpus split, with sacrebleu on detokenised text.

Scores are computed on detokenised output against the raw references (sacrebleu's own
tokenisation), so they are comparable across vocabularies and with published numbers.
"""
from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import sacrebleu
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from nasframe.base.errors import ConfigError, DataError
from nasframe.engine.supernet import Supernet
from nasframe.text.data import DataSpec, ParallelCorpus, Vocab, corpus_split, read_pair
from nasframe.text.decode import DecodeOptions, translate_ids
from nasframe.text.loading import LoadedRun, load_run

__all__ = ["evaluate_run", "score", "split_corpus", "translate", "translate_with_progress"]


def score(hypotheses: Sequence[str], references: Sequence[str]) -> dict[str, Any]:
    """Corpus BLEU and chrF (sacrebleu defaults) and their signatures."""
    if len(hypotheses) != len(references):
        raise DataError(f"{len(hypotheses)} hypotheses but {len(references)} references")
    bleu = sacrebleu.metrics.BLEU()
    chrf = sacrebleu.metrics.CHRF()
    b = bleu.corpus_score(list(hypotheses), [list(references)])
    c = chrf.corpus_score(list(hypotheses), [list(references)])
    return {"bleu": round(b.score, 2), "chrf": round(c.score, 2),
            "bleu_signature": str(bleu.get_signature()),
            "chrf_signature": str(chrf.get_signature())}


def translate_with_progress(model: Supernet, vocab: Vocab, sentences: Sequence[str],
                            options: DecodeOptions, console: Console | None = None,
                            progress: bool = True, max_source_len: int = 250,
                            description: str = "translate") -> list[str]:
    """Detokenised translations of ``sentences`` (cut at ``max_source_len`` subwords: the model
    never saw longer ones), with a progress bar over sentences."""
    model.eval()
    sources = [ids[:max_source_len] for ids in vocab.encode_many(list(sentences))]
    with Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                  TextColumn("sentences"), TimeRemainingColumn(),
                  console=console or Console(stderr=True), disable=not progress) as bar:
        task = bar.add_task(description, total=len(sources))
        ids = translate_ids(model, sources, options,
                            on_batch=lambda n: bar.update(task, advance=n))
    return [vocab.decode(o) for o in ids]


def translate(run_dir: str | Path, sentences: Sequence[str], *, beam: int = 5,
              checkpoint: str = "auto", device: str | None = None, progress: bool = False
              ) -> list[str]:
    """Translate ``sentences`` with the model of a training run (beam search, detokenised)."""
    run = load_run(run_dir, checkpoint, device)
    return translate_with_progress(run.model, run.vocab, sentences, DecodeOptions(beam=beam),
                                   progress=progress, max_source_len=run.config.max_len)


def split_corpus(run: LoadedRun, split: str, data: DataSpec | None = None) -> ParallelCorpus:
    """The ``split`` of the corpus given, or else of the corpus the run was trained on (a
    corpus without splits: its held-out part, as recorded)."""
    if data is None:
        return corpus_split(run.data, split)
    if data.src is not None or data.tgt is not None:
        if not (data.src and data.tgt):
            raise DataError("give both --src and --tgt (two aligned files), or --data")
        return read_pair(data.src, data.tgt)  # the files as given: the user chose them
    return corpus_split(data.model_copy(update={"holdout": run.data.holdout,
                                                "holdout_seed": run.data.holdout_seed}), split)


def check_unseen(run: LoadedRun, corpus: ParallelCorpus) -> int:
    """How many pairs of ``corpus`` the run was trained on; refuses when it is most of them
    (that would measure memory, not translation)."""
    trained_on = corpus_split(run.data, "train")
    seen = set(zip(trained_on.src, trained_on.tgt))
    overlap = sum(pair in seen for pair in corpus.pairs())
    if overlap > len(corpus) / 2:
        raise DataError(
            f"{overlap:,} of the {len(corpus):,} pairs of {corpus.name} were in the training "
            f"data of this run ({run.data.describe()}); scoring them measures memory, not "
            "translation. Evaluate the run's held-out split (--split test without --data), or "
            "give a corpus it was not trained on")
    return overlap


def evaluate_run(run_dir: str | Path, split: str = "test", data: DataSpec | None = None,
                 options: DecodeOptions | None = None, limit: int | None = None,
                 checkpoint: str = "auto", device: str | None = None,
                 progress: bool = True, console: Console | None = None) -> dict[str, Any]:
    """Translate a split with the run's model, score it, write ``eval_<split>.json`` and the
    hypotheses (``eval_<split>.hyp.txt``) into the run directory; return the scores.

    ``limit`` scores only the first ``limit`` pairs (recorded in the result).
    """
    if limit is not None and limit < 1:
        raise ConfigError(f"--limit {limit}: must be at least 1 (leave it out to score every "
                          "pair)")
    run_dir = Path(run_dir)
    run = load_run(run_dir, checkpoint, device)
    corpus = split_corpus(run, split, data)
    overlap = check_unseen(run, corpus)
    total = len(corpus)
    src, ref = corpus.src, corpus.tgt
    if limit is not None and limit < total:
        src, ref = src[:limit], ref[:limit]
    options = options or DecodeOptions()
    started = time.perf_counter()
    hyps = translate_with_progress(run.model, run.vocab, src, options, console, progress,
                                   run.config.max_len, f"translate {split}")
    seconds = time.perf_counter() - started
    result = {**score(hyps, ref), "split": split, "corpus": corpus.name,
              "sentences": len(src), "of": total, "beam": options.beam,
              "length_penalty": options.alpha, "length_penalty_style": options.style,
              "max_len": [options.max_len_a, options.max_len_b],
              "checkpoint": run.checkpoint.name, "translate_seconds": round(seconds, 2),
              "pairs_seen_in_training": overlap}
    run.run.write_text(f"eval_{split}.hyp.txt", "".join(h + "\n" for h in hyps))
    run.run.write_json(f"eval_{split}.json", result)
    return result
