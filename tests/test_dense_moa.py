"""Dense-MoA equals the per-expert loop it replaces: ``sum_i g_i A_i(x)`` with
``g = softmax(W_r x + b_r)``."""

import torch
import torch.nn.functional as F
from random_init import randomize

from speechbrain_moe.adapters import BottleneckAdapter, DenseMoA


def loop_reference(moa, x):
    """The per-expert Python loop the stacked implementation replaces."""
    gates = torch.softmax(x @ moa.router.weight.T + moa.router.bias, dim=-1)
    bank = moa.experts
    out = 0.0
    for i in range(moa.num_experts):
        hidden = F.gelu(x @ bank.down_weight[:, i] + bank.down_bias[i])
        out = out + gates[..., i : i + 1] * (
            hidden @ bank.up_weight[i] + bank.up_bias[i]
        )
    return out


def test_equals_per_expert_loop():
    moa = randomize(DenseMoA(8, num_experts=5, bottleneck=3))
    x = torch.randn(2, 6, 8)
    torch.testing.assert_close(moa(x), loop_reference(moa, x), atol=1e-5, rtol=1e-4)


def test_output_size_and_zero_at_init():
    torch.manual_seed(0)
    moa = DenseMoA(8, num_experts=3, bottleneck=2, output_size=5)
    y = moa(torch.randn(2, 4, 8))
    assert y.shape == (2, 4, 5)
    assert torch.count_nonzero(y) == 0


def test_single_expert_is_a_bottleneck_adapter():
    """With one expert the gate is 1: Dense-MoA is a plain bottleneck adapter."""
    moa = randomize(DenseMoA(8, num_experts=1, bottleneck=4))
    adapter = BottleneckAdapter(8, bottleneck=4)
    with torch.no_grad():
        adapter.down.weight.copy_(moa.experts.down_weight[:, 0].T)
        adapter.down.bias.copy_(moa.experts.down_bias[0])
        adapter.up.weight.copy_(moa.experts.up_weight[0].T)
        adapter.up.bias.copy_(moa.experts.up_bias[0])
    x = torch.randn(3, 5, 8)
    torch.testing.assert_close(moa(x), adapter(x), atol=1e-5, rtol=1e-5)


def test_every_expert_and_the_router_get_gradient():
    moa = randomize(DenseMoA(8, num_experts=4, bottleneck=1))
    moa(torch.randn(2, 5, 8)).pow(2).sum().backward()
    assert moa.experts.down_weight.grad.abs().sum(dim=(0, 2)).gt(0).all()
    assert moa.experts.up_weight.grad.abs().sum(dim=(1, 2)).gt(0).all()
    assert moa.router.weight.grad.abs().sum(1).gt(0).all()


def test_gradients_equal_per_expert_loop():
    """Router and down-projections share one product: gradients of the
    tokens and of every parameter still equal the loop's."""
    moa = randomize(DenseMoA(8, num_experts=5, bottleneck=3, output_size=6))
    x = torch.randn(2, 6, 8, requires_grad=True)
    target = torch.randn(2, 6, 6)
    params = [x, *moa.parameters()]
    got = torch.autograd.grad((moa(x) * target).sum(), params)
    expected = torch.autograd.grad((loop_reference(moa, x) * target).sum(), params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
