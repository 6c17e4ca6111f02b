"""The output layer and the label-smoothed loss, in chunks of tokens.

Written plainly, ``label_smoothed_loss(h @ W.T, target)`` keeps (tokens, vocabulary) tensors for
backward and builds more in it: the logits, their log-softmax and its gradient, 62.5 MiB each
at 2048 tokens and 8,000 words. With backprop through reconstruction the body keeps almost
nothing, so these make up half of a DARTSformer search step's peak. Here the loss is computed
a chunk of tokens at a time, and, when a graph is wanted, so are its gradients to ``h`` and
``W`` (the loss is a sum, so backward only scales them by the incoming gradient): no
(tokens, vocabulary) tensor outlives its chunk, and nothing is recomputed.

Its value and gradients are those of ``nasframe.base.runtime.label_smoothed_loss`` on the same
logits, to rounding (the sums run in another order); tested in float64.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from nasframe.base.runtime import compute_dtype, smoothed_terms

if TYPE_CHECKING:
    from nasframe.engine.supernet import Supernet
    from nasframe.text.data import Batch

__all__ = ["CHUNK_ELEMENTS", "output_loss", "output_loss_terms", "seq2seq_loss",
           "seq2seq_loss_terms"]

CHUNK_ELEMENTS = 1 << 22
"""A chunk's logits hold at most this many elements (16 MiB in float32), or one row."""


def _dtypes(h: Tensor) -> tuple[torch.dtype, torch.dtype]:
    """(the products' dtype, the softmax's): under autocast the autocast dtype and float32;
    else ``h``'s, with float16 and bfloat16 raised to float32 for the softmax."""
    compute = compute_dtype(h)
    acc = torch.float32 if compute in (torch.float16, torch.bfloat16) else compute
    return compute, acc


def output_loss(h: Tensor, weight: Tensor, target: Tensor, smoothing: float, pad_id: int,
                chunk_elements: int | None = None) -> Tensor:
    """Summed label-smoothed cross entropy of the logits ``h @ weight.T`` over the targets that
    are not ``pad_id``: ``h`` (tokens, E), ``weight`` (vocabulary, E), ``target`` (tokens,);
    ``chunk_elements``: the most logits a chunk holds (None: ``CHUNK_ELEMENTS``)."""
    return output_loss_terms(h, weight, target, smoothing, pad_id, chunk_elements)[0]


def output_loss_terms(h: Tensor, weight: Tensor, target: Tensor, smoothing: float, pad_id: int,
                      chunk_elements: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """What ``nasframe.base.runtime.label_smoothed_loss`` returns for the logits ``h @ weight.T``,
    computed as ``output_loss`` computes the loss: the summed loss, the summed NLL (no
    gradient) and the count of non-pad targets (a 0-d integer tensor)."""
    rows = max(1, (chunk_elements or CHUNK_ELEMENTS) // weight.size(0))
    loss, nll = _OutputLoss.apply(h, weight, target, smoothing, pad_id, rows)
    return loss, nll, target.ne(pad_id).sum()


class _OutputLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor, weight: Tensor, target: Tensor, smoothing: float,
                pad_id: int, rows: int) -> Tensor:
        compute, acc = _dtypes(h)
        want_h, want_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]  # False without a graph
        vocab = weight.size(0)
        with torch.autocast(h.device.type, enabled=False):
            w = weight.to(compute)
            total = torch.zeros((), dtype=acc, device=h.device)
            nll_total = torch.zeros((), dtype=acc, device=h.device)
            g_h = torch.empty_like(h) if want_h else None
            g_w = torch.zeros(weight.shape, dtype=acc, device=h.device) if want_w else None
            for r0 in range(0, h.size(0), rows):
                h_c, t_c = h[r0:r0 + rows].to(compute), target[r0:r0 + rows]
                lprobs = torch.log_softmax((h_c @ w.t()).to(acc), dim=-1)
                loss, nll, keep = smoothed_terms(lprobs, t_c, smoothing, pad_id)
                total += loss.sum()
                nll_total += nll.sum()
                if g_h is None and g_w is None:
                    continue
                # d loss / d logits = softmax - (1 - s) onehot - s / V, zero at padding
                g = lprobs.exp_()
                g.sub_(smoothing / vocab)
                g.scatter_add_(1, t_c.unsqueeze(1), g.new_full((t_c.size(0), 1), smoothing - 1))
                g.masked_fill_(~keep.unsqueeze(1), 0.0)
                g = g.to(compute)
                if g_h is not None:
                    g_h[r0:r0 + rows] = (g @ w).to(h.dtype)
                if g_w is not None:
                    g_w += (g.t() @ h_c).to(acc)
        ctx.save_for_backward(h, weight, target, g_h,
                              None if g_w is None else g_w.to(weight.dtype))
        ctx.smoothing, ctx.pad_id = smoothing, pad_id
        ctx.mark_non_differentiable(nll_total)
        return total, nll_total

    @staticmethod
    def backward(ctx: Any, g: Tensor, _: Tensor | None) -> tuple[Tensor | None, ...]:
        h, weight, target, g_h, g_w = ctx.saved_tensors
        if torch.is_grad_enabled():  # create_graph: a gradient that is itself differentiable
            return (*_graph_gradients(ctx, h, weight, target, g), None, None, None, None)
        return (None if g_h is None else g_h * g.to(g_h.dtype),
                None if g_w is None else g_w * g.to(g_w.dtype), None, None, None, None)


def _graph_gradients(ctx: Any, h: Tensor, weight: Tensor, target: Tensor,
                     g: Tensor) -> tuple[Tensor | None, Tensor | None]:
    """For double backward (exact second-order DARTS, a Hessian-vector product): the same
    gradients written as differentiable expressions of ``h`` and ``weight``, which keep their
    history (``autograd.grad`` would not do: with a tied weight, ``h`` depends on ``weight``,
    and it would add that path to the weight's gradient a second time)."""
    with torch.autocast(h.device.type, enabled=False):
        compute, acc = _dtypes(h)
        w = weight.to(compute)
        logits = (h.to(compute) @ w.t()).to(acc)
        onehot = torch.zeros_like(logits).scatter_(1, target.unsqueeze(1), 1.0)
        grad = logits.softmax(-1) - (1.0 - ctx.smoothing) * onehot - ctx.smoothing / w.size(0)
        grad = (grad * target.ne(ctx.pad_id).unsqueeze(1) * g).to(compute)
        g_h = (grad @ w).to(h.dtype) if ctx.needs_input_grad[0] else None
        g_w = (grad.t() @ h.to(compute)).to(weight.dtype) if ctx.needs_input_grad[1] else None
    return g_h, g_w


def seq2seq_loss(model: Supernet, batch: Batch, label_smoothing: float = 0.1) -> Tensor:
    """Label-smoothed cross entropy per non-pad target token (Zhao et al. 2021 §1,
    epsilon = 0.1), with the output layer and the loss in chunks of tokens
    (``nasframe.text.output_loss``)."""
    loss, _, n_tokens = seq2seq_loss_terms(model, batch, label_smoothing)
    return loss / n_tokens


def seq2seq_loss_terms(model: Supernet, batch: Batch, label_smoothing: float = 0.1,
                       pad_id: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """The summed label-smoothed loss, the summed NLL (no gradient) and the count of the
    target tokens that are not ``pad_id`` (None: the batch's), computed as
    ``nasframe.text.output_loss.output_loss_terms`` computes them: what re-training logs."""
    h, weight = model.output_features(batch.src, batch.tgt_in)
    return output_loss_terms(h.reshape(-1, h.size(-1)), weight, batch.tgt_out.reshape(-1),
                             label_smoothing, batch.pad_id if pad_id is None else pad_id)
