"""``lora``: SpeechBrain's own :class:`speechbrain.nnet.adapters.LoRA` on the
backbone's query and value projections (Hu et al., 2022).

Authors
 * speechbrain-moe contributors 2026
"""

from speechbrain.nnet.adapters import AdaptedModel, LoRA

from speechbrain_moe.methods import register_method
from speechbrain_moe.targets import petl_root, set_petl_root


@register_method("lora")
def lora(backbone, rank=8, alpha=8.0, target_layers=None):
    """Wraps the backbone's LoRA targets with SpeechBrain's ``LoRA``.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe.
    rank : int
        LoRA rank.
    alpha : float
        LoRA scaling numerator (the update is scaled by ``alpha / rank``).
    target_layers : list of str, optional
        Override the backbone's default targets (fnmatch patterns relative to
        the adaptable root).

    Returns
    -------
    torch.nn.Module
        The backbone.
    """
    if int(rank) < 1:
        raise ValueError(f"lora: rank must be a positive integer, got {rank}.")
    name, root, targets = petl_root(backbone)
    layers = list(target_layers or targets.lora)
    if not layers:
        raise ValueError(
            f"lora: {type(backbone).__name__} names no LoRA target layers; pass "
            "target_layers in hparams/petl/lora.yaml."
        )
    adapted = AdaptedModel(
        root, LoRA, target_layers=layers, adapter_kwargs={"rank": rank, "alpha": alpha}
    )
    set_petl_root(backbone, name, adapted)
    return backbone
