"""How a strategy updates weights and alphas: the optimisers, gradients, clipping and the one
weight update every built-in strategy uses. Public, so a plugin strategy optimises its
weights exactly as the built-ins do::

    from nasframe.searching.updates import weight_optimizer, weight_update

    self.w_opt, self.w_sched = weight_optimizer(weights, ctx.config.optim)
    norm = weight_update(ctx, weights, ctx.loss(batch), self.w_opt, self.w_sched)
"""
from __future__ import annotations

__all__ = ["all_finite", "alpha_optimizer", "assign_grads", "clip", "frozen", "gradients",
           "weight_optimizer", "weight_update"]

import contextlib
import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.optim import Adam
from torch.optim.lr_scheduler import LambdaLR

from nasframe.base.runtime import inverse_sqrt
from nasframe.engine.param_slots import requiring_grad
from nasframe.run.config import OptimConfig
from nasframe.searching.strategy import SearchContext


def weight_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> tuple[Adam, LambdaLR]:
    """Adam for w with betas (0.9, 0.98) and the inverse-sqrt warmup schedule (Zhao et al.
    2021 §5)."""
    opt = Adam(params, lr=cfg.lr, betas=cfg.betas, eps=cfg.eps, weight_decay=cfg.weight_decay)
    return opt, LambdaLR(opt, inverse_sqrt(cfg.warmup))


def alpha_optimizer(params: Sequence[nn.Parameter], cfg: OptimConfig) -> Adam:
    """Adam for the alphas: fixed lr 3e-4, betas (0.5, 0.999), weight decay 1e-3 (as DARTS)."""
    return Adam(params, lr=cfg.alpha_lr, betas=cfg.alpha_betas,
                weight_decay=cfg.alpha_weight_decay)


def gradients(loss: Tensor, params: Sequence[Tensor]) -> list[Tensor | None]:
    """d loss / d params; None for a parameter the loss does not reach (an unsampled path),
    so that Adam leaves it and its moments untouched."""
    return list(torch.autograd.grad(loss, params, allow_unused=True))


def assign_grads(params: Sequence[Tensor], grads: Sequence[Tensor | None]) -> None:
    """Set each parameter's ``.grad`` (None leaves it out of the optimiser step)."""
    for p, g in zip(params, grads):
        p.grad = g


def clip(params: Sequence[Tensor], max_norm: float | None) -> float:
    """Clip the gradient norm of ``params``; returns the norm before clipping."""
    with_grad = [p for p in params if p.grad is not None]
    if not with_grad:
        return 0.0
    if max_norm is None:
        return float(torch.linalg.vector_norm(torch.stack(
            [torch.linalg.vector_norm(p.grad) for p in with_grad])))
    return float(nn.utils.clip_grad_norm_(with_grad, max_norm))


def frozen(params: Sequence[Tensor]) -> contextlib.AbstractContextManager[None]:
    """Build the graph with ``params`` as constants: a loss differentiated only for other
    parameters then neither keeps activations for their gradients nor computes them. Backprop
    with reconstruction recomputes each layer under the freeze its forward saw, though
    ``params`` are trainable again by then; without the freeze it would compute every
    trainable parameter's gradient in each VJP and throw the unwanted ones away."""
    return requiring_grad(params, False)


def weight_update(ctx: SearchContext, weights: Sequence[Tensor], loss: Tensor, opt: Adam,
                  schedule: LambdaLR) -> float:
    """One update of w on ``loss``: gradients, DDP averaging, clipping, Adam, the schedule.
    Returns the gradient norm before clipping; a non-finite norm skips the update."""
    assign_grads(weights, gradients(loss, weights))
    ctx.sync_grads(weights)
    norm = clip(weights, ctx.config.optim.clip_norm)
    if math.isfinite(norm):  # else skipped: w, Adam's moments and the schedule stay put,
        opt.step()           # and the non-finite norm tells the executor
        schedule.step()
    opt.zero_grad(set_to_none=True)
    return norm


def all_finite(grads: Sequence[Tensor | None]) -> bool:
    """Whether every gradient is finite (None counts as finite: nothing to apply)."""
    return all(g is None or bool(torch.isfinite(g).all()) for g in grads)
