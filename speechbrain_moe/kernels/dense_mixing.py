"""Dense mixing with fewer passes over the tokens (plain autograd).

What it computes: ``sum_i g_i (W_up_i act(W_down_i x + b_down_i) + b_up_i)``
over all experts of an ``ExpertBank`` -- the plain path of
:meth:`speechbrain_moe.experts.ExpertBank.dense` -- and, for Dense-MoA, its
router ``g = softmax(W_r x + b_r)`` as well (the plain path of
:meth:`speechbrain_moe.adapters.DenseMoA.forward`). No hand-written
backward: only the layout of the products changes.

Why it exists: (1) the router's weights are stacked on top of the experts'
down-projections, so ``x`` is read once and its gradient is written by one
product instead of two plus a sum; (2) the gated output biases ride along
as ``N`` extra columns of the gated hidden activation, so one product writes
the ``[..., output_size]`` result (and one reads its gradient). With them,
on a 2-core CPU (torch 2.11), Dense-MoA with 14 experts of bottleneck 1
costs 1.007x the single bottleneck adapter's training step and 1.004x its
peak memory (``benchmarks/README.md``, ``benchmarks/results/table1.json``);
the committed reports hold no paired plain-vs-kernel ratio yet. ``auto``
takes it on the CPU only.

How it is tested: ``tests/test_kernels_equal.py`` (values and every
gradient against the plain path: float32 and bf16 / fp16 CPU autocast);
``tests/test_dense_moa.py`` against a loop over the experts.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn.functional as F


def mix(bank, pre, gates=None):
    """The experts' second half, from their ``[..., N * r]`` pre-activations.

    Arguments
    ---------
    bank : speechbrain_moe.experts.ExpertBank
        The experts.
    pre : torch.Tensor
        ``[..., num_experts * bottleneck]``: ``x @ W_down + b_down``.
    gates : torch.Tensor, optional
        ``[..., num_experts]`` mixing weights (None: all ones).

    Returns
    -------
    torch.Tensor
        ``[..., output_size]``.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank = ExpertBank(3, 8, 2, zero_init_up=False, implementation="plain")
    >>> x = torch.randn(4, 8)
    >>> pre = x @ bank.down_weight.reshape(8, 6) + bank.down_bias.reshape(6)
    >>> torch.allclose(mix(bank, pre), bank.dense(x), atol=1e-6)
    True
    """
    n, r = bank.num_experts, bank.bottleneck
    hidden = bank.activation(pre)
    up = bank.up_weight.reshape(n * r, bank.output_size)
    if gates is None:
        bias = None if bank.up_bias is None else bank.up_bias.sum(0)
        return F.linear(hidden, up.t(), bias)
    gates = gates.to(hidden.dtype)
    hidden = (hidden.unflatten(-1, (n, r)) * gates.unsqueeze(-1)).flatten(-2)
    if bank.up_bias is None:  # a bank without biases (LoRA experts)
        return hidden @ up
    # The gated output biases ride along as N extra columns: one product
    # writes the [..., output_size] result (and one reads its gradient).
    hidden = torch.cat([hidden, gates], dim=-1)
    return hidden @ torch.cat([up, bank.up_bias.to(up.dtype)], dim=0)


def dense(bank, x, gates=None):
    """All experts on every token as one bottleneck of width ``N * r``.

    Arguments
    ---------
    bank : speechbrain_moe.experts.ExpertBank
        The experts.
    x : torch.Tensor
        ``[..., input_size]``.
    gates : torch.Tensor, optional
        ``[..., num_experts]`` mixing weights (None: all ones).

    Returns
    -------
    torch.Tensor
        ``[..., output_size]``.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank = ExpertBank(3, 8, 2, zero_init_up=False, implementation="plain")
    >>> x, g = torch.randn(4, 8), torch.softmax(torch.randn(4, 3), -1)
    >>> torch.allclose(dense(bank, x, g), bank.dense(x, g), atol=1e-6)
    True
    """
    n, r = bank.num_experts, bank.bottleneck
    down = bank.down_weight.reshape(bank.input_size, n * r)
    bias = None if bank.down_bias is None else bank.down_bias.reshape(n * r)
    return mix(bank, F.linear(x, down.t(), bias), gates)


def dense_moa(router, bank, x):
    """Dense-MoA with its router sharing the experts' input product.

    Arguments
    ---------
    router : torch.nn.Linear
        ``input_size -> num_experts`` router.
    bank : speechbrain_moe.experts.ExpertBank
        The experts.
    x : torch.Tensor
        ``[..., input_size]``.

    Returns
    -------
    out : torch.Tensor
        ``[..., output_size]``.
    gates : torch.Tensor
        ``[..., num_experts]`` float32 router probabilities.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank, router = ExpertBank(3, 8, 2, zero_init_up=False), torch.nn.Linear(8, 3)
    >>> x = torch.randn(4, 8)
    >>> out, gates = dense_moa(router, bank, x)
    >>> torch.allclose(gates, torch.softmax(router(x), -1), atol=1e-6)
    True
    """
    n = bank.num_experts
    down = bank.down_weight.reshape(bank.input_size, -1).t()
    weight = torch.cat([router.weight, down.to(router.weight.dtype)])
    if bank.down_bias is None:  # a bank without biases (LoRA experts)
        bias = torch.cat([router.bias, router.bias.new_zeros(down.shape[0])])
    else:
        bias = torch.cat([router.bias, bank.down_bias.reshape(-1)])
    logits, pre = F.linear(x, weight, bias).split([n, weight.shape[0] - n], -1)
    gates = torch.softmax(logits.float(), dim=-1)
    return mix(bank, pre, gates), gates
