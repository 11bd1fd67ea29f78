"""Folding a trained linear update into the frozen weights, for inference
without any adapter overhead (what peft calls ``merge_and_unload``).

LoRA (SpeechBrain's ``LoRA``: ``y = W x + scaling * B A x``) becomes
``W + scaling * B A``; BitFit, the linear probe and full fine-tuning change
weights in place already, so merging them changes nothing. Every other
method computes something no single weight matrix can hold (a mixture's
input-dependent routing, a non-linear adapter, extra prompt or prefix
tokens): merging it is refused, with the reason.

As peft's ``safe_merge``, every LoRA's factors and merged weight are checked
to be finite before any weight is changed (a NaN or inf names its parameter).
:func:`merge_lora` returns what it removed, so that :func:`unmerge` can give
the unmerged model back (``W + delta - delta``, to rounding).

Authors
 * speechbrain-moe contributors 2026
"""

from typing import NamedTuple

import torch
from speechbrain.nnet.adapters import (
    AdaptedModel,
    HoulsbyAdapterLinear,
    LoRA,
    replace_module,
)

from speechbrain_moe.lobes.base import adaptation_of
from speechbrain_moe.petl.prefix import PrefixAttention
from speechbrain_moe.petl.prompt import DeepPromptLayer
from speechbrain_moe.placement import ParallelAdapter, SequentialAdapter
from speechbrain_moe.routing import RoutedModule

NOT_MERGEABLE = {
    "soft_moa": "a mixture with input-dependent routing: how much each expert "
    "adds depends on the input (slots are softmax mixes of the sequence's tokens)",
    "dense_moa": "a mixture with input-dependent routing: each token's softmax "
    "gate, a function of the token, weights the experts",
    "moe_adapter": "a mixture with input-dependent routing: each token goes to "
    "the top-k experts it picks",
    "dense_lora": "a mixture of LoRA experts with input-dependent routing: "
    "each token's softmax gate, a function of the token, weights the experts' "
    "low-rank updates, so no single weight update equals them",
    "soft_lora": "a mixture of LoRA experts with input-dependent routing: the "
    "experts read slots, softmax mixes of the sequence's tokens",
    "moe_lora": "a mixture of LoRA experts with input-dependent routing: each "
    "token goes to the top-k experts it picks",
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


class MergedLoRA(NamedTuple):
    """What :func:`merge_lora` removed from a model, for :func:`unmerge`:
    ``(name, module)`` pairs of the LoRA modules and of the ``AdaptedModel``
    wrappers, in the order they were removed.

    Example
    -------
    >>> model = torch.nn.Sequential(LoRA(torch.nn.Linear(4, 4), rank=2))
    >>> merged = merge_lora(model)
    >>> [name for name, _ in merged.loras], merged.wrappers
    (['0'], [])
    """

    loras: list
    wrappers: list


def check_mergeable(model):
    """Refuses a model whose trained update is not a linear update of its
    frozen weights (a mixture, a non-linear adapter, prompts, prefixes).

    Arguments
    ---------
    model : torch.nn.Module
        An adapted model (a backbone's recorded ``petl_method`` is read with
        :func:`speechbrain_moe.lobes.base.adaptation_of`).

    Example
    -------
    >>> check_mergeable(torch.nn.Linear(2, 2))
    """
    method, _ = adaptation_of(model)
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


def check_finite(model):
    """Refuses to merge LoRA factors or merged weights that are not finite
    (peft's ``safe_merge``); nothing is changed.

    Arguments
    ---------
    model : torch.nn.Module
        A model holding SpeechBrain ``LoRA`` modules.

    Example
    -------
    >>> lora = LoRA(torch.nn.Linear(4, 3), rank=2)
    >>> check_finite(torch.nn.Sequential(lora))
    >>> with torch.no_grad():
    ...     lora.adapter_up_proj.weight[0, 0] = float("nan")
    >>> try:
    ...     check_finite(torch.nn.Sequential(lora))
    ... except ValueError as err:
    ...     print(str(err)[:56])
    Cannot merge: 0.adapter_up_proj.weight holds NaN or inf
    """
    with torch.no_grad():
        for name, module in model.named_modules():
            if not isinstance(module, LoRA):
                continue
            merged = module.pretrained_module.weight.float() + lora_delta(module)
            tensors = [
                *[
                    (f"{name}.{key}", param)
                    for key, param in module.named_parameters()
                    if not key.startswith("pretrained_module.")
                ],
                (f"{name}.pretrained_module.weight (merged)", merged),
            ]
            for key, tensor in tensors:
                if not bool(torch.isfinite(tensor).all()):
                    raise ValueError(
                        f"Cannot merge: {key} holds NaN or inf values, which "
                        "merging would write into the frozen weights. The "
                        "training diverged: use an earlier checkpoint (or train "
                        "again with a lower lr); nothing was changed."
                    )


def merge_lora(model):
    """Folds every LoRA of ``model`` into its frozen weight and removes the
    LoRA modules (and an ``AdaptedModel`` left without them); in place,
    after :func:`check_mergeable` and :func:`check_finite`.

    Arguments
    ---------
    model : torch.nn.Module
        A model adapted by a linear method (``lora``, ``bitfit``,
        ``linear``, ``full_ft``, or a method of your own that adds only
        SpeechBrain ``LoRA`` modules).

    Returns
    -------
    MergedLoRA
        What was removed; :func:`unmerge` puts it back.

    Example
    -------
    >>> model = torch.nn.Sequential(LoRA(torch.nn.Linear(4, 4), rank=2))
    >>> merged = merge_lora(model)
    >>> type(model[0]).__name__, [name for name, _ in merged.loras]
    ('Linear', ['0'])
    """
    check_mergeable(model)
    check_finite(model)
    loras, wrappers = [], []
    with torch.no_grad():
        for name, module in list(model.named_modules()):
            if isinstance(module, LoRA):
                weight = module.pretrained_module.weight
                weight += lora_delta(module).to(weight.dtype)
                replace_module(model, name, module.pretrained_module)
                loras.append((name, module))
    for name, module in list(model.named_modules()):
        if isinstance(module, AdaptedModel) and name:
            replace_module(model, name, module.adapted_model)
            wrappers.append((name, module))
    return MergedLoRA(loras, wrappers)


def unmerge(model, merged):
    """Undoes :func:`merge_lora`: subtracts each LoRA's update from its
    weight and puts the LoRA modules (and their ``AdaptedModel``) back; in
    place. The model computes what it computed before merging (to rounding).

    Arguments
    ---------
    model : torch.nn.Module
        The model :func:`merge_lora` merged.
    merged : MergedLoRA
        What :func:`merge_lora` returned for it.

    Returns
    -------
    torch.nn.Module
        The model, unmerged.

    Example
    -------
    >>> lora = LoRA(torch.nn.Linear(4, 4), rank=2)
    >>> torch.nn.init.normal_(lora.adapter_up_proj.weight)
    Parameter containing:...
    >>> model, x = torch.nn.Sequential(lora), torch.randn(3, 4)
    >>> before = model(x)
    >>> merged = merge_lora(model)
    >>> model = unmerge(model, merged)
    >>> model[0] is lora, torch.allclose(model(x), before, atol=1e-6)
    (True, True)
    """
    for name, module in reversed(merged.wrappers):
        replace_module(model, name, module)
    with torch.no_grad():
        for name, module in reversed(merged.loras):
            weight = module.pretrained_module.weight
            weight -= lora_delta(module).to(weight.dtype)
            replace_module(model, name, module)
    return model


def merge_and_unload(model):
    """Folds every LoRA of ``model`` into its frozen weight and removes the
    LoRA modules (and an ``AdaptedModel`` left without them); in place
    (:func:`merge_lora`, keeping nothing to unmerge).

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
    >>> from speechbrain_moe.lobes.base import Backbone
    >>> class Tiny(Backbone):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> model = Tiny()
    >>> model.petl_method = "lora"  # what apply_method records
    >>> model.model[0] = AdaptedModel(torch.nn.Sequential(torch.nn.Linear(4, 4)), LoRA,
    ...                               target_layers=["0"], adapter_kwargs={"rank": 2})
    >>> model = merge_and_unload(model)
    >>> model.model
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
    merge_lora(model)
    return model
