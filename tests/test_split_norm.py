"""Where the layer norm sits in an op (post, pre, branch) and in reversible splits."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import nasframe as nf
from nasframe.base.errors import SpaceError
from nasframe.dsl.ops import Context, Residual, create_op


class Double(nn.Module):
    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        return 2.0 * x + 1.0


@pytest.mark.parametrize("style", ["post", "pre", "branch"])
def test_residual_styles(style: str) -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, dtype=torch.float64)
    r = Residual(8, Double(), dropout=0.0, style=style).double()  # type: ignore[arg-type]
    with torch.no_grad():
        r.norm.weight.uniform_(0.5, 1.5)
    norm = r.norm
    want = {"post": norm(x + 2 * x + 1), "pre": x + 2 * norm(x) + 1,
            "branch": 2 * norm(x) + 1}[style]
    assert torch.allclose(r(x, Context()), want, atol=1e-12)


def test_create_op_sets_the_style_of_every_residual_and_rejects_unknown() -> None:
    for name in ("self_attention", "ffn", "glu", "conv", "dynamic_conv"):
        op = create_op(name, 24, causal=True, dropout=0.0, norm="branch")
        styles = {m.style for m in op.modules() if isinstance(m, Residual)}
        assert styles == {"branch"}, name
    with pytest.raises(SpaceError, match="norm style"):
        create_op("ffn", 24, norm="middle")  # type: ignore[arg-type]
    with pytest.raises(SpaceError, match="takes no parameter 'norm'"):
        nf.op("ffn", norm="pre")


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    src, tgt = torch.randint(4, 30, (3, 6), generator=g), torch.randint(4, 30, (3, 5), generator=g)
    src[0, 4:] = 0
    tgt[1, 3:] = 0
    return src, tgt


@pytest.mark.parametrize("split_norm", ["post", "branch"])
def test_reconstruction_is_exact_in_float64_under_both_split_norms(split_norm: str) -> None:
    space = nf.spaces.get("tiny", layers=2)
    grads = []
    for saving in (True, False):
        torch.manual_seed(0)
        cfg = nf.ModelConfig(d_model=48, blocks=2, dropout=0.2, memory_saving=saving,
                             split_norm=split_norm, alpha_init_std=0.5)
        model = nf.Supernet(space, cfg, vocab_size=30).double().train()
        src, tgt = batch()
        torch.manual_seed(7)
        loss = model(src, tgt).log_softmax(-1).square().mean()
        grads.append(torch.autograd.grad(loss, list(model.parameters()), allow_unused=True))
    for a, b in zip(*grads):
        if a is not None or b is not None:
            assert (a - b).abs().max().item() <= 1e-10
    stack = model.encoder.eval()
    x = torch.randn(3, 6, 48, dtype=torch.float64)
    with torch.no_grad():
        assert (stack.inverse(stack(x)) - x).abs().max().item() <= 1e-12


def test_split_norm_reaches_only_reversible_parts() -> None:
    def styles(space: nf.SearchSpace, split_norm: str) -> set[str]:
        model = nf.Supernet(space, nf.ModelConfig(d_model=48, split_norm=split_norm), 30)
        return {m.style for m in model.modules() if isinstance(m, Residual)}

    assert styles(nf.spaces.get("tiny"), "branch") == {"branch"}
    assert styles(nf.spaces.get("tiny"), "post") == {"post"}
    assert styles(nf.spaces.get("transformer"), "branch") == {"post"}
    assert styles(nf.spaces.get("darts-transformer"), "branch") == {"post"}


def test_a_checkpoint_loads_under_either_split_norm() -> None:
    space = nf.spaces.get("tiny")
    post = nf.Supernet(space, nf.ModelConfig(d_model=48, split_norm="post"), 30)
    branch = nf.Supernet(space, nf.ModelConfig(d_model=48, split_norm="branch"), 30)
    branch.load_state_dict(post.state_dict())  # same parameters, strict



def test_default_is_post_in_supernet_and_fixed_model_alike() -> None:
    # one default for both, so a fixed model with the supernet's weights computes its path
    space = nf.spaces.get("tiny")
    arch = nf.Architecture(space=space, choices={n: "ffn" for n in space.choice_nodes()})
    fixed = nf.build_model(arch, nf.ModelConfig(d_model=48), 30)
    supernet = nf.Supernet(space, nf.ModelConfig(d_model=48), 30)
    assert {m.style for m in fixed.modules() if isinstance(m, Residual)} == {"post"}
    assert {m.style for m in supernet.modules() if isinstance(m, Residual)} == {"post"}
    pinned = nf.build_model(arch, nf.ModelConfig(d_model=48, split_norm="branch"), 30)
    assert {m.style for m in pinned.modules() if isinstance(m, Residual)} == {"branch"}
