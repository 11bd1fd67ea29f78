"""Naive-loop peers: Dense-MoA and Soft-MoA computed the reference-code way.

The Soft-MoA paper's implementation keeps every expert as its own module
(``Linear -> GELU -> Linear``) and runs them in a Python loop: Dense-MoA
stacks the N expert outputs into a ``[B, L, d, N]`` tensor and sums it with
the router's weights; Soft-MoA builds the logits, dispatch and combine
weights with ``einsum`` over a ``[d, N, p]`` slot tensor and calls expert
``i`` on its slots in a loop. This module writes both computations that way
(our own code, following the paper's equations and the structure described
above), so that the ``table1`` suite can time them side by side with the
stacked implementations of :mod:`speechbrain_moe.adapters`, on the same
machine and in the same process.

:func:`swap_in_naive` replaces every ``DenseMoA`` / ``SoftMoA`` of an
adapted model by its naive peer *with the same weights*: placement, frozen
backbone and trainable LayerNorms stay exactly those of the method; only the
computation of the mixture changes. The two compute the same function (see
``tests/test_bench.py``).

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.adapters import DenseMoA, SoftMoA


class LoopExpert(nn.Module):
    """One bottleneck expert as its own module: ``up(act(down(x)))``.

    Arguments
    ---------
    input_size : int
        Token size d.
    bottleneck : int
        Hidden size r.
    output_size : int
        Output size.
    activation : nn.Module
        Activation module.

    Example
    -------
    >>> LoopExpert(8, 2, 8, nn.GELU())(torch.randn(3, 8)).shape
    torch.Size([3, 8])
    """

    def __init__(self, input_size, bottleneck, output_size, activation):
        super().__init__()
        self.down = nn.Linear(input_size, bottleneck)
        self.activation = activation
        self.up = nn.Linear(bottleneck, output_size)

    def forward(self, x):
        """Applies the expert."""
        return self.up(self.activation(self.down(x)))


def _loop_experts(bank):
    """The experts of an ``ExpertBank`` as N separate modules (weights copied)."""
    experts = nn.ModuleList()
    with torch.no_grad():
        for i in range(bank.num_experts):
            expert = LoopExpert(
                bank.input_size, bank.bottleneck, bank.output_size, bank.activation
            ).to(bank.down_weight.device)
            expert.down.weight.copy_(bank.down_weight[:, i].t())
            expert.down.bias.copy_(bank.down_bias[i])
            expert.up.weight.copy_(bank.up_weight[i].t())
            expert.up.bias.copy_(bank.up_bias[i])
            experts.append(expert)
    return experts


def _no_padding(mask):
    """The reference code has no padding mask: refuse one that masks tokens."""
    if mask is not None and not bool(mask.all()):
        raise NotImplementedError("The naive-loop peers only take unpadded batches.")


class LoopDenseMoA(nn.Module):
    """Dense-MoA, reference style: ``stack([E_i(x)], -1)`` then a gated sum.

    Arguments
    ---------
    moa : speechbrain_moe.adapters.DenseMoA
        The module whose weights to copy.

    Example
    -------
    >>> ours = DenseMoA(8, num_experts=3, bottleneck=2)
    >>> x = torch.randn(2, 5, 8)
    >>> torch.allclose(LoopDenseMoA(ours)(x), ours(x), atol=1e-6)
    True
    """

    def __init__(self, moa):
        super().__init__()
        self.router = nn.Linear(moa.router.in_features, moa.router.out_features)
        self.router.load_state_dict(moa.router.state_dict())
        self.router.to(moa.router.weight.device)
        self.experts = _loop_experts(moa.experts)

    def forward(self, x, mask=None):
        """``sum_i softmax(router(x))_i E_i(x)`` via a ``[B, L, d, N]`` stack."""
        _no_padding(mask)
        gates = torch.softmax(self.router(x), dim=-1)
        outputs = torch.stack([expert(x) for expert in self.experts], dim=-1)
        return (gates.unsqueeze(-2) * outputs).sum(-1)


class LoopSoftMoA(nn.Module):
    """Soft-MoA, reference style: ``einsum`` routing, a loop over experts.

    Arguments
    ---------
    moa : speechbrain_moe.adapters.SoftMoA
        The module whose weights to copy.

    Example
    -------
    >>> ours = SoftMoA(8, num_experts=3, bottleneck=2, slots_per_expert=2)
    >>> _ = torch.nn.init.normal_(ours.experts.up_weight)
    >>> x = torch.randn(2, 5, 8)
    >>> torch.allclose(LoopSoftMoA(ours)(x), ours(x), atol=1e-5)
    True
    """

    def __init__(self, moa):
        super().__init__()
        n, p = moa.num_experts, moa.slots_per_expert
        d = moa.slot_embeddings.shape[0]
        # Expert i owns columns i*p .. i*p+p-1 of our [d, N*p] slot matrix.
        self.slot_params = nn.Parameter(
            moa.slot_embeddings.detach().reshape(d, n, p).clone()
        )
        self.normalize = moa.normalize
        self.scale = None
        if moa.normalize:
            self.scale = nn.Parameter(moa.scale.detach().clone())
        self.experts = _loop_experts(moa.experts)

    def forward(self, x, mask=None):
        """Dispatch over tokens, experts in a loop, combine over slots."""
        _no_padding(mask)
        b, m, _ = x.shape
        n, p = self.slot_params.shape[1:]
        phi, tokens = self.slot_params, x
        if self.normalize:
            tokens = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            phi = self.scale * phi / phi.norm(dim=0, keepdim=True)
        logits = torch.einsum("bmd,dnp->bmnp", tokens, phi)
        dispatch = torch.softmax(logits, dim=1)
        combine = torch.softmax(logits.reshape(b, m, n * p), dim=-1)
        combine = combine.reshape(b, m, n, p)
        slots = torch.einsum("bmd,bmnp->bnpd", x, dispatch)
        outputs = torch.stack(
            [expert(slots[:, i]) for i, expert in enumerate(self.experts)], dim=1
        )
        return torch.einsum("bnpd,bmnp->bmd", outputs, combine)


#: Our class -> its naive-loop peer.
PEERS = {DenseMoA: LoopDenseMoA, SoftMoA: LoopSoftMoA}


def swap_in_naive(model):
    """Replaces every Dense-/Soft-MoA of ``model`` by its naive-loop peer.

    The peers get the same weights (and stay trainable), so the model
    computes the same function, the reference-code way.

    Arguments
    ---------
    model : torch.nn.Module
        A model adapted with ``dense_moa`` or ``soft_moa``.

    Returns
    -------
    int
        Number of modules replaced.

    Example
    -------
    >>> model = nn.Sequential(SoftMoA(8, num_experts=2), DenseMoA(8, num_experts=2))
    >>> swap_in_naive(model), type(model[0]).__name__
    (2, 'LoopSoftMoA')
    """
    swaps = []
    for parent in model.modules():
        for name, child in parent.named_children():
            peer = PEERS.get(type(child))
            if peer is not None:
                swaps.append((parent, name, peer(child)))
    for parent, name, peer in swaps:
        setattr(parent, name, peer)
    return len(swaps)
