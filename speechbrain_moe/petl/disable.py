"""Getting the frozen backbone back from an adapted one, as peft's
``disable_adapter()`` context does.

Inside :func:`disable_adapters` every wrapper that places a trained module
around a pretrained one (SpeechBrain's ``LoRA`` and ``HoulsbyAdapterLinear``,
the :mod:`~speechbrain_moe.placement` wrappers that hold adapters and
mixtures, prompt and prefix layers) is swapped for the pretrained module it
wraps, so each one returns its target's output; on leaving, the wrappers are
put back, the same objects (parameters, optimiser state and hooks are kept).
Tensors a method trains in place (BitFit's biases, the LayerNorms the
mixtures train with ``train_norms: True``) have no frozen copy on the model:
give their pretrained values (``pretrained=``), or disabling is refused.

Authors
 * speechbrain-moe contributors 2026
"""

import contextlib

import torch
from speechbrain.nnet.adapters import HoulsbyAdapterLinear, LoRA, replace_module

from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.lobes.base import adaptation_of
from speechbrain_moe.petl.prefix import PrefixAttention
from speechbrain_moe.petl.prompt import DeepPromptLayer
from speechbrain_moe.placement import ParallelAdapter, SequentialAdapter

# Wrappers around a pretrained module (``pretrained_module``).
WRAPPERS = (
    LoRA,
    LoRAExperts,
    HoulsbyAdapterLinear,
    ParallelAdapter,
    SequentialAdapter,
    DeepPromptLayer,
    PrefixAttention,
)
# Name segments the adaptation inserts between a pretrained tensor and the root.
INSERTED = ("adapted_model", "pretrained_module")


def plain_name(name):
    """The name a tensor of an adapted model has in the plain backbone.

    Arguments
    ---------
    name : str
        A parameter or buffer name of the adapted model.

    Returns
    -------
    str

    Example
    -------
    >>> plain_name("model.adapted_model.encoder.layer.0.pretrained_module.bias")
    'model.encoder.layer.0.bias'
    """
    return ".".join(part for part in name.split(".") if part not in INSERTED)


def _outer_wrappers(model):
    """``(name, wrapper)`` of the outermost wrappers of ``model``."""
    found = []
    for name, module in model.named_modules():
        inside = any(name.startswith(f"{outer}.") for outer, _ in found)
        if isinstance(module, WRAPPERS) and not inside and name:
            found.append((name, module))
    return found


def trained_in_place(model):
    """Names of the trainable tensors that are the backbone's own (not those
    of an added module): changed in place by training.

    Arguments
    ---------
    model : torch.nn.Module
        An adapted backbone.

    Returns
    -------
    list of str
        Names in ``model``.

    Example
    -------
    >>> model = torch.nn.Sequential(LoRA(torch.nn.Linear(4, 4), rank=2))
    >>> trained_in_place(model)
    []
    >>> _ = model[0].pretrained_module.bias.requires_grad_(True)
    >>> trained_in_place(model)
    ['0.pretrained_module.bias']
    """
    added = set()
    for name, wrapper in _outer_wrappers(model):
        for key, _param in wrapper.named_parameters():
            if not key.startswith("pretrained_module."):
                added.add(f"{name}.{key}")
    return [
        name
        for name, param in model.named_parameters()
        if param.requires_grad and name not in added
    ]


@contextlib.contextmanager
def disable_adapters(model, pretrained=None):
    """Inside the block, ``model`` computes what its frozen backbone computes.

    Arguments
    ---------
    model : torch.nn.Module
        An adapted backbone (e.g. ``classifier.mods.backbone``).
    pretrained : dict, optional
        Pretrained values of the tensors the method trains in place, by their
        name in the plain backbone (e.g. ``AST(source).state_dict()``);
        needed only when there are such tensors (:func:`trained_in_place`).

    Yields
    ------
    torch.nn.Module
        ``model`` itself, its wrappers swapped for their targets.

    Example
    -------
    >>> lora = LoRA(torch.nn.Linear(4, 4), rank=2)
    >>> torch.nn.init.normal_(lora.adapter_up_proj.weight)
    Parameter containing:...
    >>> model, x = torch.nn.Sequential(lora), torch.randn(3, 4)
    >>> with disable_adapters(model):
    ...     torch.equal(model(x), lora.pretrained_module(x))
    True
    >>> model[0] is lora
    True
    """
    in_place = trained_in_place(model)
    missing = [n for n in in_place if plain_name(n) not in (pretrained or {})]
    if missing:
        method, _ = adaptation_of(model)
        raise ValueError(
            f"Cannot disable the adapters of this {type(model).__name__} "
            f"(petl_method {method!r}): training changed {len(missing)} of the "
            f"backbone's own tensors in place ({missing[:3]}...), and the model "
            "keeps no frozen copy of them. Pass their pretrained values: "
            "disable_adapters(model, pretrained=<a fresh backbone from the same "
            "source>.state_dict()), or train with train_norms: False."
        )
    wrappers = _outer_wrappers(model)
    saved = {}
    params = dict(model.named_parameters())
    try:
        with torch.no_grad():
            for name in in_place:
                saved[name] = params[name].detach().clone()
                params[name].copy_(pretrained[plain_name(name)])
        for name, wrapper in wrappers:
            replace_module(model, name, wrapper.pretrained_module)
        yield model
    finally:
        for name, wrapper in reversed(wrappers):
            replace_module(model, name, wrapper)
        with torch.no_grad():
            for name, value in saved.items():
                params[name].copy_(value)
