"""The PETL method registry: method name -> builder.

A builder is ``builder(backbone, **settings)``: it adapts a backbone lobe in
place (inserting adapters, choosing which parameters train) and returns it.
Each built-in method registers itself in the file that defines it; a third
party registers its own with :func:`register_method`. Every method's settings
live once, in the repository's top-level ``hparams/petl/<name>.yaml``.

Example
-------
>>> "soft_moa" in available_methods()
True
>>> get_method("soft_mao")
Traceback (most recent call last):
...
ValueError: Unknown PETL method 'soft_mao'. Valid names: adapter, bitfit, convpass, dense_moa, full_ft, linear, lora, moe_adapter, prefix, prompt, soft_moa. Register your own with speechbrain_moe.methods.register_method.

Authors
 * speechbrain-moe contributors 2026
"""

import importlib
import inspect

_REGISTRY = {}
_BUILTIN_MODULES = (
    "speechbrain_moe.methods.adapter_methods",
    "speechbrain_moe.methods.baselines",
    "speechbrain_moe.methods.lora",
    "speechbrain_moe.methods.prompt",
    "speechbrain_moe.methods.prefix",
)


def register_method(name, builder=None):
    """Registers ``builder`` under ``name`` (usable as a decorator).

    Arguments
    ---------
    name : str
        The method name used in YAML (``petl_method: name``).
    builder : callable, optional
        ``builder(backbone, **settings) -> backbone``.

    Returns
    -------
    callable
        The builder (or a decorator when ``builder`` is omitted).

    Example
    -------
    >>> @register_method("frozen_doc_example")
    ... def build(backbone):
    ...     return backbone.requires_grad_(False)
    >>> get_method("frozen_doc_example") is build
    True
    """

    def decorate(fn):
        """Registers ``fn``."""
        _REGISTRY[name] = fn
        return fn

    return decorate if builder is None else decorate(builder)


def _load_builtins():
    """Imports the modules that register the built-in methods."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(module)


def available_methods():
    """Sorted names of all registered methods.

    Returns
    -------
    list of str

    Example
    -------
    >>> available_methods()[:3]
    ['adapter', 'bitfit', 'convpass']
    """
    _load_builtins()
    return sorted(n for n in _REGISTRY if not n.endswith("doc_example"))


def get_method(name):
    """The builder registered under ``name``.

    Arguments
    ---------
    name : str
        Method name.

    Returns
    -------
    callable
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise ValueError(
            f"Unknown PETL method {name!r}. Valid names: "
            f"{', '.join(available_methods())}. Register your own with "
            "speechbrain_moe.methods.register_method."
        )
    return _REGISTRY[name]


def _check_builder_settings(name, builder, settings):
    """Raises a clear error for settings a builder does not take.

    Builders taking ``**settings`` check them themselves (the adapter
    methods do, against their adapter class).
    """
    params = inspect.signature(builder).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return
    accepted = list(params)[1:]
    unknown = sorted(set(settings) - set(accepted))
    if unknown:
        valid = ", ".join(accepted) if accepted else "none"
        raise ValueError(
            f"PETL method {name!r} got unknown setting(s) {unknown}. Valid "
            f"settings: {valid}."
        )


def apply_method(backbone, name, **settings):
    """Adapts ``backbone`` in place with method ``name``.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe (see :mod:`speechbrain_moe.targets`).
    name : str
        Method name.
    **settings
        The method's settings (from ``hparams/petl/<name>.yaml``).

    Returns
    -------
    torch.nn.Module
        The backbone.

    Example
    -------
    >>> import torch
    >>> from speechbrain_moe.targets import PetlTargets
    >>> m = torch.nn.Linear(2, 2); m.petl_targets = PetlTargets(hidden_size=2)
    >>> apply_method(m, "linear", rank=4)
    Traceback (most recent call last):
    ...
    ValueError: PETL method 'linear' got unknown setting(s) ['rank']. Valid settings: none.
    """
    builder = get_method(name)
    _check_builder_settings(name, builder, settings)
    result = builder(backbone, **settings)
    return backbone if result is None else result
