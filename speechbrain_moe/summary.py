"""Trainable-parameter summary, like peft's ``print_trainable_parameters``."""

import torch.nn as nn


def count_parameters(modules, head_names=("classifier", "head")):
    """Counts total and trainable parameters, with a per-component break-down.

    Arguments
    ---------
    modules : torch.nn.Module or dict
        A model, or named components (as a ``Brain``'s ``modules``).
    head_names : tuple of str
        Components counted as the classifier head.

    Returns
    -------
    dict
        ``total``, ``trainable``, ``trainable_no_head`` and ``components``
        (name -> ``{"total", "trainable"}``); shared parameters count once.

    Example
    -------
    >>> c = count_parameters(nn.ModuleDict({"encoder": nn.Linear(4, 4).requires_grad_(False),
    ...                                     "classifier": nn.Linear(4, 2)}))
    >>> c["total"], c["trainable"], c["trainable_no_head"]
    (30, 10, 0)
    """
    if isinstance(modules, nn.Module) and not isinstance(modules, nn.ModuleDict):
        items = list(modules.named_children()) or [("model", modules)]
    else:
        items = list(modules.items())
    seen, components = set(), {}
    for name, module in items:
        params = [p for p in module.parameters() if id(p) not in seen]
        seen.update(id(p) for p in params)
        components[name] = {
            "total": sum(p.numel() for p in params),
            "trainable": sum(p.numel() for p in params if p.requires_grad),
        }
    trainable = sum(c["trainable"] for c in components.values())
    head = sum(
        components[name]["trainable"] for name in components if name in head_names
    )
    return {
        "total": sum(c["total"] for c in components.values()),
        "trainable": trainable,
        "trainable_no_head": trainable - head,
        "components": components,
    }


def format_parameters(counts):
    """One readable line per component plus a total line.

    Arguments
    ---------
    counts : dict
        From :func:`count_parameters`.

    Returns
    -------
    str
        The lines, joined by newlines (no trailing newline).

    Example
    -------
    >>> print(format_parameters(count_parameters(nn.ModuleDict({"head": nn.Linear(2, 2)}))))
    head: 6 / 6 trainable
    trainable params: 6 || all params: 6 || trainable%: 100.0000 || trainable without head: 0
    """
    lines = [
        f"{name}: {c['trainable']:,} / {c['total']:,} trainable"
        for name, c in counts["components"].items()
    ]
    share = 100.0 * counts["trainable"] / max(counts["total"], 1)
    lines.append(
        f"trainable params: {counts['trainable']:,} || all params: {counts['total']:,} "
        f"|| trainable%: {share:.4f} || trainable without head: "
        f"{counts['trainable_no_head']:,}"
    )
    return "\n".join(lines)
