"""What every backbone lobe shares: loading, valid-token pooling, checkpoints.

A lobe subclasses :class:`Backbone`, loads its Hugging Face model (with
:func:`load_config` first, which turns the usual mistakes into clear errors)
into the attribute named by ``petl_root_name``, fills ``petl_targets`` and
implements :meth:`Backbone.encode`. PETL methods then adapt it in place
(:func:`speechbrain_moe.petl.apply_method`); its checkpoints hold only what
trains (:class:`~speechbrain_moe.recoverables.TrainableState`).

Authors
 * speechbrain-moe contributors 2026
"""

import os
import re

import torch
import torch.nn as nn
from speechbrain.dataio.dataio import length_to_mask

from speechbrain_moe.recoverables import TrainableState

POOLINGS = ("mean", "cls")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def lengths_to_mask(lengths, max_len):
    """Boolean mask ``[batch, max_len]`` from absolute lengths.

    Arguments
    ---------
    lengths : torch.Tensor
        ``[batch]`` number of real positions.
    max_len : int
        Width of the mask.

    Returns
    -------
    torch.Tensor

    Example
    -------
    >>> lengths_to_mask(torch.tensor([1, 3]), 3)
    tensor([[ True, False, False],
            [ True,  True,  True]])
    """
    return length_to_mask(lengths, max_len, dtype=torch.bool)


def masked_mean(hidden, mask):
    """Mean over the real tokens only.

    Arguments
    ---------
    hidden : torch.Tensor
        ``[batch, time, channels]``.
    mask : torch.Tensor or None
        ``[batch, time]``, True for real tokens.

    Returns
    -------
    torch.Tensor
        ``[batch, channels]``.

    Example
    -------
    >>> h = torch.tensor([[[1.0], [3.0], [100.0]]])
    >>> masked_mean(h, torch.tensor([[True, True, False]]))
    tensor([[2.]])
    """
    if mask is None:
        return hidden.mean(dim=1)
    weights = mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)


def load_config(source, save_path, model_types, lobe):
    """The Hugging Face config of ``source``, checked to fit the lobe.

    Arguments
    ---------
    source : str
        A local folder (``save_pretrained`` layout) or a hub id.
    save_path : str or None
        Cache folder for hub downloads.
    model_types : tuple of str
        Accepted ``config.model_type`` values.
    lobe : str
        The lobe's name (for messages).

    Returns
    -------
    transformers.PretrainedConfig

    Example
    -------
    >>> load_config("/no/such/folder", None, ("whisper",), "Whisper")
    Traceback (most recent call last):
    ...
    FileNotFoundError: backbone_source /no/such/folder is not a folder ...
    """
    from transformers import AutoConfig

    source = str(source)
    if not os.path.isdir(source) and not HUB_ID.match(source):
        raise FileNotFoundError(
            f"backbone_source {source} is not a folder (and not a hub id such as "
            "'openai/whisper-base'). Point --backbone_source at the folder holding "
            "the model's config.json, or give a hub id."
        )
    try:
        config = AutoConfig.from_pretrained(source, cache_dir=save_path)
    except (OSError, ValueError) as err:
        raise OSError(
            f"Cannot load the model config of backbone_source {source!r} ({err}). "
            "A folder needs the config.json written by save_pretrained; a hub id "
            "needs the network or a cache (HF_HUB_OFFLINE=1 with the model in "
            "save_path)."
        ) from err
    if config.model_type not in model_types:
        raise ValueError(
            f"backbone_source {source} holds a {config.model_type!r} model, but the "
            f"{lobe} lobe loads {' / '.join(model_types)} models. Use the recipe "
            "YAML of that backbone (hparams/ast.yaml, whisper.yaml or wavlm.yaml) "
            "or another source."
        )
    return config


class Backbone(TrainableState, nn.Module):
    """Base class of backbone lobes.

    Subclasses set ``petl_root_name``, ``petl_targets`` and ``output_size``,
    and implement :meth:`encode`.

    Arguments
    ---------
    pooling : str
        ``mean`` (over real tokens) or ``cls`` (first token).
    """

    petl_root_name = "model"
    petl_targets = None
    output_size = None
    max_duration = None
    load_hint = (
        "Load it onto the backbone_source and petl_method (with the same "
        "settings) it was trained with."
    )

    def __init__(self, pooling="mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")
        self.pooling = pooling

    def encode(self, wavs, wav_lens=None):
        """Encodes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, tokens, output_size]``.
        mask : torch.Tensor
            ``[batch, tokens]``, True for tokens of real audio.
        """
        raise NotImplementedError

    def forward(self, wavs, wav_lens=None):
        """Pooled utterance embedding ``[batch, output_size]``.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        torch.Tensor
        """
        hidden, mask = self.encode(wavs, wav_lens)
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)

    def describe(self):
        """The lobe, its shape and its PETL method with settings.

        Returns
        -------
        dict

        Example
        -------
        >>> class Tiny(Backbone):
        ...     output_size = 4
        >>> Tiny().describe()
        {'model': 'Tiny', 'hidden_size': 4, 'num_layers': None, 'petl_method': None, 'petl_settings': None}
        """
        targets = self.petl_targets
        layers = getattr(targets, "layers", None)
        settings = getattr(self, "petl_settings", None)
        return {
            "model": type(self).__name__,
            "hidden_size": getattr(targets, "hidden_size", None) or self.output_size,
            "num_layers": len(layers) if layers else None,
            "petl_method": getattr(self, "petl_method", None),
            "petl_settings": dict(settings) if settings is not None else None,
        }

    @staticmethod
    def format_description(description):
        """One line of text for :meth:`describe` (in messages).

        Arguments
        ---------
        description : dict or None
            A description.

        Returns
        -------
        str

        Example
        -------
        >>> Backbone.format_description({"model": "AST", "hidden_size": 32,
        ...     "num_layers": 2, "petl_method": "adapter",
        ...     "petl_settings": {"bottleneck": 4}})
        "AST (hidden_size 32, 2 layers) with petl_method 'adapter' {'bottleneck': 4}"
        """
        if not description:
            return "an unknown backbone/method (checkpoint without description)"
        shape = f"hidden_size {description.get('hidden_size')}"
        if description.get("num_layers"):
            shape += f", {description['num_layers']} layers"
        text = f"{description.get('model')} ({shape})"
        if description.get("petl_method"):
            text += f" with petl_method {description['petl_method']!r}"
            if description.get("petl_settings"):
                text += f" {description['petl_settings']}"
        return text
