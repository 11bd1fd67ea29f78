"""What a backbone tells the PETL methods about its insides, so that they
never look at Hugging Face class names."""

from dataclasses import dataclass, field


@dataclass
class PetlTargets:
    """Names (relative to the adapted root) of the sub-modules PETL methods use.

    Arguments
    ---------
    hidden_size : int
        Width d of the transformer.
    layers : list of str
        The transformer layers, in order (deep prompt tuning wraps them).
    attention, attention_norm : list of str
        Each layer's self-attention block (taking the output of its
        pre-attention LayerNorm first), and that LayerNorm.
    ffn, ffn_norm : list of str
        Each layer's feed-forward block (none if it is not one sub-module),
        and the LayerNorm feeding it.
    lora : list of str
        Linear layers LoRA adapts (usually the query and value projections).
    num_prefix_tokens : int
        Special tokens before the content tokens (AST: CLS + distillation = 2).
    grid_height : int
        Rows of the token grid (AST: frequency patches; 1-D encoders: 1).
    attention_interface : bool
        Whether attention uses Hugging Face's attention interface (prefix tuning).

    Example
    -------
    >>> t = PetlTargets(hidden_size=8, layers=["layers.0"], attention=["layers.0.attn"])
    >>> t.locations("pfeiffer_attention")
    (['layers.0.attn'], [])
    """

    hidden_size: int
    layers: list = field(default_factory=list)
    attention: list = field(default_factory=list)
    attention_norm: list = field(default_factory=list)
    ffn: list = field(default_factory=list)
    ffn_norm: list = field(default_factory=list)
    lora: list = field(default_factory=list)
    num_prefix_tokens: int = 0
    grid_height: int = 1
    attention_interface: bool = True

    def locations(self, placement):
        """``(modules, norms)``: the modules to wrap for a ``placement`` and the
        LayerNorms feeding them. ``pfeiffer_attention``: beside each attention
        block (the Soft-MoA paper's default); ``pfeiffer_ffn``: beside each
        feed-forward block; ``houlsby``: both.

        Arguments
        ---------
        placement : str
            ``pfeiffer_attention``, ``pfeiffer_ffn`` or ``houlsby``.

        Returns
        -------
        modules : list of str
            Dotted names (under the PETL root) of the modules to wrap.
        norms : list of str
            Dotted names of the LayerNorms feeding them, in the same order.
        """
        attention = (list(self.attention), list(self.attention_norm))
        ffn = (list(self.ffn), list(self.ffn_norm))
        if placement in ("pfeiffer_ffn", "houlsby") and not self.ffn:
            raise ValueError(
                f"placement={placement!r} needs a feed-forward sub-module, but "
                "this backbone has none as a single module. Use "
                "placement: pfeiffer_attention."
            )
        if placement == "pfeiffer_attention":
            return attention
        if placement == "pfeiffer_ffn":
            return ffn
        if placement == "houlsby":
            return attention[0] + ffn[0], attention[1] + ffn[1]
        raise ValueError(
            f"Unknown placement {placement!r}; choose pfeiffer_attention, "
            "pfeiffer_ffn or houlsby."
        )


def petl_root(backbone):
    """``(petl_root_name, root module, petl_targets)`` of a backbone lobe.

    Arguments
    ---------
    backbone : torch.nn.Module
        A lobe with ``petl_targets`` and ``petl_root_name``, the attribute
        holding the module to adapt (absent or None: the lobe itself).

    Returns
    -------
    root_name : str or None
        The lobe's ``petl_root_name``.
    root : torch.nn.Module
        The module whose sub-modules the PETL methods wrap.
    targets : PetlTargets
        The lobe's ``petl_targets``.

    Example
    -------
    >>> import torch
    >>> m = torch.nn.Linear(2, 2)
    >>> m.petl_targets = PetlTargets(hidden_size=2)
    >>> petl_root(m)[1] is m
    True
    """
    targets = getattr(backbone, "petl_targets", None)
    if targets is None:
        raise TypeError(
            f"{type(backbone).__name__} has no 'petl_targets'. Use a backbone lobe "
            "from speechbrain_moe.lobes, or give your module a PetlTargets record "
            "(see speechbrain_moe/targets.py)."
        )
    name = getattr(backbone, "petl_root_name", None)
    root = backbone if name is None else getattr(backbone, name)
    return name, root, targets
