"""Mixtures of LoRA experts on one linear layer: the dense, soft and sparse
top-k routers of this package over a bank of low-rank experts.

Notation (as in ``docs/design.md``)::

    x   [..., d_in]   the input of the wrapped linear layer  W x + b
    N experts of rank r:  E_i(x) = B_i A_i x     A_i [r, d_in], B_i [d_out, r]
    y = W x + b + (alpha / r) * sum_i g_i(x) E_i(x)

A LoRA expert is a bottleneck without activation and without biases placed
on one linear layer, so the experts are an
:class:`~speechbrain_moe.experts.ExpertBank` built with
``activation=nn.Identity`` and ``bias=False``, and the gates ``g(x)`` come
from the routers the bottleneck mixtures already use, reading the wrapped
layer's input:

* ``router=DenseMoA`` (method ``dense_lora``): ``g = softmax(W_r x + b_r)``
  over all experts (:class:`~speechbrain_moe.adapters.DenseMoA`);
* ``router=SoftMoA`` (method ``soft_lora``): Soft-MoE slots, each a weighted
  mean of the sequence's tokens, each expert on its own slots
  (:class:`~speechbrain_moe.adapters.SoftMoA`); padded tokens take no part
  and get no update;
* ``router=SparseMoE`` (method ``moe_lora``): each token's ``top_k`` experts
  (:class:`~speechbrain_moe.adapters.SparseMoE` without its LayerNorm, so
  that the experts read ``x`` as LoRA does), with its Switch balance loss
  and router z-loss reported to the open
  :func:`~speechbrain_moe.routing.routing_context`.

The plain and kernel implementations (``implementation: auto | plain |
kernel``) are those of the routers and the bank: the same code paths as the
bottleneck mixtures. The up-projections start at zero, so the adapted model
equals the frozen one at step 0, as with LoRA.

Parameter layout (what a checkpoint holds, under the ``LoRAExperts`` module)::

    pretrained_module.*                 the frozen linear layer
    mixture.experts.down_weight         [d_in, N, r]    A_i^T = down_weight[:, i]
    mixture.experts.up_weight           [N, r, d_out]   B_i^T = up_weight[i]
    mixture.router.weight / .bias       dense_lora: [N, d_in] / [N]
    mixture.router.weight               moe_lora:   [N, d_in] (no bias)
    mixture.slot_embeddings             soft_lora:  [d_in, N * p]
    mixture.shared.*                    moe_lora with num_shared_experts > 0

From one SpeechBrain ``LoRA`` to one expert (upcycling): SpeechBrain's
``speechbrain.nnet.adapters.LoRA`` computes ``W x + b + scaling *
adapter_up_proj(adapter_down_proj(x))`` with ``adapter_down_proj.weight``
``[r, d_in]``, ``adapter_up_proj.weight`` ``[d_out, r]`` (both without bias)
and ``scaling = alpha / rank``. Expert ``i`` holds that LoRA when::

    down_weight[:, i, :] = lora.adapter_down_proj.weight.t()    # [d_in, r]
    up_weight[i]         = lora.adapter_up_proj.weight.t()      # [r, d_out]
    LoRAExperts.scaling  = lora.scaling     (same rank and alpha)

(:meth:`LoRAExperts.load_lora_expert` does exactly this). With every expert
a copy of one LoRA, ``dense_lora`` and ``moe_lora`` with ``routing:
topk_softmax`` (gates summing to one) equal that LoRA on every token;
``softmax_topk`` scales it by the chosen experts' probability mass and
``soft_lora`` applies it to slot mixtures of the tokens, so those two are
only near it.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn

from speechbrain_moe.adapters.dense_moa import DenseMoA
from speechbrain_moe.adapters.moe import SparseMoE
from speechbrain_moe.adapters.soft_moa import SoftMoA
from speechbrain_moe.checks import check_positive
from speechbrain_moe.routing import current_token_mask

#: The routers a mixture of LoRA experts takes, with the name of the argument
#: that sets their experts' rank.
RANK_ARGUMENTS = {
    DenseMoA: "bottleneck",
    SoftMoA: "bottleneck",
    SparseMoE: "hidden_size",
}


def _router_class(router):
    """The router class behind ``router`` (a class or a ``functools.partial``
    of one, as a YAML ``!name:`` gives it), refused unless it is one of
    :data:`RANK_ARGUMENTS`."""
    target = getattr(router, "func", router)
    if isinstance(target, type):
        for known in RANK_ARGUMENTS:
            if issubclass(target, known):
                return known
    names = ", ".join(f"speechbrain_moe.adapters.{k.__name__}" for k in RANK_ARGUMENTS)
    raise ValueError(
        f"LoRAExperts: router must be one of {names} (a class, or a YAML "
        f"!name: of one with its routing settings), got {router!r}. Set "
        "router in the method file (see hparams/petl/dense_lora.yaml)."
    )


class LoRAExperts(nn.Module):
    """``y = W x + b + (alpha / rank) * sum_i g_i(x) B_i A_i x`` around one
    linear layer: a mixture of LoRA experts.

    Usable as the ``adapter_class`` of SpeechBrain's ``AdaptedModel`` (and so
    of :func:`speechbrain_moe.petl.wrap_modules`), as SpeechBrain's ``LoRA``
    is; the wrapped layer is frozen. The mixture reads the layer's input and
    the padding mask of the innermost
    :func:`~speechbrain_moe.routing.token_mask` block (set by the backbone
    lobes around their encoder), so padded tokens take no part in routing.
    See the module's notes for the parameter layout.

    Arguments
    ---------
    target_module : torch.nn.Linear
        The pretrained linear layer.
    router : type or callable
        :class:`~speechbrain_moe.adapters.DenseMoA`,
        :class:`~speechbrain_moe.adapters.SoftMoA` or
        :class:`~speechbrain_moe.adapters.SparseMoE`, or a
        ``functools.partial`` of one holding its routing settings
        (``num_experts``, ``slots_per_expert``, ``top_k``, ...). The rank,
        the identity activation, the absence of biases and of the top-k
        router's LayerNorm are set here.
    rank : int
        Rank r of every expert (>= 1).
    alpha : float
        Scale numerator (> 0): the mixture's output is scaled by
        ``alpha / rank``, as in LoRA.

    Example
    -------
    >>> linear = nn.Linear(16, 12)
    >>> layer = LoRAExperts(linear, DenseMoA, rank=2, alpha=4.0)
    >>> x = torch.randn(2, 5, 16)
    >>> torch.equal(layer(x), linear(x))  # zero up-projections at start
    True
    >>> layer.mixture.experts.up_weight.shape
    torch.Size([14, 2, 12])
    """

    def __init__(self, target_module, router, rank=8, alpha=1.0):
        super().__init__()
        if not isinstance(target_module, nn.Linear):
            raise ValueError(
                f"LoRAExperts adapts linear layers only, got "
                f"{type(target_module).__name__}. Narrow target_layers (or "
                "llm_lora_layers) to linear layers, e.g. ['*q_proj', '*v_proj']."
            )
        check_positive("LoRAExperts", rank=rank)
        if not alpha > 0:
            raise ValueError(
                f"LoRAExperts: alpha must be > 0, got {alpha!r}. Set alpha in the "
                "method file (updates are scaled by alpha / rank)."
            )
        kind = _router_class(router)
        self.pretrained_module = target_module
        for param in target_module.parameters():
            param.requires_grad = False
        kwargs = {RANK_ARGUMENTS[kind]: rank, "activation": nn.Identity}
        if kind is SparseMoE:
            kwargs["norm"] = False  # the experts read x itself, as LoRA's do
        self.mixture = router(
            target_module.in_features,
            output_size=target_module.out_features,
            expert_bias=False,
            **kwargs,
        )
        self.mixture.to(device=target_module.weight.device)
        self.rank = rank
        self.scaling = alpha / rank

    def forward(self, x):
        """The frozen layer's output plus the scaled mixture of experts.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, in_features]``.

        Returns
        -------
        torch.Tensor
            ``[batch, time, out_features]``.
        """
        if x.dim() != 3:
            raise ValueError(
                f"LoRAExperts expects [batch, time, features] inputs, got shape "
                f"{tuple(x.shape)}. Put mixtures of LoRA experts on the linear "
                "layers of a transformer's blocks (query/value projections, FFN)."
            )
        mask = current_token_mask()
        if mask is not None and tuple(mask.shape) != tuple(x.shape[:2]):
            raise ValueError(
                f"LoRAExperts: the input {tuple(x.shape)} does not match the "
                f"token mask {tuple(mask.shape)} of the encoder it runs in. Put "
                "mixtures of LoRA experts on layers that read the encoder's "
                "tokens (query/value projections, FFN): narrow target_layers."
            )
        out = self.pretrained_module(x)  # in autocast's dtype under autocast
        return out + self.scaling * self.mixture(x, mask=mask).to(out.dtype)

    @torch.no_grad()
    def load_lora_expert(self, i, lora):
        """Copies a SpeechBrain ``LoRA`` into expert ``i`` (upcycling).

        Arguments
        ---------
        i : int
            The expert.
        lora : speechbrain.nnet.adapters.LoRA
            A LoRA around a linear layer of the same sizes, rank and scaling.

        Example
        -------
        >>> from speechbrain.nnet.adapters import LoRA
        >>> linear = nn.Linear(8, 8)
        >>> lora = LoRA(linear, rank=2, alpha=2.0)
        >>> _ = nn.init.normal_(lora.adapter_up_proj.weight)
        >>> layer = LoRAExperts(linear, DenseMoA, rank=2, alpha=2.0)
        >>> for i in range(layer.mixture.num_experts):
        ...     layer.load_lora_expert(i, lora)
        >>> x = torch.randn(1, 3, 8)
        >>> torch.allclose(layer(x), lora(x), atol=1e-6)
        True
        """
        down = lora.adapter_down_proj.weight  # [r, d_in]
        up = lora.adapter_up_proj.weight  # [d_out, r]
        bank = self.mixture.experts
        if down.dim() != 2 or down.shape[0] != self.rank:
            raise ValueError(
                f"load_lora_expert: the LoRA's down-projection {tuple(down.shape)} "
                f"is not a linear layer of rank {self.rank}. Use a LoRA of the "
                "same rank on a linear layer of the same sizes."
            )
        if abs(lora.scaling - self.scaling) > 1e-12 * max(1.0, abs(self.scaling)):
            raise ValueError(
                f"load_lora_expert: the LoRA's scaling {lora.scaling} differs "
                f"from this mixture's {self.scaling}. Set the mixture's rank "
                "and alpha to the LoRA's."
            )
        bank.down_weight[:, i].copy_(down.t())
        bank.up_weight[i].copy_(up.t())

    def extra_repr(self):
        """Summary shown by ``print(module)``.

        Returns
        -------
        str

        Example
        -------
        >>> LoRAExperts(nn.Linear(4, 4), DenseMoA, rank=2, alpha=4.0).extra_repr()
        'rank=2, scaling=2.0'
        """
        return f"rank={self.rank}, scaling={self.scaling}"


#: The methods that can adapt the linear layers of the bridge recipe's causal
#: LLM (its setting ``llm_lora_method``).
LLM_METHODS = ("lora", "dense_lora", "moe_lora")

#: Why ``soft_lora`` cannot adapt a causal LLM.
NOT_CAUSAL = (
    "Soft-MoE slots are weighted means of every token of the sequence, so a "
    "position's update would read the tokens after it (the answer being "
    "predicted) and generation token by token would compute something else"
)


def llm_lora_adapter(method="lora", rank=8, alpha=16.0):
    """The ``adapter_class`` and ``adapter_kwargs`` that SpeechBrain's
    ``AdaptedModel`` puts on an LLM's linear layers for ``method``.

    ``lora`` is SpeechBrain's ``LoRA``; ``dense_lora`` and ``moe_lora`` are
    mixtures of LoRA experts built from their packaged method files (or a
    user's own file with a ``LoRAExperts`` adapter class), with ``rank`` and
    ``alpha`` set from the arguments. ``soft_lora`` is refused: its slots
    mix the whole sequence, which a causal LM cannot allow.

    Arguments
    ---------
    method : str
        ``lora``, ``dense_lora``, ``moe_lora`` or the path of a method file
        whose ``petl`` wraps linear layers with ``LoRAExperts``.
    rank : int
        Rank of LoRA (of each expert).
    alpha : float
        Scale numerator: updates are scaled by ``alpha / rank``.

    Returns
    -------
    adapter_class : callable
        ``adapter_class(linear, **adapter_kwargs)`` wraps one linear layer.
    adapter_kwargs : dict

    Example
    -------
    >>> adapter, kwargs = llm_lora_adapter("moe_lora", rank=2, alpha=4.0)
    >>> layer = adapter(nn.Linear(8, 8), **kwargs)
    >>> type(layer.mixture).__name__, layer.scaling
    ('SparseMoE', 2.0)
    >>> llm_lora_adapter("soft_lora")
    Traceback (most recent call last):
    ...
    ValueError: llm_lora_method 'soft_lora' cannot adapt a causal LLM: ...
    """
    from speechbrain.nnet.adapters import LoRA

    from speechbrain_moe.hparams_files import load_hparams

    if method == "lora":
        return LoRA, {"rank": rank, "alpha": alpha}
    fix = (
        f"Set llm_lora_method to one of {', '.join(LLM_METHODS)} in "
        "hparams/bridge.yaml (or on the command line)."
    )
    if method == "soft_lora":
        raise ValueError(
            f"llm_lora_method 'soft_lora' cannot adapt a causal LLM: {NOT_CAUSAL}. "
            f"{fix}"
        )
    hparams, _ = load_hparams("petl", method)
    adapter = getattr(hparams["petl"], "keywords", {}).get("adapter_class")
    target = getattr(adapter, "func", adapter)
    if not (isinstance(target, type) and issubclass(target, LoRAExperts)):
        raise ValueError(
            f"llm_lora_method {method!r} does not wrap linear layers with LoRA "
            f"experts (its petl builds {getattr(target, '__name__', target)!r}), "
            f"so it cannot adapt the LLM's linear layers. {fix}"
        )
    # The recipe's lora_rank and lora_alpha set every expert's rank and scale.
    hparams, _ = load_hparams("petl", method, {"rank": rank, "alpha": alpha})
    adapter = hparams["petl"].keywords["adapter_class"]
    router = adapter.keywords.get("router")
    if _router_class(router) is SoftMoA:
        raise ValueError(
            f"llm_lora_method {method!r} routes with Soft-MoE slots, which cannot "
            f"adapt a causal LLM: {NOT_CAUSAL}. {fix}"
        )
    return adapter, {}
