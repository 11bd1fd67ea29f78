"""Bridges: adapters that change width, from stacked audio frames to an LLM.

* :class:`DenseProjector`: ``Linear -> activation -> Linear``, the projector of
  SpeechBrain's speech-LLM recipe, with a free hidden size (so that it can be
  matched in size to the MoE-Adapter);
* :class:`MoEAdapterBridge`: the MoE-Adapter (fuse ``Linear`` -> sparse top-k
  :class:`~speechbrain_moe.adapters.SparseMoE` with shared experts ->
  aggregation -> ``LayerNorm``);
* :class:`SoftMoABridge`: the same frame with a residual Soft-MoA.

Each takes ``(input_size, output_size, **settings)``; the packaged YAML files
``speechbrain_moe/hparams/bridges/<name>.yaml`` hold their settings.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.adapters.moe import SparseMoE
from speechbrain_moe.adapters.soft_moa import SoftMoA
from speechbrain_moe.experts import _activation_grad


class _ActivationLinear(torch.autograd.Function):
    """``linear(activation(pre))`` that saves ``pre`` only.

    Forward: row chunks of at most :attr:`CHUNK` elements, so the activation
    is never a full ``[tokens, hidden]`` tensor (no large allocation, the
    chunk stays in cache). Backward: the activation is recomputed into one
    buffer that then receives the hidden gradient and, in place, the
    pre-activation gradient: one ``[tokens, hidden]`` allocation where
    autograd makes three, and one fewer tensor kept between the passes.
    """

    CHUNK = 1 << 22

    @staticmethod
    def forward(ctx, pre, activation, weight, bias):
        """``activation(pre) @ weight^T + bias``."""
        dtype = pre.dtype
        weight_t = weight.to(dtype).t()
        flat = pre.reshape(-1, pre.shape[-1])
        out = pre.new_empty(flat.shape[0], weight.shape[0])
        rows = max(256, _ActivationLinear.CHUNK // max(1, flat.shape[-1]))
        for start in range(0, flat.shape[0], rows):
            hidden = activation(flat[start : start + rows])
            if bias is None:
                torch.mm(hidden, weight_t, out=out[start : start + rows])
            else:
                torch.addmm(
                    bias.to(dtype), hidden, weight_t, out=out[start : start + rows]
                )
        ctx.save_for_backward(pre, weight)
        ctx.activation, ctx.has_bias = activation, bias is not None
        return out.view(*pre.shape[:-1], weight.shape[0])

    @staticmethod
    def backward(ctx, grad):
        """Gradients of ``pre``, ``weight`` and ``bias``."""
        pre, weight = ctx.saved_tensors
        flat_pre = pre.reshape(-1, pre.shape[-1])
        flat = grad.reshape(-1, grad.shape[-1]).to(pre.dtype)
        buffer = ctx.activation(flat_pre)
        grad_weight = (flat.t() @ buffer).to(weight.dtype)
        grad_bias = flat.sum(0).to(weight.dtype) if ctx.has_bias else None
        torch.mm(flat, weight.to(pre.dtype), out=buffer)
        _activation_grad(ctx.activation, buffer, flat_pre, out=buffer)
        return buffer.view(pre.shape), None, grad_weight, grad_bias


class RecomputedMLP(nn.Sequential):
    """``Linear -> activation -> Linear`` keeping no activation output.

    Same parameters and state-dict keys as the ``nn.Sequential`` it
    replaces (``0.*`` and ``2.*``), same values and gradients; the backward
    pass recomputes the activation from the first layer's output instead of
    storing it, and neither pass allocates more than one ``[tokens,
    hidden]`` tensor (see :class:`_ActivationLinear`).

    Arguments
    ---------
    input_size : int
        Input width.
    hidden_size : int
        Hidden width.
    output_size : int
        Output width.
    activation : type
        Activation class.

    Example
    -------
    >>> import torch
    >>> mlp = RecomputedMLP(4, 8, 3)
    >>> x = torch.randn(2, 4)
    >>> torch.allclose(mlp(x), nn.Sequential.forward(mlp, x))
    True
    """

    #: Up to this many weight elements, inference runs on blocks of rows.
    CACHED_WEIGHTS = 1 << 22

    def __init__(self, input_size, hidden_size, output_size, activation=nn.SiLU):
        super().__init__(
            nn.Linear(input_size, hidden_size),
            activation(),
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, x):
        """Applies the MLP."""
        first, activation, last = self
        if torch.is_grad_enabled():
            return _ActivationLinear.apply(first(x), activation, last.weight, last.bias)
        # Inference. Small weights stay in cache: run both layers on blocks of
        # rows, never allocating the [tokens, hidden] tensor (peak memory, and
        # fresh pages on each call). Large weights would be re-read per
        # block: one block, activated in place.
        flat, out = x.reshape(-1, x.shape[-1]), None
        rows = max(1, flat.shape[0])
        if first.weight.numel() + last.weight.numel() <= self.CACHED_WEIGHTS:
            rows = max(256, (_ActivationLinear.CHUNK >> 2) // first.out_features)
        step = max(256, _ActivationLinear.CHUNK // first.out_features)
        for start in range(0, max(1, flat.shape[0]), rows):
            hidden = first(flat[start : start + rows])
            for part in hidden.split(step):
                part.copy_(activation(part))
            if out is None:  # the dtype autocast chose
                out = hidden.new_empty(flat.shape[0], last.out_features)
            weight, bias = last.weight.to(hidden.dtype), last.bias.to(hidden.dtype)
            torch.addmm(bias, hidden, weight.t(), out=out[start : start + rows])
        return out.view(*x.shape[:-1], last.out_features)


class DenseProjector(nn.Module):
    """The dense baseline bridge: ``Linear -> activation -> Linear``.

    This is the projector of SpeechBrain's speech-LLM recipe (a two-block
    ``VanillaNN`` of the LLM width over stacked frames) with a free hidden
    size, so that it can be matched in size to the MoE-Adapter.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    hidden_size : int, optional
        Hidden width (default ``output_size``).
    activation : type
        Activation class.

    Example
    -------
    >>> import torch
    >>> proj = DenseProjector(20, 8, hidden_size=16)
    >>> proj(torch.randn(2, 3, 20)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, input_size, output_size, hidden_size=None, activation=nn.ReLU):
        super().__init__()
        hidden_size = output_size if hidden_size is None else hidden_size
        self.net = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            activation(),
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, x, mask=None):
        """Projects every frame."""
        del mask
        return self.net(x)


class MoEAdapterBridge(nn.Module):
    """The paper's MoE-Adapter bridge.

    ``fuse`` (Linear to ``fused_size``) -> :class:`SparseMoE` (LayerNorm input,
    ``num_experts`` SiLU experts ``fused -> expert_hidden -> output_size``,
    ``top_k`` per token, optional shared experts, balance and z losses in
    ``aux_loss``) -> aggregation (``Linear -> SiLU -> Linear`` of width
    ``aggregation_hidden``, or one Linear when it is None) -> LayerNorm.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    fused_size : int
        Width after the fuse layer.
    expert_hidden : int
        Hidden size of each expert.
    aggregation_hidden : int, optional
        Hidden size of the aggregation MLP (None: a single Linear).
    **moe_settings
        The other settings of :class:`SparseMoE` (``num_experts`` 8,
        ``top_k`` 4, ``num_shared_experts``, ``routing``,
        ``balance_loss_weight``, ``z_loss_weight``, ``bias_balancing``).

    Example
    -------
    >>> import torch
    >>> bridge = MoEAdapterBridge(20, 8, fused_size=12, num_experts=4, top_k=2,
    ...                           expert_hidden=6, aggregation_hidden=16)
    >>> y = bridge(torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool))
    >>> y.shape, bridge.moe.aux_loss.shape
    (torch.Size([2, 3, 8]), torch.Size([]))
    """

    def __init__(
        self,
        input_size,
        output_size,
        fused_size=2560,
        expert_hidden=1280,
        aggregation_hidden=None,
        **moe_settings,
    ):
        super().__init__()
        self.fuse = nn.Linear(input_size, fused_size)
        moe_settings = {"num_experts": 8, "top_k": 4, **moe_settings}
        self.moe = SparseMoE(
            fused_size,
            hidden_size=expert_hidden,
            output_size=output_size,
            zero_init_output=False,
            **moe_settings,
        )
        if aggregation_hidden:
            self.aggregate = RecomputedMLP(
                output_size, aggregation_hidden, output_size, nn.SiLU
            )
        else:
            self.aggregate = nn.Linear(output_size, output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x, mask=None):
        """Routes the stacked frames and projects them to the LLM width."""
        return self.norm(self.aggregate(self.moe(self.fuse(x), mask)))


class SoftMoABridge(nn.Module):
    """Soft-MoA bridge: fuse Linear -> residual Soft-MoA -> Linear -> LayerNorm.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    fused_size : int, optional
        Width of the mixture (default ``output_size``).
    num_experts : int
        Number of experts.
    bottleneck : int
        Hidden size of each expert.
    slots_per_expert : int
        Slots per expert.

    Example
    -------
    >>> import torch
    >>> bridge = SoftMoABridge(20, 8, num_experts=3, bottleneck=4)
    >>> bridge(torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(
        self,
        input_size,
        output_size,
        fused_size=None,
        num_experts=8,
        bottleneck=64,
        slots_per_expert=1,
    ):
        super().__init__()
        fused_size = output_size if fused_size is None else fused_size
        self.fuse = nn.Linear(input_size, fused_size)
        self.moa = SoftMoA(
            fused_size,
            num_experts=num_experts,
            bottleneck=bottleneck,
            slots_per_expert=slots_per_expert,
            output_size=fused_size,
        )
        self.out_proj = nn.Linear(fused_size, output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x, mask=None):
        """Mixes the stacked frames through the soft slots."""
        fused = self.fuse(x)
        return self.norm(self.out_proj(fused + self.moa(fused, mask)))
