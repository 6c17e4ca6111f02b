"""The output layer and loss in chunks of tokens against ``label_smoothed_loss`` on the whole
logits: values and gradients in float64 (several chunks, padding, a frozen weight, a weight
tied to the input, double backward), bf16 autocast to its rounding, and the memory it saves."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor

import nasframe as nf
from nasframe.base.runtime import label_smoothed_loss
from nasframe.engine.memory import allocated_peak_bytes
from nasframe.text.data.batching import Batch
from nasframe.text.output_loss import output_loss, output_loss_terms, seq2seq_loss


def _case(tokens: int = 29, vocab: int = 11, width: int = 6) -> tuple[Tensor, Tensor, Tensor]:
    torch.manual_seed(0)
    h = torch.randn(tokens, width, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(vocab, width, dtype=torch.float64, requires_grad=True)
    target = torch.randint(0, vocab, (tokens,))
    target[[2, 7]] = 0  # padding
    return h, weight, target


@pytest.mark.parametrize("chunk_elements", [1, 40, 10_000], ids=["row", "chunks", "whole"])
def test_value_and_gradients_equal_the_whole_logits(chunk_elements: int) -> None:
    h, weight, target = _case()
    ref = label_smoothed_loss(h @ weight.t(), target, 0.1, 0)[0]
    out = output_loss(h, weight, target, 0.1, 0, chunk_elements=chunk_elements)
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=0)
    for a, b in zip(torch.autograd.grad(out * 0.3, (h, weight)),
                    torch.autograd.grad(ref * 0.3, (h, weight))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_the_terms_re_training_logs_equal_the_whole_logits() -> None:
    """``output_loss_terms`` (re-training's loss): the summed loss, the summed NLL and the
    count of ``label_smoothed_loss``; the NLL carries no gradient, the loss the same one."""
    h, weight, target = _case()
    ref = label_smoothed_loss(h @ weight.t(), target, 0.1, 0)
    out = output_loss_terms(h, weight, target, 0.1, 0, chunk_elements=40)
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=1e-14, atol=0)
    assert out[0].requires_grad and not out[1].requires_grad and out[2].item() < 27
    for a, b in zip(torch.autograd.grad(out[0], (h, weight)),
                    torch.autograd.grad(ref[0], (h, weight))):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-14)


def test_a_frozen_weight_gets_no_gradient_and_no_graph_computes_none() -> None:
    h, weight, target = _case()
    weight.requires_grad_(False)
    (g_h,) = torch.autograd.grad(output_loss(h, weight, target, 0.1, 0, chunk_elements=40), (h,))
    ref = torch.autograd.grad(label_smoothed_loss(h @ weight.t(), target, 0.1, 0)[0], (h,))[0]
    torch.testing.assert_close(g_h, ref, rtol=0, atol=1e-14)
    with torch.no_grad():
        out = output_loss(h, weight, target, 0.1, 0)
    assert out.grad_fn is None
    torch.testing.assert_close(out, label_smoothed_loss(h @ weight.t(), target, 0.1, 0)[0])


def test_double_backward_with_a_weight_tied_to_the_input() -> None:
    """Exact second-order DARTS differentiates a gradient: with the output weight also the
    embedding (h depends on it), its gradient must count the output layer once."""
    _, weight, target = _case()
    ids = torch.randint(0, weight.size(0), target.shape)
    results = []
    for loss in (lambda h: label_smoothed_loss(h @ weight.t(), target, 0.1, 0)[0],
                 lambda h: output_loss(h, weight, target, 0.1, 0, chunk_elements=40)):
        h = torch.tanh(1.5 * weight[ids])
        (g,) = torch.autograd.grad(loss(h) / 7, (weight,), create_graph=True)
        results.append((g, *torch.autograd.grad((g ** 3).sum(), (weight,))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-13)


def test_bf16_autocast_agrees_to_its_rounding() -> None:
    h, weight, target = (t.detach().float() if t.is_floating_point() else t for t in _case())
    h.requires_grad_()
    weight.requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = label_smoothed_loss(h @ weight.t(), target, 0.1, 0)[0]
        out = output_loss(h, weight, target, 0.1, 0, chunk_elements=40)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=0)
    for a, b in zip(torch.autograd.grad(out, (h, weight)), torch.autograd.grad(ref, (h, weight))):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, rtol=0.02, atol=0.02 * float(b.abs().max()))


def test_the_search_loss_keeps_no_token_by_vocabulary_tensor(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """``seq2seq_loss`` (every strategy's) equals the loss on ``forward``'s logits, and a step
    through it peaks lower than one through the logits by two (tokens x vocabulary) tensors
    at least (the logits, their log-softmax, its gradient: all alive there at once)."""
    torch.manual_seed(0)
    vocab = 6000
    net = nf.Supernet(nf.spaces.get("tiny"), nf.ModelConfig(d_model=48, dropout=0.0),
                      vocab_size=vocab)
    g = torch.Generator().manual_seed(0)
    src, tgt = (torch.randint(4, vocab, (8, 16), generator=g) for _ in range(2))
    batch = Batch(src, tgt, tgt)
    params = list(net.parameters())

    def through_logits() -> Tensor:
        loss, _, n = label_smoothed_loss(net(src, tgt), tgt, 0.1, 0)
        return loss / n

    monkeypatch.setattr("nasframe.text.output_loss.CHUNK_ELEMENTS", 16 * vocab)  # 8 chunks
    torch.testing.assert_close(seq2seq_loss(net, batch), through_logits())
    peaks = {name: allocated_peak_bytes(lambda f=f: torch.autograd.grad(f(), params))
             for name, f in (("logits", through_logits),
                             ("chunks", lambda: seq2seq_loss(net, batch)))}
    assert peaks["logits"] - peaks["chunks"] >= 2 * 8 * 16 * vocab * 4
