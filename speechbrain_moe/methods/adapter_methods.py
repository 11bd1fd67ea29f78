"""Builders for the methods that place adapter modules inside the backbone:
``adapter``, ``convpass``, ``dense_moa``, ``soft_moa``, ``moe_adapter``.

Authors
 * speechbrain-moe contributors 2026
"""

import fnmatch
import inspect

import torch
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.adapters import (
    BottleneckAdapter,
    Convpass,
    DenseMoA,
    SoftMoA,
    SparseMoE,
)
from speechbrain_moe.methods import register_method
from speechbrain_moe.placement import PLACEMENT_MODES
from speechbrain_moe.targets import petl_root, set_petl_root


def _check_settings(method, adapter_cls, settings):
    """Raises a clear error for settings the adapter class does not take."""
    accepted = set(inspect.signature(adapter_cls).parameters) - {
        "input_size",
        "output_size",
    }
    unknown = sorted(set(settings) - accepted)
    if unknown:
        raise ValueError(
            f"PETL method {method!r} got unknown setting(s) {unknown}. Valid "
            f"settings: placement, mode, train_norms, {', '.join(sorted(accepted))}."
        )


def insert_adapters(
    backbone,
    adapter_cls,
    method,
    placement="pfeiffer_attention",
    mode="parallel",
    train_norms=True,
    **settings,
):
    """Wraps the backbone's attention/FFN blocks with ``adapter_cls``.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe.
    adapter_cls : type
        The adapter module class.
    method : str
        Method name (for messages).
    placement : str
        ``pfeiffer_attention``, ``pfeiffer_ffn`` or ``houlsby``.
    mode : str
        ``parallel`` or ``sequential``.
    train_norms : bool
        Also train the LayerNorms whose output the adapters read (as the
        Soft-MoA paper does).
    **settings
        Settings of ``adapter_cls``.

    Returns
    -------
    torch.nn.Module
        The backbone, with its root replaced by an ``AdaptedModel``.
    """
    if mode not in PLACEMENT_MODES:
        raise ValueError(
            f"Unknown placement mode {mode!r}; choose one of {sorted(PLACEMENT_MODES)}."
        )
    _check_settings(method, adapter_cls, settings)
    name, root, targets = petl_root(backbone)
    if name is None:
        raise TypeError(
            f"{type(backbone).__name__} must name its adaptable sub-module in "
            "'petl_root_name' for adapter methods."
        )
    modules, norms = targets.locations(placement)
    present = [n for n, _ in root.named_modules()]
    wanted = modules + (norms if train_norms else [])
    # Names may be fnmatch patterns, as AdaptedModel accepts them.
    missing = [m for m in wanted if not fnmatch.filter(present, m)]
    if missing or not modules:
        raise ValueError(
            f"PETL method {method!r}: {type(backbone).__name__}'s petl_targets "
            f"name modules it does not have: {missing[:4]} (placement "
            f"{placement!r}). Fix the backbone's PetlTargets record."
        )
    accepted = inspect.signature(adapter_cls).parameters
    if "num_prefix_tokens" in accepted:
        settings.setdefault("num_prefix_tokens", targets.num_prefix_tokens)
    if "grid_height" in accepted:
        settings.setdefault("grid_height", targets.grid_height)
    # Dry run on the meta device (no memory, no compute): a bad setting
    # raises here, before AdaptedModel has frozen or wrapped anything.
    try:
        with torch.device("meta"):
            adapter_cls(targets.hidden_size, **settings)
    except (NotImplementedError, RuntimeError):
        pass  # cannot be built on meta: the real construction below checks it
    adapted = AdaptedModel(
        root,
        PLACEMENT_MODES[mode],
        target_layers=modules,
        unfrozen_layers=norms if train_norms else [],
        adapter_kwargs={"adapter": adapter_cls, "adapter_kwargs": settings},
    )
    set_petl_root(backbone, name, adapted)
    return backbone


def adapter_method(method, adapter_cls):
    """Registers a method that inserts ``adapter_cls`` modules.

    Arguments
    ---------
    method : str
        The method name.
    adapter_cls : type
        The adapter class.

    Returns
    -------
    callable
        The registered builder.

    Example
    -------
    >>> from speechbrain_moe.methods import get_method
    >>> get_method("soft_moa").adapter_cls.__name__
    'SoftMoA'
    """

    def build(backbone, **settings):
        """Inserts the adapters of this method."""
        return insert_adapters(backbone, adapter_cls, method, **settings)

    build.adapter_cls = adapter_cls
    build.__doc__ = f"Inserts {adapter_cls.__name__} modules (method {method!r})."
    return register_method(method, build)


adapter_method("adapter", BottleneckAdapter)
adapter_method("convpass", Convpass)
adapter_method("dense_moa", DenseMoA)
adapter_method("soft_moa", SoftMoA)
adapter_method("moe_adapter", SparseMoE)
