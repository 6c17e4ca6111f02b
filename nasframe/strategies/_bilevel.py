"""The DARTS bilevel search, shared by ``darts-reversible`` (DARTSformer) and ``darts``.

Each update (Zhao et al. 2021 §1): alpha <- alpha - lr_a * grad_alpha L_val(w, alpha) on a
search-valid batch, then w <- w - lr_w * grad_w L_train(w, alpha) on a search-train batch.
Both gradients come from ``torch.autograd.grad``; on the reversible backbone with
``memory_saving`` the engine answers it with backprop with reconstruction (Algorithm 1), so
the same code serves both backbones. One switch, ``optim.second_order``, replaces the alpha
gradient by DARTS' unrolled one (see ``_unrolled_alpha_grads``).
"""
from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any, ClassVar

import torch
from torch import Tensor

from nasframe.dsl.architecture import Architecture, derive
from nasframe.searching.strategy import Backbone, SearchContext
from nasframe.searching.updates import (
    all_finite,
    alpha_optimizer,
    assign_grads,
    frozen,
    gradients,
    weight_optimizer,
    weight_update,
)
from nasframe.text.data import Batch


class BilevelDarts:
    """First- or second-order DARTS on whatever backbone the space declares."""

    name: ClassVar[str] = "bilevel"
    description: ClassVar[str] = "DARTS bilevel search"
    backbone: ClassVar[Backbone] = "any"
    default_space: ClassVar[str] = "dartsformer"
    #: None: keep ``model.memory_saving`` from the config; False: ordinary autograd.
    memory_saving: ClassVar[bool | None] = None

    def setup(self, ctx: SearchContext) -> None:
        self.ctx = ctx
        net, optim = ctx.supernet, ctx.config.optim
        net.set_mode("weighted")  # Eq. 1: every node is the softmax(alpha)-weighted mixture
        if self.memory_saving is not None:
            net.set_memory_saving(self.memory_saving)
        self.alphas = net.arch_parameters()
        for a in self.alphas:
            a.requires_grad_(True)
        self.weights = [p for p in net.weight_parameters() if p.requires_grad]
        self.w_opt, self.w_sched = weight_optimizer(self.weights, optim)
        self.a_opt = alpha_optimizer(self.alphas, optim)

    # -- one update -------------------------------------------------------------------------
    def step(self, train_batch: Batch, val_batch: Batch) -> dict[str, float]:
        lr = self.w_opt.param_groups[0]["lr"]
        metrics: dict[str, float] = {"lr": lr}
        if self.ctx.step > self.ctx.config.optim.alpha_warmup:
            metrics["loss_val"] = self._alpha_step(train_batch, val_batch, lr)
        metrics["loss_train"], metrics["grad_norm"] = self._weight_step(train_batch)
        return metrics

    def _alpha_step(self, train: Batch, val: Batch, lr: float) -> float:
        if self.ctx.config.optim.second_order:
            grads, loss = self._unrolled_alpha_grads(train, val, lr)
        else:  # first order: grad_alpha L_val(w, alpha) at the current w
            with frozen(self.weights):
                loss_t = self.ctx.loss(val)
            grads, loss = gradients(loss_t, self.alphas), float(loss_t.detach())
        assign_grads(self.alphas, grads)
        self.ctx.sync_grads(self.alphas)
        if all_finite([a.grad for a in self.alphas]):  # else skipped; the executor decides
            self.a_opt.step()
        else:
            loss = math.nan
        self.a_opt.zero_grad(set_to_none=True)
        return loss

    def _weight_step(self, train: Batch) -> tuple[float, float]:
        with frozen(self.alphas):
            loss = self.ctx.loss(train)
        norm = weight_update(self.ctx, self.weights, loss, self.w_opt, self.w_sched)
        return float(loss.detach()), norm

    def _unrolled_alpha_grads(self, train: Batch, val: Batch,
                              lr: float) -> tuple[list[Tensor], float]:
        """Second-order DARTS (Liu et al. 2019, Eqs. 7-8):

            w' = w - xi * grad_w L_train(w, alpha)
            g  = grad_alpha L_val(w', alpha)
                 - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)
            w+- = w +- eps * grad_w' L_val(w', alpha),   eps = fd_eps / ||grad_w' L_val||

        The weights are moved in place and restored bitwise from a copy. Both finite-difference
        evaluations draw the same dropout masks, so their difference measures the curvature,
        not two different masks.
        """
        optim, loss_of = self.ctx.config.optim, self.ctx.loss
        xi = optim.unrolled_lr if optim.unrolled_lr is not None else lr
        w0 = [p.detach().clone() for p in self.weights]
        with frozen(self.alphas):
            loss_train = loss_of(train)
        dw = _zeros_for_none(gradients(loss_train, self.weights), self.weights)
        self._set_weights(w0, dw, -xi)  # the unrolled weights w'
        loss_val = loss_of(val)
        grads = gradients(loss_val, [*self.alphas, *self.weights])
        d_alpha = _zeros_for_none(grads[:len(self.alphas)], self.alphas)
        v = _zeros_for_none(grads[len(self.alphas):], self.weights)
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in v]))
        eps = optim.fd_eps / max(float(norm), 1e-12)
        with _same_randomness(self.ctx.device):
            self._set_weights(w0, v, eps)
            g_plus = self._alpha_grads(train)
        self._set_weights(w0, v, -eps)
        g_minus = self._alpha_grads(train)
        self._set_weights(w0)
        hvp = [(gp - gm) / (2 * eps) for gp, gm in zip(g_plus, g_minus)]
        return [da - xi * h for da, h in zip(d_alpha, hvp)], float(loss_val.detach())

    def _alpha_grads(self, batch: Batch) -> list[Tensor]:
        """grad_alpha L(w, alpha) on ``batch``, the weights constants while the graph is built."""
        with frozen(self.weights):
            loss = self.ctx.loss(batch)
        return _zeros_for_none(gradients(loss, self.alphas), self.alphas)

    @torch.no_grad()
    def _set_weights(self, base: Sequence[Tensor], direction: Sequence[Tensor] | None = None,
                     scale: float = 0.0) -> None:
        for k, p in enumerate(self.weights):
            p.copy_(base[k] if direction is None else base[k] + scale * direction[k])

    # -- results and state ------------------------------------------------------------------
    def derive(self) -> Architecture:
        """Eq. 2: argmax of every node's alpha, with softmax(alpha) kept for the table."""
        net = self.ctx.supernet
        return derive(net.space, net.alpha_dict(), note=f"{self.name}, update {self.ctx.step}")

    def state_dict(self) -> dict[str, Any]:
        return {"w_opt": self.w_opt.state_dict(), "w_sched": self.w_sched.state_dict(),
                "a_opt": self.a_opt.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.w_opt.load_state_dict(state["w_opt"])
        self.w_sched.load_state_dict(state["w_sched"])
        self.a_opt.load_state_dict(state["a_opt"])


def _zeros_for_none(grads: Sequence[Tensor | None], params: Sequence[Tensor]) -> list[Tensor]:
    return [torch.zeros_like(p) if g is None else g for g, p in zip(grads, params)]


@contextlib.contextmanager
def _same_randomness(device: torch.device) -> Iterator[None]:
    """Run the block, then rewind the RNG so the next computation draws the same numbers."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    yield
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
