"""Baselines that only choose which backbone parameters train:
``linear`` (linear probe), ``full_ft`` (full fine-tuning), ``bitfit``.

The classifier head lives outside the backbone (in the recipe) and always
trains.

Authors
 * speechbrain-moe contributors 2026
"""

from speechbrain_moe.targets import petl_root


def linear_probe(backbone):
    """Freezes the whole backbone: only the head trains.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe.

    Returns
    -------
    torch.nn.Module
        The backbone.

    Example
    -------
    >>> import torch
    >>> from speechbrain_moe.targets import PetlTargets
    >>> m = torch.nn.Linear(2, 2); m.petl_targets = PetlTargets(hidden_size=2)
    >>> any(p.requires_grad for p in linear_probe(m).parameters())
    False
    """
    return backbone.requires_grad_(False)


def full_fine_tuning(backbone):
    """Trains every backbone parameter.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe.

    Returns
    -------
    torch.nn.Module
        The backbone.

    Example
    -------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2).requires_grad_(False)
    >>> all(p.requires_grad for p in full_fine_tuning(m).parameters())
    True
    """
    return backbone.requires_grad_(True)


def bitfit(backbone):
    """Trains only the bias terms of the adaptable root (Ben Zaken et al., 2022).

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe.

    Returns
    -------
    torch.nn.Module
        The backbone.

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
