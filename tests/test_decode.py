"""Decoding: incremental state equals full recomputation, beam search bookkeeping, learning."""
from __future__ import annotations

import math
from pathlib import Path

import pytest
import sacrebleu
import torch

import nasframe as nf
from nasframe.dsl.ops import IncrementalState
from nasframe.run.config import TrainConfig
from nasframe.run.rundir import RunDir, RunKind
from nasframe.text.data import BOS_ID, EOS_ID, synthetic_pairs
from nasframe.text.decode import (
    DecodeOptions,
    beam_search,
    decoding_speed,
    greedy,
    length_penalty,
    translate_ids,
)
from nasframe.text.training import Trainer

VOCAB = 30


def batch(seed: int = 0, rows: int = 3, src_len: int = 7, tgt_len: int = 6):
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (rows, src_len), generator=g)
    src[1, src_len - 2:] = 0  # one padded source
    tgt = torch.randint(4, VOCAB, (rows, tgt_len), generator=g)
    return src, tgt


def float64_model(space: nf.SearchSpace, arch: nf.Architecture | None = None) -> nf.Supernet:
    torch.manual_seed(0)
    cfg = nf.ModelConfig(d_model=48, dropout=0.0)  # the search default: memory_saving=True
    model = nf.build_model(arch, cfg, VOCAB) if arch is not None else \
        nf.Supernet(space, cfg, VOCAB)
    model = model.double().eval()
    if arch is None:
        model.set_mode("weighted")  # every candidate op runs
    return model


def assert_incremental_matches(model: nf.Supernet, reorder: list[int] | None = None) -> None:
    """Step-by-step logits equal full recomputation, also after ``state.reorder``."""
    src, tgt = batch()
    with torch.no_grad():
        memory, mask = model.encode(src)
        full = model.decode(tgt, memory, mask)
        state = IncrementalState()
        steps = [model.decode(tgt[:, t:t + 1], memory, mask, state) for t in range(3)]
        torch.testing.assert_close(torch.cat(steps, 1), full[:, :3], rtol=0, atol=1e-9)
        if reorder is None:
            steps = [model.decode(tgt[:, t:t + 1], memory, mask, state) for t in range(3, 6)]
            torch.testing.assert_close(torch.cat(steps, 1), full[:, 3:], rtol=0, atol=1e-9)
            return
        # Beam search keeps some rows, twice or not at all, then continues them.
        index = torch.tensor(reorder)
        state.reorder(index)
        memory, mask = memory[index], mask[index]
        g = torch.Generator().manual_seed(1)
        new = torch.randint(4, VOCAB, (len(reorder), 3), generator=g)
        steps = [model.decode(new[:, t:t + 1], memory, mask, state) for t in range(3)]
        reference = model.decode(torch.cat([tgt[index, :3], new], 1), memory, mask)
        torch.testing.assert_close(torch.cat(steps, 1), reference[:, 3:], rtol=0, atol=1e-9)


SPACES = ["tiny", "dartsformer", "darts-transformer", "transformer"]


@pytest.mark.parametrize("name", SPACES)
@pytest.mark.parametrize("reorder", [None, [2, 0, 0, 1]], ids=["plain", "reordered"])
def test_incremental_decoding_of_a_supernet_equals_recomputation(name, reorder):
    assert_incremental_matches(float64_model(nf.spaces.get(name)), reorder)


def _ops_of(space: nf.SearchSpace) -> list[str]:
    return sorted({label for labels in space.choice_nodes().values() for label in labels})


def _arch_using(space: nf.SearchSpace, label: str) -> nf.Architecture:
    """Every node that offers ``label`` chooses it; the others choose self attention (so
    the decoder still sees the source) or their first candidate."""
    choices = {}
    for node, labels in space.choice_nodes().items():
        fallback = "self_attention" if "self_attention" in labels else labels[0]
        choices[node] = label if label in labels else fallback
    return nf.Architecture(space=space, choices=choices)


@pytest.mark.parametrize("space_name,label", [
    *[("dartsformer", op) for op in _ops_of(nf.spaces.get("dartsformer"))],
    *[("darts-transformer", op) for op in _ops_of(nf.spaces.get("darts-transformer"))],
])
def test_incremental_decoding_of_every_op_on_both_backbones(space_name, label):
    space = nf.spaces.get(space_name)
    assert_incremental_matches(float64_model(space, _arch_using(space, label)), [1, 1, 0, 2])


# ----------------------------------------------------------------------------- beam search

@pytest.fixture(scope="module")
def random_model() -> nf.Supernet:
    torch.manual_seed(3)
    space = nf.spaces.get("tiny")
    arch = _arch_using(space, "self_attention")
    return nf.build_model(arch, nf.ModelConfig(d_model=48, dropout=0.0), VOCAB).double().eval()


def sources(n: int = 6, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(4, VOCAB, (n, 6), generator=g)
    for row in range(n):
        src[row, 2 + row % 4:] = 0
    return src


def test_beam_one_equals_greedy(random_model):
    src = sources()
    beam = beam_search(random_model, src, DecodeOptions(beam=1))
    assert [h[0].tokens for h in beam] == greedy(random_model, src)


@pytest.mark.parametrize("beam", [1, 4])
def test_incremental_and_recomputed_decoding_agree(random_model, beam):
    src = sources(seed=1)
    fast = beam_search(random_model, src, DecodeOptions(beam=beam))
    slow = beam_search(random_model, src, DecodeOptions(beam=beam, incremental=False))
    assert [[h.tokens for h in hs] for hs in fast] == [[h.tokens for h in hs] for hs in slow]
    for a, b in zip(fast, slow):
        assert [h.score for h in a] == pytest.approx([h.score for h in b], abs=1e-9)


def test_hypotheses_carry_their_model_log_probability(random_model):
    """The bookkeeping across reorders is right: a hypothesis' summed log-probability is what
    the model gives its tokens (plus eos) under teacher forcing."""
    src = sources(seed=2)
    options = DecodeOptions(beam=3, alpha=0.7, style="gnmt")
    results = beam_search(random_model, src, options)
    with torch.no_grad():
        for row, hyps in enumerate(results):
            assert len(hyps) == 3
            assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
            for h in hyps:
                tgt_in = torch.tensor([[BOS_ID, *h.tokens]])
                tgt_out = torch.tensor([*h.tokens, EOS_ID])
                logits = random_model(src[row:row + 1], tgt_in)[0]
                lp = torch.log_softmax(logits, -1).gather(1, tgt_out[:, None]).sum()
                assert h.log_prob == pytest.approx(float(lp), abs=1e-9)
                assert h.score == pytest.approx(
                    h.log_prob / length_penalty(len(h.tokens) + 1, 0.7, "gnmt"))


def test_a_sentence_decodes_alike_alone_and_in_a_padded_batch(random_model):
    src = sources(seed=4)
    together = translate_ids(random_model, [row[row.ne(0)].tolist() for row in src],
                             DecodeOptions(beam=3))
    for row, expected in zip(src, together):
        alone = beam_search(random_model, row[row.ne(0)][None], DecodeOptions(beam=3))
        assert alone[0][0].tokens == expected


def test_output_length_is_limited(random_model):
    src = sources()
    options = DecodeOptions(beam=2, max_len_a=0.0, max_len_b=2)
    for hyps in beam_search(random_model, src, options):
        assert all(len(h.tokens) <= 2 for h in hyps)
    assert all(len(t) <= 2 for t in greedy(random_model, src, options))


def test_length_penalties():
    assert length_penalty(4, 1.0, "fairseq") == 4.0
    assert length_penalty(4, 0.0, "fairseq") == 1.0
    assert length_penalty(7, 1.0, "gnmt") == pytest.approx(2.0)
    assert length_penalty(1, 0.6, "gnmt") == pytest.approx(1.0)
    with pytest.raises(nf.ConfigError, match="beam"):
        DecodeOptions(beam=0)


def test_decoding_speed_reports_both_modes(random_model):
    result = decoding_speed(random_model, [row[row.ne(0)].tolist() for row in sources()],
                            beam=2)
    assert result["same_output"] == 1.0
    assert result["incremental_sentences_per_s"] > 0 and result["recompute_sentences_per_s"] > 0


# ----------------------------------------------------------------------------- it learns

def test_a_model_trained_on_a_copy_task_translates_it(tmp_path: Path):
    """Real learning: a few hundred updates of copying token sequences give BLEU > 90."""
    vocab = 16
    train_pairs = synthetic_pairs("copy", 2000, vocab, 3, 8, seed=0)
    test_pairs = synthetic_pairs("copy", 100, vocab, 3, 8, seed=1)
    config = TrainConfig(model=nf.ModelConfig(d_model=48, dropout=0.0), steps=400, lr=3e-3,
                         warmup=50, max_tokens=512, checkpoint_every=1000, log_every=100,
                         device="cpu")
    torch.manual_seed(0)
    arch = nf.Architecture(space=nf.spaces.get("transformer"), choices={})
    run = RunDir.create(tmp_path / "run", RunKind.TRAIN)
    trainer = Trainer(run, config, arch, vocab, train_pairs, test_pairs[:20],
                      progress=False)
    trainer.run()
    model = trainer.model.eval()
    refs = [" ".join(map(str, t)) for _, t in test_pairs]
    for beam in (1, 5):
        out = translate_ids(model, [s for s, _ in test_pairs], DecodeOptions(beam=beam))
        hyps = [" ".join(map(str, o)) for o in out]
        bleu = sacrebleu.corpus_bleu(hyps, [refs]).score
        assert bleu > 90, (beam, bleu)
    assert not math.isnan(trainer.best_valid or math.nan)
