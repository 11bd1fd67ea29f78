"""Folding a trained linear update into the frozen weights, for inference
without any adapter overhead (what peft calls ``merge_and_unload``).

LoRA (SpeechBrain's ``LoRA``: ``y = W x + scaling * B A x``) becomes
``W + scaling * B A``; BitFit, the linear probe and full fine-tuning change
weights in place already, so merging them changes nothing. Every other
method computes something no single weight matrix can hold (a mixture's
input-dependent routing, a non-linear adapter, extra prompt or prefix
tokens): merging it is refused, with the reason.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
from speechbrain.nnet.adapters import (
    AdaptedModel,
    HoulsbyAdapterLinear,
    LoRA,
    replace_module,
)

from speechbrain_moe.petl.prefix import PrefixAttention
from speechbrain_moe.petl.prompt import DeepPromptLayer
from speechbrain_moe.placement import ParallelAdapter, SequentialAdapter
from speechbrain_moe.routing import RoutedModule

NOT_MERGEABLE = {
    "soft_moa": "a mixture: how much each expert adds depends on the input "
    "(slots are softmax mixes of the sequence's tokens)",
    "dense_moa": "a mixture: each token's softmax gate, a function of the "
    "token, weights the experts",
    "moe_adapter": "a mixture: each token goes to the top-k experts it picks",
    "adapter": "the adapter's GELU between its projections is not linear",
    "convpass": "the adapter's GELU is not linear and its convolution mixes "
    "neighbouring tokens",
    "prompt": "prompt tokens are extra inputs of every layer, not a weight update",
    "prefix": "prefix keys and values are extra inputs of every attention, not "
    "a weight update",
}
# Added modules whose output no frozen weight can absorb.
BLOCKING = (
    ParallelAdapter,
    SequentialAdapter,
    RoutedModule,
    DeepPromptLayer,
    PrefixAttention,
    HoulsbyAdapterLinear,
)


def lora_delta(lora):
    """The weight update ``scaling * up @ down`` of a SpeechBrain ``LoRA``.

    Arguments
    ---------
    lora : speechbrain.nnet.adapters.LoRA
        A LoRA around a linear or (ungrouped) convolution layer.

    Returns
    -------
    torch.Tensor
        Shaped as the wrapped layer's weight.

    Example
    -------
    >>> lora = LoRA(torch.nn.Linear(4, 3), rank=2, alpha=2.0)
    >>> torch.nn.init.normal_(lora.adapter_up_proj.weight)
    Parameter containing:...
    >>> x = torch.randn(5, 4)
    >>> merged = torch.nn.functional.linear(
    ...     x, lora.pretrained_module.weight + lora_delta(lora),
    ...     lora.pretrained_module.bias)
    >>> torch.allclose(merged, lora(x), atol=1e-6)
    True
    """
    up = lora.adapter_up_proj.weight.flatten(1).float()  # [out, rank]
    down = lora.adapter_down_proj.weight.float()  # [rank, in, *kernel]
    return torch.einsum("or,r...->o...", up, down) * lora.scaling


def merge_and_unload(model):
    """Folds every LoRA of ``model`` into its frozen weight and removes the
    LoRA modules (and an ``AdaptedModel`` left without them); in place.

    Arguments
    ---------
    model : torch.nn.Module
        A model adapted by a linear method (``lora``, ``bitfit``,
        ``linear``, ``full_ft``, or a method of your own that adds only
        SpeechBrain ``LoRA`` modules).

    Returns
    -------
    torch.nn.Module
        The model, computing what it computed before (to rounding).

    Example
    -------
    >>> from speechbrain.nnet.adapters import AdaptedModel
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> model.petl_method = "lora"
    >>> model[0] = AdaptedModel(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoRA,
    ...                         target_layers=["0"], adapter_kwargs={"rank": 2})
    >>> model = merge_and_unload(model)
    >>> model
    Sequential(
      (0): Sequential(
        (0): Linear(in_features=4, out_features=4, bias=True)
      )
    )
    >>> model.petl_method = "soft_moa"
    >>> merge_and_unload(model)
    Traceback (most recent call last):
    ...
    ValueError: petl_method 'soft_moa' cannot be merged into the backbone's weights: ...
    """
    method = getattr(model, "petl_method", None)
    fix = "Use the model unmerged (merge=False); lora and bitfit merge."
    if method in NOT_MERGEABLE:
        raise ValueError(
            f"petl_method {method!r} cannot be merged into the backbone's "
            f"weights: {NOT_MERGEABLE[method]}. {fix}"
        )
    blocking = sorted(
        {type(m).__name__ for m in model.modules() if isinstance(m, BLOCKING)}
    )
    if blocking:
        raise ValueError(
            f"This {type(model).__name__} (petl_method {method!r}) holds {blocking} "
            f"modules, whose output is not a linear update of a frozen weight, "
            f"so it cannot be merged. {fix}"
        )
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if isinstance(module, LoRA):
                weight = module.pretrained_module.weight
                weight += lora_delta(module).to(weight.dtype)
                replace_module(model, name, module.pretrained_module)
    for name, module in list(model.named_modules()):
        if isinstance(module, AdaptedModel) and name:
            replace_module(model, name, module.adapted_model)
    return model
