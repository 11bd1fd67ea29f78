"""Dense Mixture of Adapters: every expert sees every token, softly gated.

Notation (as in ``docs/design.md``)::

    x   [..., d]    a token;  N experts A_i of bottleneck r
    g = softmax(W_r x + b_r)                 [..., N]   router
    y = sum_i g_i A_i(x)                     [..., d_out]

The plain path computes ``g`` with the router and ``y`` with
:meth:`ExpertBank.dense <speechbrain_moe.experts.ExpertBank.dense>` (two
einsums over the stacked expert weights: no loop over experts, no ``[B, L,
d, N]`` tensor). With ``implementation="kernel"`` (or ``"auto"`` on the
CPU) the router shares the experts' input product instead
(:func:`speechbrain_moe.kernels.dense_mixing.dense_moa`): same values.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.kernels import check_implementation, dense_mixing, use_kernel
from speechbrain_moe.routing import RoutedModule


class DenseMoA(RoutedModule):
    """``y = sum_i softmax(W_r x + b_r)_i A_i(x)`` over N bottleneck experts.

    The experts run as one bottleneck of width ``N * r`` (see
    :meth:`ExpertBank.dense <speechbrain_moe.experts.ExpertBank.dense>`), so
    14 experts of bottleneck 1 cost about what a single adapter of
    bottleneck 14 costs.

    Arguments
    ---------
    input_size : int
        Size of the incoming tokens.
    num_experts : int
        Number of experts N.
    bottleneck : int
        Bottleneck r of each expert.
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
    >>> moa = DenseMoA(16, num_experts=4, bottleneck=2)
    >>> moa(torch.randn(2, 7, 16)).shape
    torch.Size([2, 7, 16])
    """

    def __init__(
        self,
        input_size,
        num_experts=14,
        bottleneck=1,
        output_size=None,
        activation=nn.GELU,
        implementation="auto",
        expert_bias=True,
    ):
        check_positive("DenseMoA", num_experts=num_experts, bottleneck=bottleneck)
        super().__init__(num_experts)
        self.implementation = check_implementation("DenseMoA", implementation)
        self.router = nn.Linear(input_size, num_experts)
        self.experts = ExpertBank(
            num_experts,
            input_size,
            bottleneck,
            output_size,
            activation=activation,
            implementation=implementation,
            bias=expert_bias,
        )

    def forward(self, x, mask=None):
        """Mixes the experts on every token of ``x``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]`` tokens.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real tokens: padded tokens are
            adapted too (the mixture is token-wise) but left out of the
            routing statistics.

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        if use_kernel(self.implementation, x):
            y, gates = dense_mixing.dense_moa(self.router, self.experts, x)
        else:
            gates = torch.softmax(self.router(x).float(), dim=-1)  # g
            y = self.experts.dense(x, gates)  # sum_i g_i A_i(x)
        if self.wants_routing():
            self.report(gates, mask)
        return y
