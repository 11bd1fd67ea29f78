"""Top-k routed bottleneck experts with a hand-written backward pass.

What it computes: for rows that are ``(token, choice)`` pairs sorted by
expert, ``out[index[j]] += row_weights[j] * (W_up_e act(W_down_e x[index[j]]
+ b_down_e))`` with ``e`` the expert owning row ``j`` (the output biases are
added by the caller) -- the same function as the plain path of
:meth:`speechbrain_moe.experts.ExpertBank.routed`, which loops over the
experts with ``index_select`` / ``index_add_`` and lets autograd
differentiate it.

Why it exists: expert ``i`` owns one contiguous block of rows, processed on
its own in both passes: gather its token rows, one ``addmm`` and one ``mm``
on the expert's weights (strided views of the stacked parameters, never
copied), the routing weight applied to the narrow hidden activation,
``index_add_`` straight back into the token rows. No ``[rows, d]`` tensor is
built whole, a block's temporaries stay in cache, only the pre-activation
``[rows, hidden]`` is saved, and nothing at all is kept at inference. It was
timed on a 2-core CPU only (torch 2.11): with it, the MoE-Adapter bridge at
the paper's shape takes 0.83x the dense projector's training step (with the
input gradient) and 0.81x its inference step, at 0.96x and 0.94x its peak
memory (``benchmarks/README.md``, "Findings"; ``benchmarks/results/bridge.json``).
Those are ratios to the dense projector: the committed reports hold no
paired plain-vs-kernel ratio yet. ``auto`` therefore takes it on the CPU
only (:data:`speechbrain_moe.kernels.KERNEL_DEVICES`).

How it is tested: ``tests/test_kernels_equal.py`` compares it with the plain
path (values, the gradients of the tokens, the routing weights and every
expert parameter; float32 and bf16 / fp16 CPU autocast; with and without
padding), ``tests/test_sparse_moe.py`` with a token-by-token brute force
(also idle experts: every parameter still gets a gradient tensor, as DDP
with ``find_unused_parameters=False`` needs).

Authors
 * speechbrain-moe contributors 2026
"""

from contextlib import nullcontext

import torch

from speechbrain_moe.kernels.activations import activation_grad


def _blocks(counts):
    """``(expert, start, end)`` of every non-empty block of sorted rows."""
    start = 0
    for i, count in enumerate(counts):
        if count:
            yield i, start, start + count
        start += count


class RoutedExperts(torch.autograd.Function):
    """Routed experts on rows sorted by expert (see the module's notes).

    ``apply(x, index, row_weights, counts, activation, down, down_b, up)``:
    ``x`` ``[tokens, d]``; ``index`` ``[rows]`` token of each row;
    ``row_weights`` ``[rows]``; ``counts`` list of rows per expert;
    ``activation`` the expert activation module; ``down`` ``[d, N, r]``,
    ``down_b`` ``[N, r]``, ``up`` ``[N, r, d_out]`` the stacked weights.
    Returns ``[tokens, d_out]`` without the output biases.

    Example
    -------
    >>> x, down = torch.randn(3, 4), torch.randn(4, 2, 5)
    >>> down_b, up = torch.zeros(2, 5), torch.randn(2, 5, 4)
    >>> index, w = torch.tensor([0, 2, 1]), torch.ones(3)
    >>> y = RoutedExperts.apply(x, index, w, [2, 1], torch.nn.GELU(), down, down_b, up)
    >>> expected = torch.nn.functional.gelu(x[1] @ down[:, 1]) @ up[1]
    >>> torch.allclose(y[1], expected, atol=1e-5)
    True
    """

    @staticmethod
    def run(x, index, row_weights, counts, activation, down, down_b, up, keep=True):
        """The forward computation, also used alone at inference.

        Arguments
        ---------
        x, index, row_weights, counts, activation, down, down_b, up
            As :class:`RoutedExperts` takes them.
        keep : bool
            Keep the pre-activations (for the backward pass).

        Returns
        -------
        out : torch.Tensor
            ``[tokens, d_out]`` without the output biases.
        pre : torch.Tensor or None
            ``[rows, r]`` pre-activations (None unless ``keep``).
        """
        out = x.new_zeros(x.shape[0], up.shape[-1])
        pre = x.new_empty(index.shape[0], down.shape[-1]) if keep else None
        for i, start, end in _blocks(counts):
            rows = index[start:end]
            block = pre[start:end] if keep else None
            block = torch.addmm(
                down_b[i], x.index_select(0, rows), down[:, i], out=block
            )
            hidden = activation(block)
            weight = row_weights[start:end].unsqueeze(-1)
            # In place unless the activation returned its input (nn.Identity:
            # LoRA experts), whose pre-activations the backward pass reads.
            hidden = hidden * weight if hidden is block else hidden.mul_(weight)
            out.index_add_(0, rows, hidden @ up[i])
        return out, pre

    @staticmethod
    def forward(ctx, x, index, row_weights, counts, activation, down, down_b, up):
        """Runs :meth:`run` and keeps what the backward pass needs.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        x, index, row_weights, counts, activation, down, down_b, up
            As :class:`RoutedExperts` takes them.

        Returns
        -------
        torch.Tensor
            ``[tokens, d_out]`` without the output biases.
        """
        args = (x, index, row_weights, counts, activation, down, down_b, up)
        out, pre = RoutedExperts.run(*args)
        ctx.save_for_backward(x, index, row_weights, pre, down, up)
        ctx.counts, ctx.activation = counts, activation
        return out

    @staticmethod
    def backward(ctx, grad):
        """Gradients of the tokens, row weights and expert parameters.

        Arguments
        ---------
        ctx : torch.autograd.function.FunctionCtx
            Autograd's context.
        grad : torch.Tensor
            Gradient of the output, ``[tokens, d_out]``.

        Returns
        -------
        tuple
            One gradient (or None) per input of :meth:`forward`.
        """
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
            grad_pre = activation_grad(
                ctx.activation, grad_hidden.mul_(weight), block_pre
            )
            if needs[5]:
                torch.mm(x.index_select(0, rows).t(), grad_pre, out=grad_down[:, i])
            if needs[6]:
                torch.sum(grad_pre, 0, out=grad_down_b[i])
            if needs[0]:
                grad_x.index_add_(0, rows, grad_pre @ down[:, i].t())
        return grad_x, None, grad_w, None, None, grad_down, grad_down_b, grad_up


def sorted_experts(bank, x, index, row_weights, counts):
    """Runs :class:`RoutedExperts` with the weights of an ``ExpertBank``.

    Under ``torch.autocast`` the experts compute in the autocast dtype, as
    the ``nn.Linear`` layers around them do: every operand is cast to it
    once, and the hand-written passes run with autocast off, so that no
    product inside them picks a dtype of its own. Without gradient the
    forward runs alone and keeps no activation.

    Arguments
    ---------
    bank : speechbrain_moe.experts.ExpertBank
        The experts (their stacked weights and activation).
    x : torch.Tensor
        ``[tokens, input_size]``.
    index : torch.Tensor
        ``[rows]`` token of each row, rows sorted by expert.
    row_weights : torch.Tensor
        ``[rows]`` weight of each row's output.
    counts : list of int
        Rows of each expert.

    Returns
    -------
    torch.Tensor
        ``[tokens, output_size]``, without the output biases.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank = ExpertBank(2, 4, 3, zero_init_up=False)
    >>> x = torch.randn(3, 4)
    >>> y = sorted_experts(bank, x, torch.tensor([0, 1, 2]), torch.ones(3), [1, 2])
    >>> torch.allclose(y[2], bank.expert(1, x[2]) - bank.up_bias[1], atol=1e-6)
    True
    """
    device = x.device.type
    dtype, autocast = x.dtype, torch.is_autocast_enabled(device)
    if autocast:
        dtype = torch.get_autocast_dtype(device)
    args = (x.to(dtype), index, row_weights.to(dtype), counts, bank.activation)
    down_bias = bank.down_bias
    if down_bias is None:  # a bank without biases (LoRA experts): add zeros
        down_bias = bank.down_weight.new_zeros(bank.num_experts, bank.bottleneck)
    args += tuple(p.to(dtype) for p in (bank.down_weight, down_bias))
    args += (bank.up_weight.to(dtype),)
    with torch.autocast(device, enabled=False) if autocast else nullcontext():
        if torch.is_grad_enabled():
            return RoutedExperts.apply(*args)
        return RoutedExperts.run(*args, keep=False)[0]


def routed(bank, x, experts, weights, counts=None):
    """The kernel behind :meth:`ExpertBank.routed
    <speechbrain_moe.experts.ExpertBank.routed>`: sorts the ``(token,
    choice)`` pairs by expert once, then runs :func:`sorted_experts`.

    Arguments
    ---------
    bank : speechbrain_moe.experts.ExpertBank
        The experts.
    x : torch.Tensor
        ``[tokens, input_size]``.
    experts : torch.Tensor
        ``[tokens, k]`` expert of each choice.
    weights : torch.Tensor
        ``[tokens, k]`` weight of each choice.
    counts : torch.Tensor, optional
        ``[num_experts]`` rows per expert (computed when not given).

    Returns
    -------
    torch.Tensor
        ``[tokens, output_size]``.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank = ExpertBank(3, 4, 2, zero_init_up=False)
    >>> x, experts = torch.randn(2, 4), torch.tensor([[0, 2], [1, 0]])
    >>> w = torch.tensor([[0.5, 0.5], [1.0, 0.0]])
    >>> expected = 0.5 * (bank.expert(0, x[0]) + bank.expert(2, x[0]))
    >>> torch.allclose(routed(bank, x, experts, w)[0], expected, atol=1e-6)
    True
    """
    num_tokens, k = experts.shape
    flat = experts.reshape(-1)
    if counts is None:
        counts = torch.bincount(flat, minlength=bank.num_experts)
    order = flat.argsort(stable=True)
    gates = x.new_zeros(num_tokens, bank.num_experts)
    gates = gates.scatter(1, experts, weights.to(x.dtype))
    index = torch.div(order, k, rounding_mode="floor")
    row_weights = weights.reshape(-1).index_select(0, order)
    out = sorted_experts(bank, x, index, row_weights, counts.tolist())
    if bank.up_bias is None:  # a bank without biases (LoRA experts)
        return out
    # The output biases, weighted: one [tokens, N] x [N, out] product.
    return torch.addmm(out, gates.to(out.dtype), bank.up_bias.to(out.dtype))


def grouped(bank, x, counts, row_weights=None):
    """The kernel behind :meth:`ExpertBank.grouped
    <speechbrain_moe.experts.ExpertBank.grouped>`: rows already sorted by
    expert.

    Arguments
    ---------
    bank : speechbrain_moe.experts.ExpertBank
        The experts.
    x : torch.Tensor
        ``[rows, input_size]`` sorted by expert.
    counts : list of int
        Rows of each expert.
    row_weights : torch.Tensor, optional
        ``[rows]`` weight of each row's output (None: one).

    Returns
    -------
    torch.Tensor
        ``[rows, output_size]``.

    Example
    -------
    >>> from speechbrain_moe.experts import ExpertBank
    >>> bank = ExpertBank(2, 4, 3, zero_init_up=False)
    >>> x = torch.randn(3, 4)
    >>> torch.allclose(grouped(bank, x, [1, 2])[1:], bank.expert(1, x[1:]), atol=1e-6)
    True
    """
    if row_weights is None:
        row_weights = x.new_ones(x.shape[0])
    index = torch.arange(x.shape[0], device=x.device)
    out = sorted_experts(bank, x, index, row_weights, list(counts))
    if bank.up_bias is None:  # a bank without biases (LoRA experts)
        return out
    owner = torch.repeat_interleave(
        torch.arange(len(counts), device=x.device),
        torch.as_tensor(list(counts), device=x.device),
    )
    bias = bank.up_bias.to(out.dtype).index_select(0, owner)
    return out + row_weights.to(out.dtype).unsqueeze(-1) * bias
