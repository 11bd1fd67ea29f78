"""``prefix``: prefix tuning (Li & Liang, 2021): learnable keys and values in
every attention block, through a Hugging Face attention function wrapping SDPA.
"""

import torch
import torch.nn as nn
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from speechbrain_moe.checks import check_positive
from speechbrain_moe.petl.prompt import extend_attention_mask
from speechbrain_moe.petl.wrap import wrap_modules
from speechbrain_moe.targets import petl_root

ATTENTION_NAME = "speechbrain_moe_prefix"


def _prefix_sdpa(module, query, key, value, attention_mask, **kwargs):
    """SDPA with the ``(keys, values)`` a :class:`PrefixAttention` set on the
    block (``[heads, prefix, head_dim]``) prepended to K and V."""
    prefix = module.__dict__.get("_petl_prefix")
    if prefix is not None:
        keys, values = prefix
        batch = key.shape[0]
        key = torch.cat([keys.to(key.dtype).expand(batch, -1, -1, -1), key], dim=2)
        value = torch.cat(
            [values.to(value.dtype).expand(batch, -1, -1, -1), value], dim=2
        )
        if attention_mask is not None:
            attention_mask = extend_attention_mask(attention_mask, keys.shape[1])
            attention_mask = attention_mask[..., keys.shape[1] :, :]
    return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)


AttentionInterface.register(ATTENTION_NAME, _prefix_sdpa)
# Padding masks are built as for SDPA (keys of padded frames hidden).
AttentionMaskInterface.register(ATTENTION_NAME, sdpa_mask)


class PrefixAttention(nn.Module):
    """Holds one attention block's prefixes and exposes them while it runs.

    Arguments
    ---------
    target_module : torch.nn.Module
        A Hugging Face attention block using the attention interface.
    num_prefix, num_heads, head_dim : int
        Prefix length, attention heads of the block and their size.

    Example
    -------
    >>> block = PrefixAttention(nn.Identity(), num_prefix=3, num_heads=2, head_dim=4)
    >>> block.prefix_keys.shape, block(torch.ones(1)).tolist()
    (torch.Size([2, 3, 4]), [1.0])
    """

    def __init__(self, target_module, num_prefix, num_heads, head_dim):
        super().__init__()
        check_positive("prefix", num_prefix=num_prefix)
        self.pretrained_module = target_module
        shape = (num_heads, num_prefix, head_dim)
        # 0.02: the standard deviation Hugging Face models initialise their
        # embeddings with (``initializer_range``).
        self.prefix_keys = nn.Parameter(torch.randn(shape) * 0.02)
        self.prefix_values = nn.Parameter(torch.randn(shape) * 0.02)

    def forward(self, *args, **kwargs):
        """Runs the block with this layer's prefixes visible to it.

        The prefixes are visible only while the block runs (set on the
        block's ``__dict__`` for the attention function registered as
        ``ATTENTION_NAME``, removed when it returns or raises).

        Arguments
        ---------
        *args
            Positional arguments of the wrapped attention block.
        **kwargs
            Keyword arguments of the wrapped attention block.

        Returns
        -------
        object
            What the wrapped attention block returns.
        """
        inner = self.pretrained_module
        inner.__dict__["_petl_prefix"] = (self.prefix_keys, self.prefix_values)
        try:
            return inner(*args, **kwargs)
        finally:
            inner.__dict__.pop("_petl_prefix", None)


def prefix_tuning(backbone, num_prefix=10):
    """Adds ``num_prefix`` learnable key/value vectors to every attention block.

    Arguments
    ---------
    backbone : torch.nn.Module
        A backbone lobe, adapted in place and returned.
    num_prefix : int
        Prefix length per layer.

    Returns
    -------
    torch.nn.Module
        ``backbone``, each attention block wrapped in a
        :class:`PrefixAttention` and its root set to the prefix attention.

    Example
    -------
    >>> import tempfile
    >>> from transformers import ASTConfig, ASTModel
    >>> from speechbrain_moe.lobes.ast import AST
    >>> folder = tempfile.mkdtemp()
    >>> ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, max_length=100)).save_pretrained(folder)
    >>> ast = prefix_tuning(AST(folder, max_frames=60), num_prefix=4)
    >>> sum(isinstance(m, PrefixAttention) for m in ast.modules())
    2
    >>> ast(torch.randn(2, 16000)).shape
    torch.Size([2, 32])
    """
    check_positive("prefix", num_prefix=num_prefix)
    _, root, targets = petl_root(backbone)
    if not targets.attention_interface:
        raise ValueError(
            f"prefix tuning needs attention computed through Hugging Face's "
            f"attention interface, which {type(backbone).__name__} does not use. "
            "Choose another method (e.g. prompt or lora) for this backbone."
        )
    config = getattr(root, "config", None)
    num_heads = getattr(config, "num_attention_heads", None) or getattr(
        config, "encoder_attention_heads", None
    )
    if not num_heads:
        raise ValueError("prefix tuning: cannot read the number of attention heads.")
    head_dim = targets.hidden_size // num_heads
    kwargs = dict(num_prefix=num_prefix, num_heads=num_heads, head_dim=head_dim)
    wrap_modules(backbone, PrefixAttention, "attention", kwargs)
    root.set_attn_implementation(ATTENTION_NAME)
    return backbone
