"""How every method that adds modules (adapters, LoRA, prompts, prefixes)
adapts a backbone: SpeechBrain's ``AdaptedModel`` around its sub-modules."""

import fnmatch
import inspect

import torch
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.placement import PLACEMENT_MODES
from speechbrain_moe.targets import petl_root


def wrap_modules(
    backbone,
    adapter_class,
    targets,
    adapter_kwargs=None,
    unfrozen=(),
    target_layers=None,
):
    """Wraps the backbone's ``targets`` sub-modules with ``adapter_class``
    through an ``AdaptedModel``, which freezes the rest of the backbone.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe, adapted in place and returned.
    adapter_class : callable
        ``adapter_class(module, **adapter_kwargs)`` returns the wrapper.
    targets : str
        The :class:`~speechbrain_moe.targets.PetlTargets` list to wrap
        (``attention``, ``ffn``, ``layers`` or ``lora``).
    adapter_kwargs : dict, optional
        Keyword arguments of ``adapter_class``.
    unfrozen : sequence of str
        Sub-modules that train too (e.g. the LayerNorms feeding adapters).
    target_layers : list of str, optional
        fnmatch patterns (relative to the adapted root) replacing ``targets``.

    Example
    -------
    >>> from speechbrain.nnet.adapters import LoRA
    >>> from speechbrain_moe.targets import PetlTargets
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))  # adapted root: itself
    >>> model.petl_targets = PetlTargets(hidden_size=4, lora=["0"])
    >>> type(wrap_modules(model, LoRA, "lora")[0]).__name__
    'LoRA'
    """
    name, root, record = petl_root(backbone)
    wanted = list(target_layers or getattr(record, targets))
    present = [n for n, _ in root.named_modules()]
    missing = [m for m in wanted + list(unfrozen) if not fnmatch.filter(present, m)]
    if missing or not wanted:
        raise ValueError(
            f"{type(backbone).__name__} has no {targets} sub-modules "
            f"{missing[:4] or wanted}. Fix the backbone's PetlTargets record or the "
            "method's target_layers."
        )
    adapted = AdaptedModel(
        root,
        adapter_class,
        target_layers=wanted,
        unfrozen_layers=list(unfrozen),
        adapter_kwargs=dict(adapter_kwargs or {}),
    )
    if name is not None:
        setattr(backbone, name, adapted)
    return backbone


def insert_adapters(
    backbone, adapter, placement="pfeiffer_attention", mode="parallel", train_norms=True
):
    """Places ``adapter`` modules beside (or after) attention and/or FFN blocks.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe, adapted in place and returned.
    adapter : callable
        ``adapter(input_size, output_size=..., **extra)``, ``extra`` the
        backbone's ``num_prefix_tokens`` and ``grid_height`` if it takes them.
    placement : str
        See :meth:`~speechbrain_moe.targets.PetlTargets.locations`.
    mode : str
        ``parallel`` (``target(x) + A(x)``) or ``sequential`` (``t + A(t)``).
    train_norms : bool
        Also train the LayerNorms whose output the adapters read.
    """
    if mode not in PLACEMENT_MODES:
        raise ValueError(
            f"Unknown placement mode {mode!r}; choose one of {sorted(PLACEMENT_MODES)}."
        )
    _, _, targets = petl_root(backbone)
    modules, norms = targets.locations(placement)
    accepted = inspect.signature(adapter).parameters
    extra = {
        key: getattr(targets, key)
        for key in ("num_prefix_tokens", "grid_height")
        if key in accepted
    }
    with torch.device("meta"):  # a bad setting raises before anything is wrapped
        adapter(targets.hidden_size, **extra)
    return wrap_modules(
        backbone,
        PLACEMENT_MODES[mode],
        targets=placement,
        adapter_kwargs={"adapter": adapter, "adapter_kwargs": extra},
        unfrozen=norms if train_norms else (),
        target_layers=modules,
    )
