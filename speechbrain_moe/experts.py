"""A bank of bottleneck experts stored as stacked weights.

Every mixture in this package (Dense-MoA, Soft-MoA, the sparse MoE-Adapter)
owns one :class:`ExpertBank` and differs only in how it routes tokens to it.
The bank offers the three ways a router needs to call its experts, each
computed for all experts at once:

* :meth:`ExpertBank.dense` -- every expert sees every token, outputs mixed by
  per-token gates. Written as one bottleneck of width ``N * r``, so it costs
  what a single adapter of bottleneck ``N * r`` costs.
* :meth:`ExpertBank.per_expert` -- expert ``i`` sees only its own slots
  (Soft-MoA); one batched einsum over the expert axis.
* :meth:`ExpertBank.grouped` -- tokens sorted by expert (top-k routing); each
  expert touches only its own rows, yet every expert's weights stay in the
  graph, so DDP never sees an unused parameter.

Authors
 * speechbrain-moe contributors 2026
"""

import math

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive


class ExpertBank(nn.Module):
    """``num_experts`` bottleneck MLPs ``W_up act(W_down x + b_down) + b_up``.

    Arguments
    ---------
    num_experts : int
        Number of experts N.
    input_size : int
        Size d of the tokens entering the experts.
    bottleneck : int
        Hidden size r of every expert.
    output_size : int, optional
        Size of the experts' output (default: ``input_size``).
    activation : type
        Activation class applied between the projections.
    zero_init_up : bool
        Initialise the up-projection (weights and bias) to zero, so that an
        adapter built on the bank starts as the identity of its host network.
        The down-projection is always random, so every weight gets gradient
        from the second step on.

    Example
    -------
    >>> bank = ExpertBank(num_experts=4, input_size=16, bottleneck=2)
    >>> x = torch.randn(3, 5, 16)
    >>> gates = torch.softmax(torch.randn(3, 5, 4), dim=-1)
    >>> bank.dense(x, gates).shape
    torch.Size([3, 5, 16])
    >>> bank.per_expert(torch.randn(3, 4, 2, 16)).shape
    torch.Size([3, 4, 2, 16])
    """

    def __init__(
        self,
        num_experts,
        input_size,
        bottleneck,
        output_size=None,
        activation=nn.GELU,
        zero_init_up=True,
    ):
        super().__init__()
        check_positive(
            "ExpertBank",
            num_experts=num_experts,
            input_size=input_size,
            bottleneck=bottleneck,
        )
        output_size = input_size if output_size is None else output_size
        self.num_experts = num_experts
        self.input_size = input_size
        self.bottleneck = bottleneck
        self.output_size = output_size
        # Down weights are laid out [d, N, r]: the dense path reads them as one
        # [d, N*r] matrix and the per-expert path as N matrices, both as views.
        self.down_weight = nn.Parameter(
            torch.empty(input_size, num_experts, bottleneck)
        )
        self.down_bias = nn.Parameter(torch.zeros(num_experts, bottleneck))
        self.up_weight = nn.Parameter(torch.empty(num_experts, bottleneck, output_size))
        self.up_bias = nn.Parameter(torch.zeros(num_experts, output_size))
        self.activation = activation()
        self.zero_init_up = zero_init_up
        self.reset_parameters()

    def reset_parameters(self):
        """Initialises the weights like ``nn.Linear``, with a zero up-projection.

        Example
        -------
        >>> bank = ExpertBank(2, 8, 4)
        >>> bank.reset_parameters()
        >>> int(torch.count_nonzero(bank.up_weight))
        0
        """
        bound = 1.0 / math.sqrt(self.input_size)
        nn.init.uniform_(self.down_weight, -bound, bound)
        nn.init.zeros_(self.down_bias)
        if self.zero_init_up:
            nn.init.zeros_(self.up_weight)
        else:
            bound = 1.0 / math.sqrt(self.bottleneck)
            nn.init.uniform_(self.up_weight, -bound, bound)
        nn.init.zeros_(self.up_bias)

    def dense(self, x, gates=None):
        """Mixes all experts on every token: ``sum_i gates_i * E_i(x)``.

        Arguments
        ---------
        x : torch.Tensor
            Tokens, shape ``[..., input_size]``.
        gates : torch.Tensor, optional
            Mixing weights, shape ``[..., num_experts]``. ``None`` sums the
            experts with weight one (always-on shared experts).

        Returns
        -------
        torch.Tensor
            Shape ``[..., output_size]``.

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x, g = torch.randn(4, 8), torch.softmax(torch.randn(4, 3), -1)
        >>> loop = sum(g[:, i:i+1] * bank.expert(i, x) for i in range(3))
        >>> torch.allclose(bank.dense(x, g), loop, atol=1e-6)
        True
        """
        n, r = self.num_experts, self.bottleneck
        hidden = x @ self.down_weight.reshape(self.input_size, n * r)
        hidden = self.activation(hidden + self.down_bias.reshape(n * r))
        up = self.up_weight.reshape(n * r, self.output_size)
        if gates is None:
            return hidden @ up + self.up_bias.sum(0)
        gates = gates.to(hidden.dtype)
        hidden = (hidden.unflatten(-1, (n, r)) * gates.unsqueeze(-1)).flatten(-2)
        return hidden @ up + gates @ self.up_bias.to(hidden.dtype)

    def per_expert(self, x):
        """Applies expert ``i`` to the tokens in ``x[:, i]`` only.

        Arguments
        ---------
        x : torch.Tensor
            Shape ``[batch, num_experts, tokens, input_size]``.

        Returns
        -------
        torch.Tensor
            Shape ``[batch, num_experts, tokens, output_size]``.

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(2, 3, 5, 8)
        >>> y = bank.per_expert(x)
        >>> torch.allclose(y[:, 1], bank.expert(1, x[:, 1]), atol=1e-6)
        True
        """
        hidden = torch.einsum("bnpd,dnr->bnpr", x, self.down_weight)
        hidden = self.activation(hidden + self.down_bias.unsqueeze(1))
        out = torch.einsum("bnpr,nro->bnpo", hidden, self.up_weight)
        return out + self.up_bias.unsqueeze(1)

    def grouped(self, x, counts, row_weights=None):
        """Applies each expert to its contiguous block of rows.

        Arguments
        ---------
        x : torch.Tensor
            Rows sorted by expert, shape ``[rows, input_size]``.
        counts : list of int
            Number of rows of each expert, in expert order (sums to ``rows``).
        row_weights : torch.Tensor, optional
            ``[rows]`` weight of each row's output (applied to the narrow
            hidden activation, which is cheaper than scaling the output).

        Returns
        -------
        torch.Tensor
            Shape ``[rows, output_size]``.

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(5, 8)
        >>> y = bank.grouped(x, [2, 0, 3])
        >>> torch.allclose(y[2:], bank.expert(2, x[2:]), atol=1e-6)
        True
        """
        outputs = []
        # Sort-then-loop is the portable path: each expert multiplies only its
        # own rows; the stacked parameters collect a gradient for every expert
        # (zeros for an expert that got no row in this batch). The per-expert
        # views come from one ``unbind`` each: its backward stacks the N
        # gradients once, where N indexing views would each materialise (and
        # then sum) a full-size zero gradient of the stacked parameter.
        downs = self.down_weight.unbind(1)
        down_biases = self.down_bias.unbind(0)
        ups = self.up_weight.unbind(0)
        up_biases = self.up_bias.unbind(0)
        row_weight_blocks = (
            [None] * len(counts)
            if row_weights is None
            else row_weights.unsqueeze(-1).split(list(counts))
        )
        blocks = zip(x.split(list(counts)), row_weight_blocks)
        for i, (rows, weight) in enumerate(blocks):
            if rows.shape[0] == 0:
                continue
            hidden = self.activation(rows @ downs[i] + down_biases[i])
            if weight is None:
                outputs.append(hidden @ ups[i] + up_biases[i])
            else:
                outputs.append((hidden * weight) @ ups[i] + weight * up_biases[i])
        if not outputs:
            # No row at all: keep every parameter in the graph for DDP.
            touch = self._zero_touch() + x.sum()
            if row_weights is not None:
                touch = touch + row_weights.sum()
            return x.new_zeros(0, self.output_size) + 0.0 * touch
        return torch.cat(outputs)

    def expert(self, i, x):
        """Applies expert ``i`` alone (reference path, used by tests and docs).

        Arguments
        ---------
        i : int
            Expert index.
        x : torch.Tensor
            Shape ``[..., input_size]``.

        Returns
        -------
        torch.Tensor
            Shape ``[..., output_size]``.

        Example
        -------
        >>> ExpertBank(2, 8, 4).expert(0, torch.randn(3, 8)).shape
        torch.Size([3, 8])
        """
        hidden = self.activation(x @ self.down_weight[:, i] + self.down_bias[i])
        return hidden @ self.up_weight[i] + self.up_bias[i]

    def _zero_touch(self):
        """A zero that depends on every parameter (keeps them in the graph)."""
        return sum(p.sum() for p in self.parameters()) * 0.0

    def extra_repr(self):
        """Summary shown by ``print(module)``."""
        return (
            f"num_experts={self.num_experts}, input_size={self.input_size}, "
            f"bottleneck={self.bottleneck}, output_size={self.output_size}"
        )
