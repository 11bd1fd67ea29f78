"""Activation gradients for the hand-written backward passes.

What it computes: ``d activation(pre) / d pre * grad`` for the activation
modules of the experts, through ATen's own backward operators
(``silu_backward``, ``gelu_backward``, ``threshold_backward``) so that the
result can be written into a buffer the caller already holds; any other
activation goes through autograd on a detached copy.

Why it exists: the two hand-written backward passes
(:mod:`.routed_experts`, :mod:`.recomputed_mlp`) recompute or keep the
pre-activation only and need its gradient without building an autograd
graph; writing into ``out`` saves one ``[rows, hidden]`` allocation.

How it is tested: through the kernels that use it
(``tests/test_kernels_equal.py``: every gradient against the plain path, for
GELU and SiLU experts, and ReLU in ``tests/test_expert_bank.py``).

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn


def activation_grad(activation, grad, pre, out=None):
    """Gradient of ``activation`` at ``pre`` times ``grad``.

    Arguments
    ---------
    activation : torch.nn.Module
        The activation module (``nn.SiLU``, ``nn.GELU`` and ``nn.ReLU`` use
        ATen's backward operators, ``nn.Identity`` passes ``grad`` through;
        any other module goes through autograd).
    grad : torch.Tensor
        Gradient of the activation's output.
    pre : torch.Tensor
        The activation's input.
    out : torch.Tensor, optional
        Where to write the result (may be ``grad`` itself).

    Returns
    -------
    torch.Tensor
        The gradient of ``pre`` (``out`` when given).

    Example
    -------
    >>> pre = torch.randn(3, requires_grad=True)
    >>> auto = torch.autograd.grad(torch.nn.functional.silu(pre).sum(), pre)[0]
    >>> torch.allclose(activation_grad(nn.SiLU(), torch.ones(3), pre.detach()), auto)
    True
    """
    ops, kind = torch.ops.aten, type(activation)
    if kind is nn.Identity:  # LoRA experts: the gradient passes through
        return grad if out is None or out is grad else out.copy_(grad)
    if kind in (nn.SiLU, nn.GELU, nn.ReLU):
        op, args, kwargs = ops.silu_backward, (grad, pre), {}
        if kind is nn.GELU:
            op, kwargs = ops.gelu_backward, {"approximate": activation.approximate}
        elif kind is nn.ReLU:
            op, args = ops.threshold_backward, (grad, pre, 0)
        if out is None:
            return op(*args, **kwargs)
        return op.grad_input(*args, **kwargs, grad_input=out)
    with torch.enable_grad():
        leaf = pre.detach().requires_grad_()
        result = torch.autograd.grad(activation(leaf), leaf, grad)[0]
    return result if out is None else out.copy_(result)
