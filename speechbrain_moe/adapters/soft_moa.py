"""Soft Mixture of Adapters (Cappellazzo et al., 2024), after Soft MoE
(Puigcerver et al., 2024).

Notation (as in ``docs/design.md``)::

    X    [B, L, d]   tokens entering the adapter (padding masked out)
    Phi  [d, S]      slot embeddings, S = N * p (N experts, p slots each)
    logits = X Phi                                   [B, L, S]
             (normalize=True: scale * normalize(X) normalize(Phi), over d)
    D = softmax(logits, over the L real tokens)      dispatch  [B, L, S]
    X~ = D^T X                                       slots     [B, S, d]
    Y~_i = A_i(X~_i)        expert i on its own p slots        [B, S, d_out]
    C = softmax(logits, over the S slots)            combine   [B, L, S]
    Y = C Y~                                                   [B, L, d_out]

The plain path below writes exactly these lines; with ``implementation=
"kernel"`` (or ``"auto"`` on the CPU) the dispatch and combine weights come
from :class:`speechbrain_moe.kernels.soft_route.SoftRoute` instead, the same
values with a fused backward pass.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.kernels import check_implementation, use_kernel
from speechbrain_moe.kernels.soft_route import SoftRoute
from speechbrain_moe.routing import RoutedModule


class SoftMoA(RoutedModule):
    """Soft-MoE routing with bottleneck adapters as experts.

    See the notation at the top of this file: slots are weighted means of
    the *raw* tokens (dispatch), each expert processes only its own slots,
    each token's output is a weighted mean of the slots' outputs (combine).
    Padded tokens take no part in any slot and get a zero output.

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
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"`` (see
        :mod:`speechbrain_moe.kernels`; same values either way).
    expert_bias : bool
        Give the experts their biases (False: bias-free experts, as the LoRA
        experts of :mod:`speechbrain_moe.adapters.lora_experts`).

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
        implementation="auto",
        expert_bias=True,
    ):
        check_positive(
            "SoftMoA",
            num_experts=num_experts,
            bottleneck=bottleneck,
            slots_per_expert=slots_per_expert,
        )
        super().__init__(num_experts)
        self.implementation = check_implementation("SoftMoA", implementation)
        self.slots_per_expert = slots_per_expert
        self.normalize = normalize
        num_slots = num_experts * slots_per_expert
        self.slot_embeddings = nn.Parameter(
            torch.randn(input_size, num_slots) / input_size**0.5
        )
        self.scale = nn.Parameter(torch.ones(())) if normalize else None
        self.experts = ExpertBank(
            num_experts,
            input_size,
            bottleneck,
            output_size,
            activation=activation,
            implementation=implementation,
            bias=expert_bias,
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
            The logits, in float32 (``X Phi``, or with ``normalize`` the
            scaled cosine of each token and slot).

        Example
        -------
        >>> moa = SoftMoA(8, num_experts=2, slots_per_expert=3)
        >>> moa.logits(torch.randn(2, 5, 8)).shape
        torch.Size([2, 5, 6])
        """
        x = x.float()
        phi = self.slot_embeddings.float()
        if self.normalize:
            # normalize(x) @ phi == (x @ phi) / |x|: divide the N*p logits of a
            # token rather than rewrite its d features.
            norms = x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
            return (x @ F.normalize(phi, dim=0)) * (self.scale / norms)
        return x @ phi

    def route(self, x, mask):
        """The plain routing: slots and combine weights from the equations.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]`` tokens.
        mask : torch.Tensor or None
            ``[batch, time]``, True for real tokens (None: all real).

        Returns
        -------
        slots : torch.Tensor
            ``[batch, num_slots, input_size]``: ``X~ = D^T X``.
        combine : torch.Tensor
            ``[batch, time, num_slots]`` float32: ``C``.

        Example
        -------
        >>> moa = SoftMoA(8, num_experts=2)
        >>> slots, combine = moa.route(torch.randn(1, 4, 8), None)
        >>> slots.shape, combine.sum(-1).allclose(torch.ones(1, 4))
        (torch.Size([1, 2, 8]), True)
        """
        logits = self.logits(x)  # [B, L, S]
        dispatch_logits = logits
        if mask is not None:  # padded tokens take no part in any slot
            fill = torch.finfo(logits.dtype).min
            dispatch_logits = logits.masked_fill(~mask.unsqueeze(-1), fill)
        dispatch = torch.softmax(dispatch_logits, dim=1)  # D: over the tokens
        combine = torch.softmax(logits, dim=-1)  # C: over the slots
        slots = torch.einsum("bls,bld->bsd", dispatch.to(x.dtype), x)
        return slots, combine

    def forward(self, x, mask=None):
        """Routes ``x`` through the experts' slots and back.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]`` tokens.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real tokens (None: all real).

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]`` (zero on padded tokens).
        """
        if mask is not None and bool(mask.all()):
            mask = None  # nothing to mask: skip two passes over the tokens
        if not use_kernel(self.implementation, x):
            slots, combine = self.route(x, mask)
        elif self.normalize:  # the kernel returns the logits' gradient
            slots, combine = SoftRoute.apply(x, None, self.logits(x), mask)
        else:  # the kernel computes X Phi and returns dX in one product
            slots, combine = SoftRoute.apply(x, self.slot_embeddings, None, mask)
        slots = slots.unflatten(1, (self.num_experts, self.slots_per_expert))
        outputs = self.experts.per_expert(slots).flatten(1, 2)  # Y~ [B, S, d_out]
        y = torch.bmm(combine.to(outputs.dtype), outputs)  # Y = C Y~
        if mask is not None:
            y = y * mask.unsqueeze(-1).to(y.dtype)
        if self.wants_routing():
            per_expert = combine.unflatten(-1, (self.num_experts, -1)).sum(-1)
            self.report(per_expert, mask)
        return y
