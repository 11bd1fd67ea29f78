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
from speechbrain_moe.kernels import check_implementation, use_kernel
from speechbrain_moe.kernels.recomputed_mlp import ActivationLinear, blocked_forward


class RecomputedMLP(nn.Sequential):
    """``Linear -> activation -> Linear``: ``W_2 act(W_1 x + b_1) + b_2``.

    The plain path is ``nn.Sequential``'s forward. With
    ``implementation="kernel"`` (or ``"auto"`` on the CPU) training keeps
    no activation output (the backward pass recomputes it) and inference
    runs on blocks of rows (see :mod:`speechbrain_moe.kernels.recomputed_mlp`);
    same values, same gradients. Same parameters and state-dict keys as the
    ``nn.Sequential`` it replaces (``0.*`` and ``2.*``) with either.

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
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"`` (see
        :mod:`speechbrain_moe.kernels`).

    Example
    -------
    >>> import torch
    >>> mlp = RecomputedMLP(4, 8, 3, implementation="kernel")
    >>> x = torch.randn(2, 4)
    >>> torch.allclose(mlp(x), nn.Sequential.forward(mlp, x))
    True
    """

    def __init__(
        self,
        input_size,
        hidden_size,
        output_size,
        activation=nn.SiLU,
        implementation="auto",
    ):
        super().__init__(
            nn.Linear(input_size, hidden_size),
            activation(),
            nn.Linear(hidden_size, output_size),
        )
        self.implementation = check_implementation("RecomputedMLP", implementation)

    def forward(self, x):
        """Applies the MLP.

        Arguments
        ---------
        x : torch.Tensor
            ``[..., input_size]``.

        Returns
        -------
        torch.Tensor
            ``[..., output_size]``.
        """
        if not use_kernel(self.implementation, x):
            return super().forward(x)
        first, activation, last = self
        if torch.is_grad_enabled():
            pre = first(x)
            return ActivationLinear.apply(pre, activation, last.weight, last.bias)
        return blocked_forward(first, activation, last, x)


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
        """Projects every frame (the mask is not needed: token-wise).

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, frames, input_size]`` stacked encoder frames.
        mask : torch.Tensor, optional
            ``[batch, frames]``, True for real frames (None: all real).

        Returns
        -------
        torch.Tensor
            ``[batch, frames, output_size]``.
        """
        del mask
        return self.net(x)


class MoEAdapterBridge(nn.Module):
    """The paper's MoE-Adapter bridge.

    ``fuse`` (Linear to ``fused_size``) -> :class:`SparseMoE` (LayerNorm input,
    ``num_experts`` SiLU experts ``fused -> expert_hidden -> output_size``,
    ``top_k`` per token, optional shared experts, balance and z losses
    reported to the open routing context) -> aggregation (``Linear -> SiLU -> Linear`` of width
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
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"``, for the experts and the
        aggregation MLP (see :mod:`speechbrain_moe.kernels`).
    output_scale : float
        Initial gain of the final LayerNorm, i.e. the RMS of the bridge's
        outputs at initialisation. Set it to the LLM's token-embedding std
        (SmolLM2-135M: 0.136; the audio markers start at that scale too):
        with the default 1.0 the audio positions enter the LLM several times
        louder than its text embeddings, and the gain moves only ~lr per step.
    **moe_settings
        The other settings of :class:`SparseMoE` (``num_experts`` 8,
        ``top_k`` 4, ``num_shared_experts``, ``routing``,
        ``balance_loss_weight``, ``z_loss_weight``, ``bias_balancing``).

    Example
    -------
    >>> import torch
    >>> from speechbrain_moe.routing import routing_context
    >>> bridge = MoEAdapterBridge(20, 8, fused_size=12, num_experts=4, top_k=2,
    ...                           expert_hidden=6, aggregation_hidden=16)
    >>> with routing_context(bridge) as routing:
    ...     y = bridge(torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool))
    >>> y.shape, routing.aux_loss.shape
    (torch.Size([2, 3, 8]), torch.Size([]))
    """

    def __init__(
        self,
        input_size,
        output_size,
        fused_size=2560,
        expert_hidden=1280,
        aggregation_hidden=None,
        implementation="auto",
        output_scale=1.0,
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
            implementation=implementation,
            **moe_settings,
        )
        if aggregation_hidden:
            self.aggregate = RecomputedMLP(
                output_size,
                aggregation_hidden,
                output_size,
                nn.SiLU,
                implementation=implementation,
            )
        else:
            self.aggregate = nn.Linear(output_size, output_size)
        self.norm = nn.LayerNorm(output_size)
        nn.init.constant_(self.norm.weight, output_scale)

    def forward(self, x, mask=None):
        """Routes the stacked frames and projects them to the LLM width
        (padded frames are not routed and take no part in the losses).

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, frames, input_size]`` stacked encoder frames.
        mask : torch.Tensor, optional
            ``[batch, frames]``, True for real frames (None: all real).

        Returns
        -------
        torch.Tensor
            ``[batch, frames, output_size]``.
        """
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
    implementation : str
        ``"auto"``, ``"plain"`` or ``"kernel"``, for the Soft-MoA (see
        :mod:`speechbrain_moe.kernels`).
    output_scale : float
        Initial gain of the final LayerNorm, i.e. the RMS of the bridge's
        outputs at initialisation. Set it to the LLM's token-embedding std
        (SmolLM2-135M: 0.136; the audio markers start at that scale too):
        with the default 1.0 the audio positions enter the LLM several times
        louder than its text embeddings, and the gain moves only ~lr per step.

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
        implementation="auto",
        output_scale=1.0,
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
            implementation=implementation,
        )
        self.out_proj = nn.Linear(fused_size, output_size)
        self.norm = nn.LayerNorm(output_size)
        nn.init.constant_(self.norm.weight, output_scale)

    def forward(self, x, mask=None):
        """Mixes the stacked frames through the soft slots (padded frames
        take no part in any slot).

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, frames, input_size]`` stacked encoder frames.
        mask : torch.Tensor, optional
            ``[batch, frames]``, True for real frames (None: all real).

        Returns
        -------
        torch.Tensor
            ``[batch, frames, output_size]``.
        """
        fused = self.fuse(x)
        return self.norm(self.out_proj(fused + self.moa(fused, mask)))
