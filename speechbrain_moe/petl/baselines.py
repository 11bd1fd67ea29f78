"""Baselines that only choose which parameters of a backbone lobe (returned)
train; the classifier head, outside the backbone, always trains."""

from speechbrain_moe.targets import petl_root


def linear_probe(backbone):
    """``linear``: freezes the whole backbone, so only the head trains.

    Example
    -------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> any(p.requires_grad for p in linear_probe(m).parameters())
    False
    """
    return backbone.requires_grad_(False)


def full_fine_tuning(backbone):
    """``full_ft``: trains every backbone parameter.

    Example
    -------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2).requires_grad_(False)
    >>> all(p.requires_grad for p in full_fine_tuning(m).parameters())
    True
    """
    return backbone.requires_grad_(True)


def bitfit(backbone):
    """``bitfit``: trains only the biases of the adapted root (Ben Zaken et al., 2022).

    Example
    -------
    >>> import torch
    >>> from speechbrain_moe.targets import PetlTargets
    >>> m = torch.nn.Linear(2, 2); m.petl_targets = PetlTargets(hidden_size=2)
    >>> [n for n, p in bitfit(m).named_parameters() if p.requires_grad]
    ['bias']
    """
    _, root, _ = petl_root(backbone)
    backbone.requires_grad_(False)
    for name, param in root.named_parameters():
        if name == "bias" or name.endswith(".bias"):
            param.requires_grad_(True)
    return backbone
