"""What every backbone lobe shares: loading, input checks, valid-token pooling.

Conventions of every lobe: ``wavs`` are ``[batch, samples]``, ``wav_lens``
relative lengths in (0, 1] (None: every clip fills the batch), hidden states
``[batch, time, channels]``, masks True on tokens of real audio. How each
backbone treats padding and long clips: ``docs/fidelity.md``.
"""

import os
import re

import torch
import torch.nn as nn
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.utils.logger import get_logger

from speechbrain_moe.recoverables import TrainableState

logger = get_logger(__name__)

POOLINGS = ("mean", "cls")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


def lengths_to_mask(lengths, max_len):
    """Boolean mask ``[batch, max_len]``, True on the first ``lengths`` positions.

    Arguments
    ---------
    lengths : torch.Tensor
        ``[batch]`` absolute lengths.
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
        ``[batch, time]`` (None: every token is real).

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


def unwrap(module):
    """The model inside (possibly nested) ``AdaptedModel`` wrappers.

    Arguments
    ---------
    module : torch.nn.Module
        A model, or an ``AdaptedModel`` around it.

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> from speechbrain.nnet.adapters import AdaptedModel, LoRA
    >>> inner = torch.nn.Sequential(torch.nn.Linear(2, 2))
    >>> unwrap(AdaptedModel(inner, LoRA, target_layers=["0"])) is inner
    True
    """
    while hasattr(module, "adapted_model"):
        module = module.adapted_model
    return module


def checked_lengths(wavs, wav_lens, max_samples, sample_rate, backbone, advice):
    """Valid samples of each clip, at least 1 and at most ``max_samples``.

    A clip without samples raises a ``ValueError`` naming it; a longer clip is
    cut, with a warning naming it and ending in ``advice``.

    Arguments
    ---------
    wavs, wav_lens : torch.Tensor
        A lobe's input.
    max_samples : int or None
        Longest clip encoded (None: no cap).
    sample_rate : int
        For durations in messages.
    backbone : str
        Name of the backbone, for messages.
    advice : str
        What to do about long clips.

    Returns
    -------
    torch.Tensor
        ``[batch]`` long.

    Example
    -------
    >>> wavs = torch.zeros(2, 100)
    >>> checked_lengths(wavs, torch.tensor([1.0, 0.5]), 80, 100, "Whisper", "")
    tensor([80, 50])
    >>> checked_lengths(wavs, torch.tensor([1.0, 0.0]), None, 100, "Whisper", "")
    Traceback (most recent call last):
    ...
    ValueError: Clip 1 of the batch is empty (wav_lens[1] = 0 of 100 samples); Whisper cannot encode it. Remove empty ...
    """
    if wavs.dim() != 2:
        raise ValueError(
            f"{backbone} expects waveforms [batch, samples], got shape "
            f"{tuple(wavs.shape)}; mix multi-channel audio down to mono."
        )
    samples = wavs.shape[1]
    if wav_lens is None:
        lengths = torch.full((wavs.shape[0],), samples, device=wavs.device)
    else:
        wav_lens = wav_lens.to(wavs.device).float()
        lengths = (wav_lens * samples).round().long().clamp(max=samples)
    cap = samples if max_samples is None else max_samples
    # One device sync for both checks.
    empty, long = torch.stack([(lengths < 1).any(), (lengths > cap).any()]).tolist()
    if empty:
        i = int((lengths < 1).nonzero()[0, 0])
        raise ValueError(
            f"Clip {i} of the batch is empty (wav_lens[{i}] = "
            f"{0 if wav_lens is None else float(wav_lens[i]):g} of {samples} "
            f"samples); {backbone} cannot encode it. Remove empty or unreadable "
            "audio files from the data set (e.g. filter on duration in the data "
            "preparation) or fix the relative lengths."
        )
    for i in (lengths > cap).nonzero()[:, 0].tolist() if long else []:
        logger.warning(
            f"Clip {i} of the batch lasts {int(lengths[i]) / sample_rate:.2f} s; "
            f"{backbone} encodes at most {cap / sample_rate:.2f} s (max_duration), "
            f"so only its first {cap / sample_rate:.2f} s are used. {advice}"
        )
    return lengths.clamp(max=cap)


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
        The lobe's name, for messages.

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

    A lobe loads its Hugging Face model (after :func:`load_config`) into the
    attribute named by ``petl_root_name``, sets ``petl_targets``,
    ``output_size`` and ``max_duration``, and implements :meth:`encode`. PETL
    methods adapt it in place; its checkpoints hold only what trains.

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
        wavs, wav_lens : torch.Tensor
            Waveforms and relative lengths.

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, tokens, output_size]``.
        mask : torch.Tensor
            ``[batch, tokens]``, True for tokens of real audio.
        """
        raise NotImplementedError

    def forward(self, wavs, wav_lens=None):
        """Pooled utterance embedding ``[batch, output_size]`` of :meth:`encode`."""
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
        """One line of text for a :meth:`describe` result (or None), for messages.

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
