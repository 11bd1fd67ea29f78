"""ExpertBank: the dense, per-expert and grouped paths equal a loop over
experts written from the bottleneck formula, and keep every expert in the
graph."""

import pytest
import torch

from speechbrain_moe.experts import ExpertBank


def random_bank(num_experts=3, input_size=8, bottleneck=2, output_size=None):
    """A bank whose parameters are all random (no zero up-projection)."""
    torch.manual_seed(0)
    bank = ExpertBank(num_experts, input_size, bottleneck, output_size)
    with torch.no_grad():
        for param in bank.parameters():
            param.normal_()
    return bank


def reference_expert(bank, i, x):
    """``W_up gelu(W_down x + b_down) + b_up`` of expert ``i``, written out."""
    hidden = torch.nn.functional.gelu(x @ bank.down_weight[:, i, :] + bank.down_bias[i])
    return hidden @ bank.up_weight[i] + bank.up_bias[i]


def test_zero_init_up_and_random_down():
    bank = ExpertBank(4, 8, 2)
    assert torch.count_nonzero(bank.up_weight) == 0
    assert torch.count_nonzero(bank.up_bias) == 0
    assert torch.count_nonzero(bank.down_weight) == bank.down_weight.numel()
    assert torch.count_nonzero(bank.dense(torch.randn(2, 5, 8))) == 0


@pytest.mark.parametrize("output_size", [None, 6])
def test_dense_equals_loop(output_size):
    bank = random_bank(output_size=output_size)
    x = torch.randn(2, 5, 8)
    gates = torch.softmax(torch.randn(2, 5, 3), dim=-1)
    loop = sum(gates[..., i : i + 1] * reference_expert(bank, i, x) for i in range(3))
    torch.testing.assert_close(bank.dense(x, gates), loop, atol=1e-5, rtol=1e-5)
    ones = sum(reference_expert(bank, i, x) for i in range(3))
    torch.testing.assert_close(bank.dense(x), ones, atol=1e-5, rtol=1e-5)


def test_per_expert_equals_loop():
    bank = random_bank(bottleneck=3)
    x = torch.randn(2, 3, 4, 8)
    y = bank.per_expert(x)
    for i in range(3):
        torch.testing.assert_close(
            y[:, i], reference_expert(bank, i, x[:, i]), atol=1e-5, rtol=1e-5
        )


def test_grouped_equals_loop_and_keeps_idle_experts_in_graph():
    bank = random_bank(num_experts=4)
    x = torch.randn(6, 8)
    counts = [2, 0, 4, 0]
    y = bank.grouped(x, counts)
    torch.testing.assert_close(y[:2], reference_expert(bank, 0, x[:2]))
    torch.testing.assert_close(y[2:], reference_expert(bank, 2, x[2:]))
    # allow_unused=False: raises if any parameter left the graph.
    grads = torch.autograd.grad(y.sum(), list(bank.parameters()))
    down_grad = grads[0]
    assert torch.count_nonzero(down_grad[:, 1]) == 0  # idle expert: zero grad
    assert torch.count_nonzero(down_grad[:, 0]) > 0


def test_grouped_without_rows_keeps_parameters_in_graph():
    bank = random_bank()
    y = bank.grouped(torch.randn(0, 8), [0, 0, 0])
    assert y.shape == (0, 8)
    grads = torch.autograd.grad(y.sum(), list(bank.parameters()))
    assert all(torch.count_nonzero(g) == 0 for g in grads)


@pytest.mark.parametrize("output_size", [None, 5])
def test_routed_equals_dense_in_value_and_gradient(output_size):
    """Top-2 of 4 experts, expert 3 idle: the hand-written grouped kernel
    equals the dense mixture with the same gates, gradients included, and the
    idle expert gets a zero gradient tensor (not None)."""
    bank = random_bank(num_experts=4, output_size=output_size)
    x = torch.randn(9, 8, requires_grad=True)
    experts = torch.randint(0, 3, (9, 1))
    experts = torch.cat([experts, (experts + 1) % 3], dim=1)
    weights = torch.softmax(torch.randn(9, 2), dim=-1).requires_grad_()
    gates = torch.zeros(9, 4).scatter(1, experts, weights)
    inputs = [x, weights, *bank.parameters()]
    target = torch.randn(9, bank.output_size)
    routed = bank.routed(x, experts, weights)
    dense = bank.dense(x, gates)
    torch.testing.assert_close(routed, dense, atol=1e-5, rtol=1e-5)
    got = torch.autograd.grad((routed * target).sum(), inputs)
    expected = torch.autograd.grad((dense * target).sum(), inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(got[2][:, 3]) == 0  # idle expert: zero gradient


def test_routed_without_grad_equals_routed_with_grad():
    bank = random_bank(num_experts=4)
    x = torch.randn(7, 8)
    experts = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 1], [1, 0], [2, 1], [0, 2]])
    weights = torch.softmax(torch.randn(7, 2), dim=-1)
    with torch.no_grad():
        inference = bank.routed(x, experts, weights)
    torch.testing.assert_close(inference, bank.routed(x, experts, weights).detach())


@pytest.mark.parametrize(
    "activation",
    [torch.nn.SiLU, torch.nn.GELU, torch.nn.ReLU, torch.nn.Tanh],
    ids=lambda a: a.__name__,
)
def test_routed_gradients_for_every_activation(activation):
    """Own backward kernels for SiLU/GELU/ReLU, autograd for any other one."""
    torch.manual_seed(0)
    bank = ExpertBank(3, 8, 4, activation=activation, zero_init_up=False)
    x = torch.randn(6, 8, requires_grad=True)
    experts = torch.tensor([[0, 1], [1, 2], [2, 0], [0, 2], [1, 0], [2, 1]])
    weights = torch.softmax(torch.randn(6, 2), dim=-1)
    gates = torch.zeros(6, 3).scatter(1, experts, weights)
    inputs = [x, *bank.parameters()]
    got = torch.autograd.grad(bank.routed(x, experts, weights).sum(), inputs)
    expected = torch.autograd.grad(bank.dense(x, gates).sum(), inputs)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
