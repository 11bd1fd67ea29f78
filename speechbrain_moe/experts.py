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
* :meth:`ExpertBank.routed` -- top-k routing: each token's rows are gathered
  once, sorted by expert, and each expert multiplies only its own contiguous
  block (forward and backward written by hand, :class:`_RoutedExperts`), yet
  every expert's weights get a gradient tensor, so DDP never sees an unused
  parameter. :meth:`ExpertBank.grouped` runs the same kernel on rows the
  caller already sorted.

Authors
 * speechbrain-moe contributors 2026
"""

import math
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_moe.checks import check_positive


def _blocks(counts):
    """``(expert, start, end)`` of every non-empty block of sorted rows."""
    start = 0
    for i, count in enumerate(counts):
        if count:
            yield i, start, start + count
        start += count


def _activation_grad(activation, grad, pre, out=None):
    """Gradient of ``activation`` at ``pre`` (into ``out``, maybe ``grad``)."""
    ops, kind = torch.ops.aten, type(activation)
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


class _RoutedExperts(torch.autograd.Function):
    """Top-k routed bottleneck experts with a hand-written backward.

    Rows are the (token, choice) pairs sorted by expert; ``index[j]`` is the
    token of row ``j``; expert ``i`` owns one contiguous block of rows, which
    is processed on its own, forward and backward: gather its token rows, one
    ``addmm`` and one ``mm`` on the expert's weights (strided views of the
    stacked parameters, never copied), the routing weight on the narrow hidden
    activation, ``index_add_`` straight back into the token rows. No
    ``[rows, d]`` tensor is ever built whole, a block's temporaries stay in
    cache, and only the pre-activation ``[rows, hidden]`` is saved.
    """

    @staticmethod
    def run(x, index, row_weights, counts, activation, down, down_b, up, keep=True):
        """The forward computation; returns ``(out, pre)`` (``pre`` if ``keep``)."""
        out = x.new_zeros(x.shape[0], up.shape[-1])
        pre = x.new_empty(index.shape[0], down.shape[-1]) if keep else None
        for i, start, end in _blocks(counts):
            rows = index[start:end]
            block = pre[start:end] if keep else None
            block = torch.addmm(
                down_b[i], x.index_select(0, rows), down[:, i], out=block
            )
            hidden = activation(block).mul_(row_weights[start:end].unsqueeze(-1))
            out.index_add_(0, rows, hidden @ up[i])
        return out, pre

    @staticmethod
    def forward(ctx, x, index, row_weights, counts, activation, down, down_b, up):
        """Returns ``[tokens, output_size]`` (without the output bias)."""
        args = (x, index, row_weights, counts, activation, down, down_b, up)
        out, pre = _RoutedExperts.run(*args)
        ctx.save_for_backward(x, index, row_weights, pre, down, up)
        ctx.counts, ctx.activation = counts, activation
        return out

    @staticmethod
    def backward(ctx, grad):
        """Gradients of the tokens, row weights and expert parameters."""
        x, index, row_weights, pre, down, up = ctx.saved_tensors
        needs = ctx.needs_input_grad
        grad = grad.to(x.dtype)
        grad_x = torch.zeros_like(x) if needs[0] else None
        grad_w = torch.empty_like(row_weights) if needs[2] else None
        # Written block by block: only idle experts' slices need zeros.
        grad_down = torch.empty_like(down) if needs[5] else None
        grad_down_b = pre.new_empty(down.shape[1], down.shape[2]) if needs[6] else None
        grad_up = torch.empty_like(up) if needs[7] else None
        for i, count in enumerate(ctx.counts):
            if count == 0:
                for grad_param, view in (
                    (grad_down, 1),
                    (grad_down_b, 0),
                    (grad_up, 0),
                ):
                    if grad_param is not None:
                        grad_param.select(view, i).zero_()
        for i, start, end in _blocks(ctx.counts):
            rows = index[start:end]
            weight = row_weights[start:end].unsqueeze(-1)
            block_pre = pre[start:end]
            hidden = ctx.activation(block_pre)
            grad_out = grad.index_select(0, rows)
            grad_hidden = grad_out @ up[i].t()
            if needs[7]:
                torch.mm((hidden * weight).t(), grad_out, out=grad_up[i])
            if needs[2]:
                grad_w[start:end] = torch.einsum("rh,rh->r", grad_hidden, hidden)
            grad_pre = _activation_grad(
                ctx.activation, grad_hidden.mul_(weight), block_pre
            )
            if needs[5]:
                torch.mm(x.index_select(0, rows).t(), grad_pre, out=grad_down[:, i])
            if needs[6]:
                torch.sum(grad_pre, 0, out=grad_down_b[i])
            if needs[0]:
                grad_x.index_add_(0, rows, grad_pre @ down[:, i].t())
        return grad_x, None, grad_w, None, None, grad_down, grad_down_b, grad_up


class _SortedDispatch:
    """The top-k paths of :class:`ExpertBank`: rows sorted by expert."""

    def routed(self, x, experts, weights, counts=None):
        """Top-k routed experts: ``out_t = sum_j weights_tj E_{experts_tj}(x_t)``.

        The ``(token, choice)`` pairs are sorted by expert once; each expert
        then multiplies only its own contiguous block of rows (see
        :class:`_RoutedExperts`), so the cost is that of the *active*
        parameters. Every expert's parameters get a gradient tensor (zeros for
        an expert that received no row), as DDP needs.

        Arguments
        ---------
        x : torch.Tensor
            Tokens, shape ``[tokens, input_size]``.
        experts : torch.Tensor
            ``[tokens, k]`` expert index of each choice.
        weights : torch.Tensor
            ``[tokens, k]`` weight of each choice.
        counts : torch.Tensor, optional
            ``[num_experts]`` rows per expert (computed when not given).

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
        num_tokens, k = experts.shape
        flat = experts.reshape(-1)
        if counts is None:
            counts = torch.bincount(flat, minlength=self.num_experts)
        order = flat.argsort(stable=True)
        dtype = x.dtype
        gates = x.new_zeros(num_tokens, self.num_experts)
        gates = gates.scatter(1, experts, weights.to(dtype))
        index = torch.div(order, k, rounding_mode="floor")
        row_weights = weights.reshape(-1).index_select(0, order)
        out = self._sorted(x, index, row_weights, counts.tolist())
        # The output biases, weighted: one [tokens, N] x [N, out] product.
        return torch.addmm(out, gates, self.up_bias.to(dtype))

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

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(5, 8)
        >>> y = bank.grouped(x, [2, 0, 3])
        >>> torch.allclose(y[2:], bank.expert(2, x[2:]), atol=1e-6)
        True
        """
        if row_weights is None:
            row_weights = x.new_ones(x.shape[0])
        index = torch.arange(x.shape[0], device=x.device)
        out = self._sorted(x, index, row_weights, list(counts))
        owner = torch.repeat_interleave(
            torch.arange(len(counts), device=x.device),
            torch.as_tensor(list(counts), device=x.device),
        )
        bias = self.up_bias.to(x.dtype).index_select(0, owner)
        return out + row_weights.to(x.dtype).unsqueeze(-1) * bias

    def _sorted(self, x, index, row_weights, counts):
        """Runs :class:`_RoutedExperts` (without its graph under ``no_grad``).

        Under ``torch.autocast`` the experts compute in the autocast dtype,
        as the ``nn.Linear`` layers around them do: every operand is cast to
        it once, and the hand-written passes run with autocast off, so that
        no product inside them picks a dtype of its own.
        """
        device = x.device.type
        dtype, autocast = x.dtype, torch.is_autocast_enabled(device)
        if autocast:
            dtype = torch.get_autocast_dtype(device)
        args = (x.to(dtype), index, row_weights.to(dtype), counts, self.activation)
        args += tuple(p.to(dtype) for p in (self.down_weight, self.down_bias))
        args += (self.up_weight.to(dtype),)
        with torch.autocast(device, enabled=False) if autocast else nullcontext():
            if torch.is_grad_enabled():
                return _RoutedExperts.apply(*args)
            return _RoutedExperts.run(*args, keep=False)[0]  # keeps no activation


class _DenseMixing:
    """The dense path of :class:`ExpertBank`: every expert on every token."""

    def dense(self, x, gates=None):
        """Mixes all experts on every token: ``sum_i gates_i * E_i(x)``.

        Arguments
        ---------
        x : torch.Tensor
            Tokens, shape ``[..., input_size]``.
        gates : torch.Tensor, optional
            Mixing weights, shape ``[..., num_experts]``. ``None`` sums the
            experts with weight one (always-on shared experts).

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x, g = torch.randn(4, 8), torch.softmax(torch.randn(4, 3), -1)
        >>> loop = sum(g[:, i:i+1] * bank.expert(i, x) for i in range(3))
        >>> torch.allclose(bank.dense(x, g), loop, atol=1e-6)
        True
        """
        n, r = self.num_experts, self.bottleneck
        down = self.down_weight.reshape(self.input_size, n * r)
        return self.mix(F.linear(x, down.t(), self.down_bias.reshape(n * r)), gates)

    def mix(self, pre, gates=None):
        """Second half of :meth:`dense`, from the experts' pre-activations.

        A caller that computes ``x @ W_down + b_down`` together with another
        product of ``x`` (Dense-MoA: its router) reads and back-propagates
        through ``x`` once, then mixes here.

        Arguments
        ---------
        pre : torch.Tensor
            ``[..., num_experts * bottleneck]`` pre-activations.
        gates : torch.Tensor, optional
            ``[..., num_experts]`` mixing weights (None: all ones).

        Example
        -------
        >>> bank = ExpertBank(3, 8, 2, zero_init_up=False)
        >>> x = torch.randn(4, 8)
        >>> pre = x @ bank.down_weight.reshape(8, 6) + bank.down_bias.reshape(6)
        >>> torch.allclose(bank.mix(pre), bank.dense(x))
        True
        """
        n, r = self.num_experts, self.bottleneck
        hidden = self.activation(pre)
        up = self.up_weight.reshape(n * r, self.output_size)
        if gates is None:
            return F.linear(hidden, up.t(), self.up_bias.sum(0))
        gates = gates.to(hidden.dtype)
        hidden = (hidden.unflatten(-1, (n, r)) * gates.unsqueeze(-1)).flatten(-2)
        # The gated output biases ride along as N extra columns: one product
        # writes the [..., output_size] result (and one reads its gradient).
        hidden = torch.cat([hidden, gates], dim=-1)
        return hidden @ torch.cat([up, self.up_bias.to(up.dtype)], dim=0)


class ExpertBank(_DenseMixing, _SortedDispatch, nn.Module):
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

    def per_expert(self, x):
        """Applies expert ``i`` to the tokens in ``x[:, i]`` only.

        Arguments
        ---------
        x : torch.Tensor
            Shape ``[batch, num_experts, tokens, input_size]``.

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

    def expert(self, i, x):
        """Applies expert ``i`` alone (reference path, used by tests and docs).

        Arguments
        ---------
        i : int
            Expert index.
        x : torch.Tensor
            Shape ``[..., input_size]``.

        Example
        -------
        >>> ExpertBank(2, 8, 4).expert(0, torch.randn(3, 8)).shape
        torch.Size([3, 8])
        """
        hidden = self.activation(x @ self.down_weight[:, i] + self.down_bias[i])
        return hidden @ self.up_weight[i] + self.up_bias[i]

    def extra_repr(self):
        """Summary shown by ``print(module)``."""
        return (
            f"num_experts={self.num_experts}, input_size={self.input_size}, "
            f"bottleneck={self.bottleneck}, output_size={self.output_size}"
        )
