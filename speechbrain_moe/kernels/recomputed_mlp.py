"""``Linear -> activation -> Linear`` keeping no activation output.

What it computes: ``W_2 act(W_1 x + b_1) + b_2``, the plain
``nn.Sequential`` forward of
:class:`speechbrain_moe.adapters.bridges.RecomputedMLP` (the MoE-Adapter
bridge's aggregation MLP), with the same parameters.

Why it exists: in training, :class:`ActivationLinear` runs the activation
and the second layer on row chunks of at most :data:`CHUNK` elements (the
activation output is never a full ``[tokens, hidden]`` tensor) and saves
the pre-activation only; its backward pass recomputes the activation into
one buffer that then receives the hidden gradient and, in place, the
pre-activation gradient: one ``[tokens, hidden]`` allocation where autograd
makes three, and one fewer tensor kept between the passes. At inference,
:func:`blocked_forward` runs both layers on blocks of rows when the weights
fit in cache (at most :data:`CACHED_WEIGHTS` elements), so that no
``[tokens, hidden]`` tensor is allocated at all. Measured on a 2-core CPU
only (torch 2.11): with it the bridge's inference peak memory at the small
shape went from 1.0004x to 0.97x the dense projector's
(``benchmarks/README.md``, "Bridge inference at small widths";
``benchmarks/results/bridge.json``); the committed reports hold no paired
plain-vs-kernel time ratio yet. ``auto`` takes it on the CPU only.

How it is tested: ``tests/test_kernels_equal.py`` (values and the gradients
of the input and of both layers against the plain ``nn.Sequential``;
float32 and bf16 / fp16 CPU autocast), ``tests/test_bridges.py`` (chunked
and single-block inference, an empty input).

Authors
 * speechbrain-moe contributors 2026
"""

import torch

from speechbrain_moe.kernels.activations import activation_grad

#: Largest activation chunk (elements) computed at once.
CHUNK = 1 << 22

#: Up to this many weight elements, inference runs on blocks of rows.
CACHED_WEIGHTS = 1 << 22


class ActivationLinear(torch.autograd.Function):
    """``linear(activation(pre))`` that saves ``pre`` only.

    ``apply(pre, activation, weight, bias)`` with ``pre`` ``[..., hidden]``,
    ``activation`` a module, ``weight`` ``[out, hidden]`` and ``bias``
    ``[out]`` or None; returns ``[..., out]``.

    Example
    -------
    >>> pre, weight, bias = torch.randn(5, 8), torch.randn(3, 8), torch.randn(3)
    >>> y = ActivationLinear.apply(pre, torch.nn.SiLU(), weight, bias)
    >>> torch.allclose(y, torch.nn.functional.silu(pre) @ weight.t() + bias, atol=1e-5)
    True
    """

    @staticmethod
    def forward(ctx, pre, activation, weight, bias):
        """``activation(pre) @ weight^T + bias``, on row chunks.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        pre, activation, weight, bias
            As :class:`ActivationLinear` takes them.

        Returns
        -------
        torch.Tensor
            ``[..., out]``.
        """
        dtype = pre.dtype
        weight_t = weight.to(dtype).t()
        flat = pre.reshape(-1, pre.shape[-1])
        out = pre.new_empty(flat.shape[0], weight.shape[0])
        rows = max(256, CHUNK // max(1, flat.shape[-1]))
        for start in range(0, flat.shape[0], rows):
            hidden = activation(flat[start : start + rows])
            if bias is None:
                torch.mm(hidden, weight_t, out=out[start : start + rows])
            else:
                torch.addmm(
                    bias.to(dtype), hidden, weight_t, out=out[start : start + rows]
                )
        ctx.save_for_backward(pre, weight)
        ctx.activation, ctx.has_bias = activation, bias is not None
        return out.view(*pre.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        """Gradients of ``pre``, ``weight`` and ``bias``.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        grad : torch.Tensor
            Gradient of the output.

        Returns
        -------
        tuple
            Gradients of ``pre``, None, ``weight`` and ``bias``.
        """
        pre, weight = ctx.saved_tensors
        flat_pre = pre.reshape(-1, pre.shape[-1])
        flat = grad.reshape(-1, grad.shape[-1]).to(pre.dtype)
        buffer = ctx.activation(flat_pre)
        grad_weight = (flat.t() @ buffer).to(weight.dtype)
        grad_bias = flat.sum(0).to(weight.dtype) if ctx.has_bias else None
        torch.mm(flat, weight.to(pre.dtype), out=buffer)
        activation_grad(ctx.activation, buffer, flat_pre, out=buffer)
        return buffer.view(pre.shape), None, grad_weight, grad_bias


def blocked_forward(first, activation, last, x):
    """Inference of ``last(activation(first(x)))`` on blocks of rows.

    Small weights stay in cache: both layers run on blocks of rows, never
    allocating the ``[tokens, hidden]`` tensor (peak memory, and fresh pages
    on each call). Large weights would be re-read per block: one block,
    activated in place.

    Arguments
    ---------
    first, last : torch.nn.Linear
        The two layers.
    activation : torch.nn.Module
        The activation between them.
    x : torch.Tensor
        ``[..., in_features]``.

    Returns
    -------
    torch.Tensor
        ``[..., last.out_features]``.

    Example
    -------
    >>> first, last = torch.nn.Linear(4, 8), torch.nn.Linear(8, 3)
    >>> x = torch.randn(2, 5, 4)
    >>> with torch.no_grad():
    ...     y = blocked_forward(first, torch.nn.SiLU(), last, x)
    ...     torch.allclose(y, last(torch.nn.functional.silu(first(x))), atol=1e-6)
    True
    """
    flat, out = x.reshape(-1, x.shape[-1]), None
    rows = max(1, flat.shape[0])
    if first.weight.numel() + last.weight.numel() <= CACHED_WEIGHTS:
        rows = max(256, (CHUNK >> 2) // first.out_features)
    step = max(256, CHUNK // first.out_features)
    for start in range(0, max(1, flat.shape[0]), rows):
        hidden = first(flat[start : start + rows])
        for part in hidden.split(step):
            part.copy_(activation(part))
        if out is None:  # the dtype autocast chose
            out = hidden.new_empty(flat.shape[0], last.out_features)
        weight, bias = last.weight.to(hidden.dtype), last.bias.to(hidden.dtype)
        torch.addmm(bias, hidden, weight.t(), out=out[start : start + rows])
    return out.view(*x.shape[:-1], last.out_features)
