"""Dense Mixture of Adapters: every expert sees every token, softly gated.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_moe.checks import check_positive
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.routing import RoutedModule


class DenseMoA(RoutedModule):
    """``y = sum_i softmax(W_r x + b_r)_i A_i(x)`` over N bottleneck experts.

    The experts run as one bottleneck of width ``N * r`` (see
    :meth:`ExpertBank.dense`), and the router shares their input product, so
    14 experts of bottleneck 1 cost what a single adapter of bottleneck 15
    costs: no loop over experts, no ``[B, L, d, N]`` tensor.

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
        """Mixes the experts on every token of ``x``."""
        bank, n = self.experts, self.num_experts
        # Router and down-projections as one product: x is read once, and
        # its gradient is written by one product instead of two plus a sum.
        down = bank.down_weight.reshape(bank.input_size, -1).t()
        weight = torch.cat([self.router.weight, down.to(self.router.weight.dtype)])
        bias = torch.cat([self.router.bias, bank.down_bias.reshape(-1)])
        logits, pre = F.linear(x, weight, bias).split([n, weight.shape[0] - n], -1)
        gates = torch.softmax(logits.float(), dim=-1)
        self.report(gates, mask)
        return bank.mix(pre, gates)
