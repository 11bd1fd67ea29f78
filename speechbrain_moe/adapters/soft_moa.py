"""Soft Mixture of Adapters (Cappellazzo et al., 2024), after Soft MoE.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.routing import RoutedModule


class _SoftRoute(torch.autograd.Function):
    """Dispatch and combine weights of Soft MoE, with a hand-written backward.

    From the token-slot logits (float32): the dispatch ``D`` (softmax over the
    real tokens of each sequence) and the combine ``C`` (softmax over the S
    slots of each token); returns the slots ``D^T X`` ``[B, S, d]`` and ``C``
    ``[B, L, S]``. Given ``phi``, the logits are ``X @ phi``, computed here,
    and the backward gets the token gradient's two contributions (through the
    logits and through the slots) from *one* batched product
    ``[dlogits, D] @ [phi^T; dslots]``: the only ``[B, L, d]`` tensor written
    is the gradient itself, where autograd writes two and adds them. Given
    ``logits`` instead (normalised logits), their gradient is returned.

    The weights are kept slot-major, ``[B, S, L]``: both softmaxes then run
    along long rows (torch 2.11's CPU softmax over a last dimension of 14
    measured >10x slower), ``D^T`` feeds the slots product as it is, and the
    ``phi`` gradient is one batched product ``dlogits^T X`` (the ``X^T
    dlogits`` layout of the ``[d, S]`` result measured 3x slower on CPU).
    """

    @staticmethod
    def forward(ctx, x, phi, logits, mask):
        """Returns ``(slots, combine)``."""
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
        """Gradients of the tokens, of ``phi`` or of the logits."""
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


class SoftMoA(RoutedModule):
    """Soft-MoE routing with bottleneck adapters as experts.

    With ``Phi`` of shape ``[d, N * p]`` and tokens ``X`` ``[B, L, d]``:

    * ``logits = X Phi`` (``[B, L, N * p]``); with ``normalize=True`` both
      ``X`` and the columns of ``Phi`` are L2-normalised and the product is
      multiplied by a learnable scale (inside the logits only);
    * dispatch ``D = softmax over the L tokens`` (padding masked out) and slots
      ``X~ = D^T X`` built from the *raw* tokens;
    * expert ``i`` processes only its ``p`` slots (all experts batched);
    * combine ``C = softmax over all N * p slots`` per token, ``Y = C Y~``.

    Arguments
    ---------
    input_size : int
        Size of the incoming tokens.
    num_experts : int
        Number of experts N.
    bottleneck : int
        Bottleneck r of each expert.
    slots_per_expert : int
        Slots p per expert.
    normalize : bool
        L2-normalise tokens and slot parameters inside the logits, with a
        learnable scalar scale initialised to 1.
    output_size : int, optional
        Output size (default ``input_size``).
    activation : type
        Activation class of the experts.

    Example
    -------
    >>> moa = SoftMoA(16, num_experts=4, bottleneck=2, slots_per_expert=2)
    >>> x = torch.randn(2, 7, 16)
    >>> mask = torch.tensor([[True] * 7, [True] * 5 + [False] * 2])
    >>> moa(x, mask).shape
    torch.Size([2, 7, 16])
    """

    def __init__(
        self,
        input_size,
        num_experts=14,
        bottleneck=1,
        slots_per_expert=1,
        normalize=False,
        output_size=None,
        activation=nn.GELU,
    ):
        check_positive(
            "SoftMoA",
            num_experts=num_experts,
            bottleneck=bottleneck,
            slots_per_expert=slots_per_expert,
        )
        super().__init__(num_experts)
        self.slots_per_expert = slots_per_expert
        self.normalize = normalize
        num_slots = num_experts * slots_per_expert
        self.slot_embeddings = nn.Parameter(
            torch.randn(input_size, num_slots) / input_size**0.5
        )
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = ExpertBank(
            num_experts, input_size, bottleneck, output_size, activation=activation
        )

    def logits(self, x):
        """Token-slot affinities ``[batch, time, num_experts * slots_per_expert]``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]``.

        Returns
        -------
        torch.Tensor
            The logits, in float32.
        """
        x = x.float()
        phi = self.slot_embeddings.float()
        if self.normalize:
            # normalize(x) @ phi == (x @ phi) / |x|: divide the N*p logits of a
            # token rather than rewrite its d features.
            norms = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return (x @ F.normalize(phi, dim=0)) * (self.scale / norms)
        return x @ phi

    def forward(self, x, mask=None):
        """Routes ``x`` through the experts' slots and back."""
        if mask is not None and bool(mask.all()):
            mask = None  # nothing to mask: skip two passes over the tokens
        # Slots from the raw tokens; dX through logits and slots in one product.
        if self.normalize:
            route = (x, None, self.logits(x), mask)
        else:
            route = (x, self.slot_embeddings, None, mask)
        slots, combine = _SoftRoute.apply(*route)
        slots = slots.unflatten(1, (self.num_experts, self.slots_per_expert))
        outputs = self.experts.per_expert(slots).flatten(1, 2)  # [B, N*p, d_out]
        y = torch.bmm(combine.to(outputs.dtype), outputs)
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        if self.routing_sink is not None or self.tracking_load:
            per_expert = combine.unflatten(-1, (self.num_experts, -1)).sum(-1)
            self.report(per_expert, mask)
        return y
