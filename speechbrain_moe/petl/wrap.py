"""How every method that adds modules (adapters, LoRA, prompts, prefixes)
adapts a backbone: SpeechBrain's ``AdaptedModel`` around its sub-modules."""

import fnmatch
import inspect
import re

import torch
from speechbrain.nnet.adapters import AdaptedModel, LoRA

from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.placement import PLACEMENT_MODES
from speechbrain_moe.targets import petl_root


def module_patterns(names, limit=40):
    """The distinct module names of ``names`` with their layer numbers
    written ``*`` (each a valid fnmatch pattern), for messages that list what
    a target pattern could match.

    Arguments
    ---------
    names : iterable of str
        Module names (``model.named_modules()``).
    limit : int
        At most this many are listed (then ``...``).

    Returns
    -------
    str

    Example
    -------
    >>> module_patterns(["layers.0.q_proj", "layers.1.q_proj", "layers.1.v_proj"])
    'layers.*.q_proj, layers.*.v_proj'
    """
    patterns = sorted({re.sub(r"(^|\.)\d+(?=\.|$)", r"\1*", n) for n in names if n})
    listed = ", ".join(patterns[:limit])
    return listed + (", ..." if len(patterns) > limit else "") if listed else "none"


def _check_pattern_list(patterns, setting, where=""):
    """Raises ``ValueError`` unless ``patterns`` is a list of strings."""
    ok = isinstance(patterns, (list, tuple)) and all(
        isinstance(p, str) and p for p in patterns
    )
    if not ok:
        raise ValueError(
            f"{setting} must be a list of module-name patterns (e.g. "
            f"['*q_proj', '*v_proj']), got {patterns!r} ({type(patterns).__name__})"
            f"{' ' + where if where else ''}. Write it as a YAML list of strings, "
            f'e.g. --{setting}=\'["*q_proj", "*v_proj"]\'.'
        )


def check_target_patterns(model, patterns, setting, kinds=None, where=""):
    """Raises ``ValueError`` unless ``patterns`` is a list of strings each
    matching at least one sub-module of ``model`` (of one of ``kinds``).

    Arguments
    ---------
    model : torch.nn.Module
        The module whose sub-modules the patterns name.
    patterns : list of str
        fnmatch patterns of sub-module names (``model.named_modules()``).
    setting : str
        The setting holding the patterns (named in the message).
    kinds : tuple of type, optional
        Only sub-modules of these types count (e.g. ``(torch.nn.Linear,)``
        for LoRA).
    where : str
        Where the setting is set, e.g. ``"in the recipe YAML"`` (message).

    Returns
    -------
    list of str
        The names of the matched sub-modules.

    Example
    -------
    >>> model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.ReLU())
    >>> check_target_patterns(model, ["0"], "target_layers")
    ['0']
    >>> check_target_patterns(model, ["q_proj"], "target_layers")
    Traceback (most recent call last):
    ...
    ValueError: target_layers: the pattern(s) ['q_proj'] match no sub-module of this Sequential. ...
    """
    _check_pattern_list(patterns, setting, where)
    names = [
        n
        for n, m in model.named_modules()
        if n and (kinds is None or isinstance(m, kinds))
    ]
    unmatched = [p for p in patterns if not fnmatch.filter(names, p)]
    if unmatched:
        what = f" {'/'.join(k.__name__ for k in kinds)}" if kinds else ""
        raise ValueError(
            f"{setting}: the pattern(s) {unmatched} match no{what} sub-module of "
            f"this {type(model).__name__}{' (' + where + ')' if where else ''}. "
            "Patterns are fnmatch patterns of full module names; the available "
            f"names are (layer numbers as *): {module_patterns(names)}. Use e.g. "
            f"'*{names[-1].rsplit('.', 1)[-1] if names else 'q_proj'}' to match a "
            "name at any depth."
        )
    return [n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns)]


#: The layers SpeechBrain's ``LoRA`` adapts (its docstring: "Works with
#: nn.Linear and nn.Conv1d/2d/3d").
LORA_LAYERS = (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d)


def _adapts_linear_only(adapter_class):
    """Whether ``adapter_class`` (or the callable a partial wraps) is
    SpeechBrain's ``LoRA``, which adapts :data:`LORA_LAYERS` only, or a
    mixture of LoRA experts (linear layers only)."""
    target = getattr(adapter_class, "func", adapter_class)
    return isinstance(target, type) and issubclass(target, (LoRA, LoRAExperts))


def _check_linear_targets(root, patterns):
    """Raises ``ValueError`` unless every pattern matches a linear or
    convolution layer of ``root`` and no pattern matches another kind of
    module (LoRA wraps those layers only)."""
    check_target_patterns(root, patterns, "target_layers", kinds=LORA_LAYERS)
    other = [
        n
        for n, m in root.named_modules()
        if n
        and not isinstance(m, LORA_LAYERS)
        and any(fnmatch.fnmatch(n, p) for p in patterns)
    ]
    if other:
        layers = [n for n, m in root.named_modules() if isinstance(m, LORA_LAYERS)]
        raise ValueError(
            f"target_layers {patterns} also match {len(other)} module(s) that are "
            f"not linear or convolution layers, e.g. {other[:4]}; LoRA adapts "
            "linear and convolution layers only. Narrow the patterns to those "
            f"(layer numbers as *): {module_patterns(layers)}."
        )


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
        fnmatch patterns (relative to the adapted root) replacing ``targets``
        (then only named in messages); each must match a sub-module.

    Returns
    -------
    torch.nn.Module
        The backbone, adapted in place.

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
    if target_layers is None:
        wanted = list(getattr(record, targets))
    else:
        _check_pattern_list(target_layers, "target_layers", "(the method's setting)")
        wanted = list(target_layers)
        if _adapts_linear_only(adapter_class):
            _check_linear_targets(root, wanted)
    present = [n for n, _ in root.named_modules()]
    missing = [m for m in wanted + list(unfrozen) if not fnmatch.filter(present, m)]
    if missing or not wanted:
        raise ValueError(
            f"{type(backbone).__name__} has no {targets} sub-modules "
            f"{missing[:4] or wanted}. Fix the backbone's PetlTargets record or the "
            "method's target_layers; the backbone's sub-modules are (layer numbers "
            f"as *): {module_patterns(present)}."
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

    Returns
    -------
    torch.nn.Module
        The backbone, adapted in place.

    Example
    -------
    >>> from speechbrain_moe.adapters import BottleneckAdapter
    >>> from speechbrain_moe.targets import PetlTargets
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> model.petl_targets = PetlTargets(hidden_size=4, attention=["0"])
    >>> type(insert_adapters(model, BottleneckAdapter)[0]).__name__
    'ParallelAdapter'
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
