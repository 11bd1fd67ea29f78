"""BitFit: only the biases of the backbone train (the classifier head, outside
the backbone, always trains). The other two baselines that only choose what
trains, the linear probe and full fine-tuning, need no code: their method
files call ``torch.nn.Module.requires_grad_``."""

from speechbrain_moe.targets import petl_root


def bitfit(backbone):
    """``bitfit``: trains only the biases of the adapted root (Ben Zaken et al., 2022).

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe (with ``petl_targets``); changed in place.

    Returns
    -------
    torch.nn.Module
        ``backbone``, with only the biases of its adapted root trainable.

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
