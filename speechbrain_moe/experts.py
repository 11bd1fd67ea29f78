"""A bank of bottleneck experts stored as stacked weights.

Every mixture in this package (Dense-MoA, Soft-MoA, the sparse MoE-Adapter)
owns one :class:`ExpertBank` and differs only in how it routes tokens to it.

Notation (as in ``docs/design.md``)::

    N experts, bottleneck (hidden size) r, tokens x of size d
    E_i(x) = W_up[i]^T act(W_down[:, i]^T x + b_down[i]) + b_up[i]
    W_down [d, N, r]   b_down [N, r]   W_up [N, r, d_out]   b_up [N, d_out]

With ``bias=False`` the bank holds no ``b_down`` / ``b_up`` (both attributes
are ``None``), and with ``activation=nn.Identity`` each expert is the
low-rank product ``W_up[i]^T W_down[:, i]^T x``: the LoRA experts of
:mod:`speechbrain_moe.adapters.lora_experts` are this bank.

The bank offers the three ways a router calls its experts, each computed for
all experts at once:

* :meth:`ExpertBank.dense` -- every expert on every token, mixed by per-token
  gates g: ``y = sum_i g_i E_i(x)`` (two einsums over the stacked weights,
  i.e. one bottleneck of width ``N * r``);
* :meth:`ExpertBank.per_expert` -- expert ``i`` sees only its own slots
  (Soft-MoA); one batched einsum over the expert axis;
* :meth:`ExpertBank.routed` -- top-k routing: ``y_t = sum_j w_tj
  E_{e_tj}(x_t)``; each expert gathers its tokens (``index_select``), runs on
  them and adds its weighted output back (``index_add_``).
  :meth:`ExpertBank.grouped` runs each expert on a block of rows the caller
  already sorted by expert.

These are the *plain* implementations, differentiated by autograd. With
``implementation="kernel"`` (or ``"auto"`` on a device listed in
:data:`speechbrain_moe.kernels.KERNEL_DEVICES`) ``dense``, ``routed`` and
``grouped`` run the faster versions of :mod:`speechbrain_moe.kernels`
instead; the values, gradients and parameters are the same.

Authors
 * speechbrain-moe contributors 2026
"""

import math

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive
from speechbrain_moe.kernels import check_implementation, dense_mixing, use_kernel
from speechbrain_moe.kernels import routed_experts as routed_kernel


def compute_dtype(x):
    """The dtype the experts compute in: autocast's when it is on (as the
    ``nn.Linear`` layers around them), else ``x``'s.

    Arguments
    ---------
    x : torch.Tensor
        The experts' input.

    Returns
    -------
    torch.dtype

    Example
    -------
    >>> with torch.autocast("cpu", dtype=torch.bfloat16):
    ...     compute_dtype(torch.zeros(1))
    torch.bfloat16
    """
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


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
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"``: which implementation
        :meth:`dense`, :meth:`routed` and :meth:`grouped` run (see
        :mod:`speechbrain_moe.kernels`; same values either way).
    bias : bool
        Give every expert its two biases (``down_bias`` ``[N, r]``,
        ``up_bias`` ``[N, d_out]``); False: no biases (both attributes are
        ``None``), as in LoRA experts.

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
        implementation="auto",
        bias=True,
    ):
        super().__init__()
        check_positive(
            "ExpertBank",
            num_experts=num_experts,
            input_size=input_size,
            bottleneck=bottleneck,
        )
        self.implementation = check_implementation("ExpertBank", implementation)
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
        # (Registered in this order: down_weight, down_bias, up_weight, up_bias.)
        self.register_parameter(
            "down_bias",
            nn.Parameter(torch.zeros(num_experts, bottleneck)) if bias else None,
        )
        self.up_weight = nn.Parameter(torch.empty(num_experts, bottleneck, output_size))
        self.register_parameter(
            "up_bias",
            nn.Parameter(torch.zeros(num_experts, output_size)) if bias else None,
        )
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
        if self.zero_init_up:
            nn.init.zeros_(self.up_weight)
        else:
            bound = 1.0 / math.sqrt(self.bottleneck)
            nn.init.uniform_(self.up_weight, -bound, bound)
        for bias in (self.down_bias, self.up_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def expert(self, i, x):
        """Applies expert ``i`` alone: ``E_i(x)``.

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
        # Biases in the product's dtype, as nn.Linear adds them under autocast.
        pre = x @ self.down_weight[:, i]
        if self.down_bias is not None:
            pre = pre + self.down_bias[i].to(pre.dtype)
        out = self.activation(pre) @ self.up_weight[i]
        if self.up_bias is None:
            return out
        return out + self.up_bias[i].to(out.dtype)

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
        if use_kernel(self.implementation, x):
            return dense_mixing.dense(self, x, gates)
        # h_i = act(W_down_i x + b_down_i) for every expert i: [..., N, r]
        # (Biases in the product's dtype, as nn.Linear adds them under autocast.)
        pre = torch.einsum("...d,dnr->...nr", x, self.down_weight)
        if self.down_bias is not None:
            pre = pre + self.down_bias.to(pre.dtype)
        hidden = self.activation(pre)
        if gates is None:  # y = sum_i E_i(x)
            out = torch.einsum("...nr,nro->...o", hidden, self.up_weight)
            if self.up_bias is None:
                return out
            return out + self.up_bias.sum(0).to(out.dtype)
        # y = sum_i g_i (W_up_i h_i + b_up_i)
        gates = gates.to(hidden.dtype)
        out = torch.einsum("...nr,nro->...o", hidden * gates[..., None], self.up_weight)
        if self.up_bias is None:
            return out
        return out + (gates @ self.up_bias.to(gates.dtype)).to(out.dtype)

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
        pre = torch.einsum("bnpd,dnr->bnpr", x, self.down_weight)
        if self.down_bias is not None:
            pre = pre + self.down_bias.unsqueeze(1).to(pre.dtype)
        out = torch.einsum("bnpr,nro->bnpo", self.activation(pre), self.up_weight)
        if self.up_bias is None:
            return out
        return out + self.up_bias.unsqueeze(1).to(out.dtype)

    def routed(self, x, experts, weights, counts=None):
        """Top-k routed experts: ``out_t = sum_j weights_tj E_{experts_tj}(x_t)``.

        Each expert runs on the tokens routed to it only, so the cost is that
        of the *active* parameters. Every expert's parameters get a gradient
        tensor (zeros for an expert that received no token), as DDP with
        ``find_unused_parameters=False`` needs.

        Arguments
        ---------
        x : torch.Tensor
            Tokens, shape ``[tokens, input_size]``.
        experts : torch.Tensor
            ``[tokens, k]`` expert index of each choice.
        weights : torch.Tensor
            ``[tokens, k]`` weight of each choice.
        counts : torch.Tensor, optional
            ``[num_experts]`` choices per expert (the kernel's block sizes;
            computed when not given, unused by the plain path).

        Returns
        -------
        torch.Tensor
            ``[tokens, output_size]``, in the autocast dtype under autocast.

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(4, 8)
        >>> experts = torch.tensor([[0, 2], [1, 2], [2, 0], [0, 1]])
        >>> weights = torch.softmax(torch.randn(4, 2), dim=-1)
        >>> gates = torch.zeros(4, 3).scatter(1, experts, weights)
        >>> torch.allclose(bank.routed(x, experts, weights), bank.dense(x, gates), atol=1e-6)
        True
        """
        if use_kernel(self.implementation, x):
            return routed_kernel.routed(self, x, experts, weights, counts)
        dtype = compute_dtype(x)
        out = x.new_zeros(x.shape[0], self.output_size, dtype=dtype)
        for i in range(self.num_experts):  # every expert, even an idle one
            # The (token, choice) pairs that picked expert i.
            token, choice = torch.where(experts == i)
            weight = weights[token, choice].unsqueeze(-1)
            expert_out = weight * self.expert(i, x.index_select(0, token))
            out.index_add_(0, token, expert_out.to(dtype))
        return out

    def grouped(self, x, counts, row_weights=None):
        """Applies each expert to its contiguous block of rows.

        Arguments
        ---------
        x : torch.Tensor
            Rows sorted by expert, shape ``[rows, input_size]``.
        counts : list of int
            Number of rows of each expert, in expert order (sums to ``rows``).
        row_weights : torch.Tensor, optional
            ``[rows]`` weight of each row's output.

        Returns
        -------
        torch.Tensor
            ``[rows, output_size]``.

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(5, 8)
        >>> y = bank.grouped(x, [2, 0, 3])
        >>> torch.allclose(y[2:], bank.expert(2, x[2:]), atol=1e-6)
        True
        """
        if use_kernel(self.implementation, x):
            return routed_kernel.grouped(self, x, counts, row_weights)
        dtype = compute_dtype(x)
        blocks = x.split([int(count) for count in counts])
        out = torch.cat(
            [self.expert(i, block).to(dtype) for i, block in enumerate(blocks)]
        )
        if row_weights is None:
            return out
        return out * row_weights.to(dtype).unsqueeze(-1)

    def extra_repr(self):
        """Summary shown by ``print(module)``.

        Returns
        -------
        str

        Example
        -------
        >>> ExpertBank(2, 8, 4).extra_repr()
        'num_experts=2, input_size=8, bottleneck=4, output_size=8, implementation=auto'
        >>> ExpertBank(2, 8, 4, bias=False).extra_repr()
        'num_experts=2, input_size=8, bottleneck=4, output_size=8, implementation=auto, bias=False'
        """
        text = (
            f"num_experts={self.num_experts}, input_size={self.input_size}, "
            f"bottleneck={self.bottleneck}, output_size={self.output_size}, "
            f"implementation={self.implementation}"
        )
        return text if self.up_bias is not None else text + ", bias=False"
