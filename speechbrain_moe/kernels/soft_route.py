"""Soft MoE's dispatch and combine weights with a hand-written backward.

What it computes: from the token-slot logits ``[B, L, S]`` (given, or
``X @ phi`` computed here, in float32), the dispatch weights ``D`` (softmax
over the real tokens of each sequence), the slots ``D^T X`` ``[B, S, d]``
and the combine weights ``C`` (softmax over the ``S`` slots of each token)
``[B, L, S]`` -- the same values as the plain path of
:meth:`speechbrain_moe.adapters.SoftMoA.forward`, which writes the two
softmaxes and two einsums of the paper and lets autograd differentiate
them.

Why it exists: given ``phi``, the backward pass gets the token gradient's
two contributions (through the logits and through the slots) from *one*
batched product ``[dlogits, D] @ [phi^T; dslots]``: the only ``[B, L, d]``
tensor written is the gradient itself, where autograd writes two and adds
them. The weights are kept slot-major, ``[B, S, L]``: both softmaxes then
run along long rows (torch 2.11's CPU softmax over a last dimension of 14
measured more than 10x slower), ``D^T`` feeds the slots product as it is,
and the ``phi`` gradient is one batched product ``dlogits^T X`` (the
``X^T dlogits`` layout of the ``[d, S]`` result measured 3x slower on the
CPU). Measured on a 2-core CPU only (torch 2.11): the Soft-MoA layer
(forward + backward, 1190 tokens) went to 23.3 ms against the bottleneck
adapter's 23.6 ms (commit 3322941), and Soft-MoA costs 0.99-1.01x the
adapter's whole training step at 100 to 1000 frames (``benchmarks/README.md``,
"Soft-MoA against length"; ``benchmarks/results/scaling.json``,
``layers.json``). The einsum version the paper's code uses measured 1.07x
that step (``table1.json``, ``soft_moa (naive loop)``, which also loops over
the experts). ``auto`` takes it on the CPU only.

How it is tested: ``tests/test_kernels_equal.py`` compares it with the plain
path (values; gradients of the tokens, the slot embeddings, the scale of the
normalised logits and the experts; float32 and bf16 / fp16 CPU autocast; with
and without padding); ``tests/test_soft_moa.py`` against a float64
reference.

Authors
 * speechbrain-moe contributors 2026
"""

import torch


class SoftRoute(torch.autograd.Function):
    """Soft MoE routing weights (see the module's notes).

    ``apply(x, phi, logits, mask)``: ``x`` ``[B, L, d]`` raw tokens;
    either ``phi`` ``[d, S]`` (the logits are ``x @ phi``) and
    ``logits=None``, or ``phi=None`` and the ``[B, L, S]`` float32 logits
    (e.g. normalised ones), whose gradient is then returned; ``mask``
    ``[B, L]`` True for real tokens, or None. Returns ``(slots, combine)``:
    ``[B, S, d]`` and ``[B, L, S]``.

    Example
    -------
    >>> x, phi = torch.randn(2, 5, 4), torch.randn(4, 3)
    >>> slots, combine = SoftRoute.apply(x, phi, None, None)
    >>> dispatch = torch.softmax(x @ phi, dim=1)
    >>> torch.allclose(slots, dispatch.transpose(1, 2) @ x, atol=1e-5)
    True
    """

    @staticmethod
    def forward(ctx, x, phi, logits, mask):
        """Computes the slots and the combine weights.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        x, phi, logits, mask
            As :class:`SoftRoute` takes them.

        Returns
        -------
        slots : torch.Tensor
            ``[B, S, d]``.
        combine : torch.Tensor
            ``[B, L, S]`` (float32).
        """
        if logits is None:
            logits = torch.matmul(x.float(), phi.float())
        logits_t = logits.transpose(1, 2).contiguous()  # [B, S, L]
        dispatch_logits = logits_t
        if mask is not None:
            fill = torch.finfo(logits.dtype).min
            dispatch_logits = logits_t.masked_fill(~mask.unsqueeze(1), fill)
        dispatch = torch.softmax(dispatch_logits, dim=-1)  # over tokens
        combine = torch.softmax(logits_t, dim=1)  # over slots
        slots = torch.bmm(dispatch.to(x.dtype), x)
        ctx.save_for_backward(x, phi, dispatch, combine)
        return slots, combine.transpose(1, 2)

    @staticmethod
    def backward(ctx, grad_slots, grad_combine):
        """Gradients of the tokens and of ``phi`` or of the logits.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        grad_slots : torch.Tensor or None
            Gradient of the slots.
        grad_combine : torch.Tensor or None
            Gradient of the combine weights.

        Returns
        -------
        tuple
            Gradients of ``x``, ``phi``, ``logits`` and None for ``mask``.
        """
        x, phi, dispatch, combine = ctx.saved_tensors
        dtype = x.dtype
        if grad_slots is None:
            grad_slots = x.new_zeros(x.shape[0], combine.shape[1], x.shape[-1])
        grad_slots = grad_slots.to(dtype)
        grad_dispatch = torch.bmm(grad_slots, x.transpose(1, 2)).float()
        dot = (grad_dispatch * dispatch).sum(-1, keepdim=True)
        grad_logits = dispatch * (grad_dispatch - dot)  # [B, S, L]
        if grad_combine is not None:
            grad_combine = grad_combine.transpose(1, 2).float()
            dot = (grad_combine * combine).sum(1, keepdim=True)
            grad_logits += combine * (grad_combine - dot)
        grad_x = grad_phi = None
        if phi is None:
            if ctx.needs_input_grad[0]:
                grad_x = torch.bmm(dispatch.to(dtype).transpose(1, 2), grad_slots)
            return grad_x, None, grad_logits.transpose(1, 2), None
        if ctx.needs_input_grad[0]:
            # dX = dlogits @ phi^T + D @ dslots, one product over 2S columns.
            left = torch.cat([grad_logits, dispatch], dim=1).to(dtype)
            right = phi.t().to(dtype).expand(x.shape[0], -1, -1)
            right = torch.cat([right, grad_slots], dim=1)
            grad_x = torch.bmm(left.transpose(1, 2), right)
        if ctx.needs_input_grad[1]:
            grad_phi = torch.bmm(grad_logits, x.float()).sum(0).t().to(phi.dtype)
        return grad_x, grad_phi, None, None
