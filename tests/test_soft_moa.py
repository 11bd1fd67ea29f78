"""Soft-MoA against a per-sample reference written from the equations of
Soft MoE (Puigcerver et al., 2024) with adapters as experts (Cappellazzo et
al., 2024): dispatch softmax over tokens, slots from the raw tokens, each
expert on its own slots, combine softmax over all slots."""

import pytest
import torch
import torch.nn.functional as F
from random_init import randomize

from speechbrain_moe.adapters import SoftMoA


def reference(moa, x):
    """Soft-MoA of one sequence ``x`` ``[L, d]`` (real tokens only), in float64."""
    x = x.double()
    num_experts, slots = moa.num_experts, moa.slots_per_expert
    phi = moa.slot_embeddings.double()  # [d, N * p], expert i owns columns i*p..i*p+p-1
    if moa.normalize:
        x_n = x / x.norm(dim=1, keepdim=True)
        phi_n = phi / phi.norm(dim=0, keepdim=True)
        logits = moa.scale.double() * (x_n @ phi_n)
    else:
        logits = x @ phi  # [L, N * p]
    dispatch = torch.exp(logits) / torch.exp(logits).sum(
        dim=0, keepdim=True
    )  # over tokens
    combine = torch.exp(logits) / torch.exp(logits).sum(
        dim=1, keepdim=True
    )  # over slots
    slot_inputs = dispatch.T @ x  # [N * p, d], from the raw tokens
    bank = moa.experts
    outputs = []
    for s in range(num_experts * slots):
        i = s // slots
        hidden = F.gelu(
            slot_inputs[s] @ bank.down_weight[:, i].double()
            + bank.down_bias[i].double()
        )
        outputs.append(hidden @ bank.up_weight[i].double() + bank.up_bias[i].double())
    return combine @ torch.stack(outputs)


@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("slots_per_expert", [1, 3])
def test_equals_per_sample_reference(normalize, slots_per_expert):
    moa = randomize(
        SoftMoA(
            6,
            num_experts=4,
            bottleneck=3,
            slots_per_expert=slots_per_expert,
            normalize=normalize,
        )
    )
    if normalize:
        with torch.no_grad():
            moa.scale.fill_(1.7)
    torch.manual_seed(1)
    x = torch.randn(3, 7, 6)
    lengths = [7, 5, 2]
    mask = torch.arange(7).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    y = moa(x, mask)
    for b, length in enumerate(lengths):
        expected = reference(moa, x[b, :length]).float()
        torch.testing.assert_close(y[b, :length], expected, atol=1e-5, rtol=1e-4)
        assert torch.count_nonzero(y[b, length:]) == 0
    # Without a mask every token is real.
    torch.testing.assert_close(
        moa(x)[1], reference(moa, x[1]).float(), atol=1e-5, rtol=1e-4
    )


def test_normalisation_scale_is_learnable_and_starts_at_one():
    moa = SoftMoA(8, num_experts=2, normalize=True)
    assert moa.scale.requires_grad and float(moa.scale.detach()) == 1.0
    assert SoftMoA(8, num_experts=2, normalize=False).scale is None


def test_zero_at_init_and_every_expert_gets_gradient():
    torch.manual_seed(0)
    moa = SoftMoA(8, num_experts=5, bottleneck=1)
    x = torch.randn(2, 6, 8)
    assert torch.count_nonzero(moa(x)) == 0
    with torch.no_grad():
        moa.experts.up_weight.normal_()
    moa(x).pow(2).sum().backward()
    for name in ("down_weight", "up_weight", "up_bias"):
        grad = getattr(moa.experts, name).grad
        per_expert = grad.transpose(0, 1) if name == "down_weight" else grad
        assert (per_expert.flatten(1).abs().sum(1) > 0).all(), name
    assert moa.slot_embeddings.grad.abs().sum(0).gt(0).all()


@pytest.mark.parametrize("lengths", [[7, 4], [7, 7]])
@pytest.mark.parametrize("normalize", [False, True])
@pytest.mark.parametrize("slots_per_expert", [1, 2])
def test_gradients_equal_per_sample_reference(normalize, slots_per_expert, lengths):
    """The hand-written backward of the routing equals autograd through the
    float64 reference, for the tokens and every parameter, with padding."""
    moa = randomize(
        SoftMoA(
            6,
            num_experts=3,
            bottleneck=2,
            slots_per_expert=slots_per_expert,
            normalize=normalize,
        )
    )
    torch.manual_seed(2)
    x = torch.randn(2, 7, 6, requires_grad=True)
    mask = torch.arange(7).unsqueeze(0) < torch.tensor(lengths).unsqueeze(1)
    target = torch.randn(2, 7, 6)
    params = [x, *moa.parameters()]
    got = torch.autograd.grad((moa(x, mask) * target).sum(), params)
    loss = sum(
        (reference(moa, x[b, :n]) * target[b, :n].double()).sum()
        for b, n in enumerate(lengths)
    )
    expected = torch.autograd.grad(loss, params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b.float(), atol=1e-5, rtol=1e-4)
    assert torch.count_nonzero(got[0][1, lengths[1] :]) == 0  # padding: no gradient
