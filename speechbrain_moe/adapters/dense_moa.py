"""Dense Mixture of Adapters: every expert sees every token, softly gated.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.routing import RoutedModule


class DenseMoA(RoutedModule):
    """``y = sum_i softmax(W_r x + b_r)_i A_i(x)`` over N bottleneck experts.

    The experts run as one bottleneck of width ``N * r`` (see
    :meth:`ExpertBank.dense`), so 14 experts of bottleneck 1 cost what a single
    adapter of bottleneck 14 costs: no loop over experts, no ``[B, L, d, N]``
    tensor.

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
    ):
        check_positive("DenseMoA", num_experts=num_experts, bottleneck=bottleneck)
        super().__init__(num_experts)
        self.router = nn.Linear(input_size, num_experts)
        self.experts = ExpertBank(
            num_experts, input_size, bottleneck, output_size, activation=activation
        )

    def forward(self, x, mask=None):
        """Mixes the experts on every token of ``x``.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]``.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real tokens (used for statistics only:
            routing is per token).

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        gates = torch.softmax(self.router(x).float(), dim=-1)
        self.report(gates, mask)
        return self.experts.dense(x, gates)
