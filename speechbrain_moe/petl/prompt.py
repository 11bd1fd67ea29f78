"""``prompt``: deep prompt tuning (Jia et al., 2022, VPT-deep): learnable tokens
prepended to each layer's input and dropped from its output."""

import torch
import torch.nn as nn

from speechbrain_moe.checks import check_positive
from speechbrain_moe.petl.wrap import wrap_modules
from speechbrain_moe.targets import petl_root


def extend_attention_mask(mask, extra):
    """Lets every query attend to ``extra`` new leading key positions.

    Arguments
    ---------
    mask : torch.Tensor or None
        A 4-D ``[batch, heads, queries, keys]`` mask (boolean: True = attend;
        float: 0 = attend), a 2-D ``[batch, keys]`` padding mask, or None.
    extra : int
        Number of leading positions to add (to keys, and to queries for 4-D).

    Returns
    -------
    torch.Tensor or None

    Example
    -------
    >>> extend_attention_mask(torch.zeros(1, 1, 2, 2), 1).shape
    torch.Size([1, 1, 3, 3])
    """
    if mask is None:
        return None
    allowed = True if mask.dtype == torch.bool else 0
    if mask.dim() == 2:
        pad = mask.new_full((mask.shape[0], extra), allowed)
        return torch.cat([pad, mask], dim=-1)
    return nn.functional.pad(mask, (extra, 0, extra, 0), value=allowed)


class DeepPromptLayer(nn.Module):
    """Prepends ``num_prompts`` learnable tokens to a layer's input.

    Arguments
    ---------
    target_module : torch.nn.Module
        A transformer layer taking ``hidden_states`` first.
    num_prompts, hidden_size : int
        Prompt tokens for this layer, and their width.

    Example
    -------
    >>> layer = DeepPromptLayer(nn.Linear(8, 8), num_prompts=3, hidden_size=8)
    >>> layer(torch.randn(2, 5, 8)).shape
    torch.Size([2, 5, 8])
    """

    def __init__(self, target_module, num_prompts, hidden_size):
        super().__init__()
        check_positive("prompt", num_prompts=num_prompts)
        self.pretrained_module = target_module
        self.num_prompts = num_prompts
        # 0.02: the standard deviation Hugging Face models initialise their
        # embeddings with (``initializer_range``).
        self.prompts = nn.Parameter(torch.randn(num_prompts, hidden_size) * 0.02)

    def forward(self, hidden_states, *args, **kwargs):
        """Runs the layer on ``[prompts; hidden_states]`` and drops the prompts.

        Arguments
        ---------
        hidden_states : torch.Tensor
            ``[batch, time, hidden_size]`` input of the layer.
        *args
            Passed on to the layer; a tensor first among them is taken for the
            attention mask and extended to the prompt positions.
        **kwargs
            Passed on to the layer; ``attention_mask`` is extended likewise.

        Returns
        -------
        torch.Tensor or tuple
            The layer's output without the prompt positions, ``[batch, time,
            hidden_size]`` (or a tuple of the same type with that first).
        """
        prompts = self.prompts.to(hidden_states.dtype).expand(
            len(hidden_states), -1, -1
        )
        x = torch.cat([prompts, hidden_states], dim=1)
        args = list(args)
        if args and isinstance(args[0], torch.Tensor):
            args[0] = extend_attention_mask(args[0], self.num_prompts)
        mask = kwargs.get("attention_mask")
        if isinstance(mask, torch.Tensor):
            kwargs["attention_mask"] = extend_attention_mask(mask, self.num_prompts)
        out = self.pretrained_module(x, *args, **kwargs)
        if isinstance(out, torch.Tensor):
            return out[:, self.num_prompts :]
        return type(out)([out[0][:, self.num_prompts :], *out[1:]])


def deep_prompt(backbone, num_prompts=10):
    """Adds ``num_prompts`` learnable prompt tokens in front of every layer.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe, adapted in place and returned.
    num_prompts : int
        Prompt tokens per layer.

    Returns
    -------
    torch.nn.Module
        ``backbone``, each of its ``petl_targets.layers`` wrapped in a
        :class:`DeepPromptLayer`.

    Example
    -------
    >>> from speechbrain_moe.targets import PetlTargets
    >>> backbone = nn.Sequential(nn.Linear(8, 8), nn.Linear(8, 8))
    >>> backbone.petl_targets = PetlTargets(hidden_size=8, layers=["0", "1"])
    >>> backbone = deep_prompt(backbone, num_prompts=4)
    >>> type(backbone[1]).__name__, backbone(torch.randn(2, 5, 8)).shape
    ('DeepPromptLayer', torch.Size([2, 5, 8]))
    """
    check_positive("prompt", num_prompts=num_prompts)
    _, _, targets = petl_root(backbone)
    kwargs = {"num_prompts": num_prompts, "hidden_size": targets.hidden_size}
    return wrap_modules(backbone, DeepPromptLayer, "layers", kwargs)
