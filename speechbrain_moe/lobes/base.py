"""What every backbone lobe shares. Conventions: ``wavs`` ``[batch, samples]``,
``wav_lens`` relative lengths in (0, 1] (None: full), hidden states ``[batch,
time, channels]``, masks True on real tokens; padding: ``docs/fidelity.md``.
"""

import contextlib
import os
import re

import torch
import torch.nn as nn
from speechbrain.dataio.dataio import length_to_mask
from speechbrain.utils.logger import get_logger

from speechbrain_moe.recoverables import TrainableState

logger = get_logger(__name__)

POOLINGS = ("mean", "cls")


@contextlib.contextmanager
def quiet_loading():
    """Silences transformers' progress bars (its "Loading weights" bar, and the
    Hub's download bars it switches with them) inside the ``with`` block
    only, and restores both as they were, so a recipe's log shows no bar per
    model load while a user's own settings stay untouched.

    Example
    -------
    >>> from transformers.utils import logging as hf_logging
    >>> before = hf_logging.is_progress_bar_enabled()
    >>> with quiet_loading():
    ...     hf_logging.is_progress_bar_enabled()
    False
    >>> hf_logging.is_progress_bar_enabled() == before
    True
    """
    from huggingface_hub.utils import (
        are_progress_bars_disabled,
        disable_progress_bars,
        enable_progress_bars,
    )
    from transformers.utils import logging as hf_logging

    bars_on, hub_off = (
        hf_logging.is_progress_bar_enabled(),
        are_progress_bars_disabled(),
    )
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if bars_on:
            hf_logging.enable_progress_bar()
        if hub_off:
            disable_progress_bars()
        else:
            enable_progress_bars()


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
        ``[batch, max_len]`` boolean mask.

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
        ``[batch, channels]`` (a clip without real tokens gives zeros).

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
        The innermost model (``module`` itself when it is not wrapped).

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


def adaptation_of(module):
    """The PETL method and settings a backbone was adapted with.

    The one place that reads what :func:`speechbrain_moe.petl.apply_method`
    recorded (the ``petl_method`` / ``petl_settings`` attributes a
    :class:`Backbone` declares).

    Arguments
    ---------
    module : torch.nn.Module
        A backbone lobe (possibly inside ``AdaptedModel`` or DDP wrappers),
        or any other module.

    Returns
    -------
    tuple
        ``(petl_method, petl_settings)``; ``(None, None)`` for a backbone
        not adapted yet and for a module that is not a :class:`Backbone`.

    Example
    -------
    >>> class Tiny(Backbone):
    ...     output_size = 4
    >>> tiny = Tiny()
    >>> adaptation_of(tiny), adaptation_of(torch.nn.Linear(2, 2))
    ((None, None), (None, None))
    >>> tiny.petl_method, tiny.petl_settings = "bitfit", {}
    >>> adaptation_of(tiny)
    ('bitfit', {})
    """
    module = unwrap(getattr(module, "module", module))  # DDP keeps it in .module
    if not isinstance(module, Backbone):
        return None, None
    return module.petl_method, module.petl_settings


class Backbone(TrainableState, nn.Module):
    """Base class of backbone lobes: each loads its Hugging Face model into the
    attribute named by ``petl_root_name``, sets ``petl_targets``,
    ``output_size``, ``sample_rate``, ``max_duration`` and ``max_samples``
    (None: no cap), and implements :meth:`encode`.

    The PETL method a backbone was adapted with is part of its interface:
    ``petl_method`` (the method name or YAML path) and ``petl_settings``
    (all its settings, defaults included) are declared here, None until
    :func:`speechbrain_moe.petl.apply_method` adapts the backbone and
    records them, and read through :func:`adaptation_of` (the Brain's log,
    :meth:`describe` for checkpoints and packaged models, the merge and
    disable checks). A backbone records the method itself because the
    HyperPyYAML line ``backbone: !apply:...apply_method`` must yield the
    adapted module, so a separate record would have no place to live.

    Arguments
    ---------
    pooling : str
        ``mean`` (over real tokens) or ``cls`` (first token).

    Example
    -------
    >>> class Frames(Backbone):  # one token per 4 samples, its mean
    ...     output_size, sample_rate = 1, 16000
    ...     def encode(self, wavs, wav_lens=None):
    ...         hidden = wavs.unfold(1, 4, 4).mean(-1, keepdim=True)
    ...         lengths = self._valid_lengths(wavs, wav_lens, "") // 4
    ...         return hidden, lengths_to_mask(lengths, hidden.shape[1])
    >>> wavs = torch.tensor([[1.0, 1, 1, 1, 3, 3, 3, 3]] * 2)
    >>> Frames()(wavs, torch.tensor([1.0, 0.5]))
    tensor([[2.],
            [1.]])
    """

    petl_root_name = "model"
    petl_targets = None
    output_size = None
    max_duration = None
    max_samples = None
    load_hint = (
        "Load it onto the backbone_source and petl_method (with the same "
        "settings) it was trained with."
    )

    def __init__(self, pooling="mean"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"Unknown pooling {pooling!r}; choose one of {POOLINGS}.")
        self.pooling = pooling
        # Recorded by speechbrain_moe.petl.apply_method (see the class docstring).
        self.petl_method = None
        self.petl_settings = None

    @staticmethod
    def _load_config(source, save_path, model_types, lobe, overrides=None):
        """The Hugging Face config of ``source`` (a folder or a hub id), with
        clear errors when it is missing or of another model type;
        ``overrides`` (attribute -> value) are applied by
        ``AutoConfig.from_pretrained`` itself, as it is loaded, rather than
        by assigning fields of the loaded config afterwards."""
        from transformers import AutoConfig

        source = str(source)
        if not os.path.isdir(source) and not HUB_ID.match(source):
            raise FileNotFoundError(
                f"backbone_source {source} is not a folder (and not a hub id such as "
                "'openai/whisper-base'). Point --backbone_source at the folder holding "
                "the model's config.json, or give a hub id."
            )
        try:
            config = AutoConfig.from_pretrained(
                source, cache_dir=save_path, **(overrides or {})
            )
        except (OSError, ValueError) as err:
            raise OSError(
                f"Cannot load the model config of backbone_source {source!r} ({err}). "
                "A folder needs the config.json written by save_pretrained; a hub id "
                "needs the network or a cache (HF_HUB_OFFLINE=1 with the model in "
                "save_path)."
            ) from err
        if config.model_type not in model_types:
            raise ValueError(
                f"backbone_source {source} holds a {config.model_type!r} model, but "
                f"the {lobe} lobe loads {' / '.join(model_types)} models. Use the "
                "recipe YAML of that backbone (hparams/ast.yaml, whisper.yaml or "
                "wavlm.yaml) or another source."
            )
        return config

    def encode(self, wavs, wav_lens=None):
        """Encodes a batch of waveforms into ``hidden`` ``[batch, tokens,
        output_size]`` and ``mask`` ``[batch, tokens]``, True on real audio.

        Each lobe implements it.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, tokens, output_size]`` last hidden states.
        mask : torch.Tensor
            ``[batch, tokens]`` boolean, True on the tokens of real audio.
        """
        raise NotImplementedError

    def _check_rate(self, name, expected, sample_rate):
        """Records ``sample_rate``; raises unless it is ``expected``."""
        if sample_rate != expected:
            raise ValueError(
                f"{name} expects {expected} Hz audio, got sample_rate={sample_rate}. "
                "Resample in the data pipeline (the recipes do) and set "
                f"sample_rate: {expected}."
            )
        self.sample_rate = sample_rate

    def _valid_lengths(self, wavs, wav_lens, advice, name=None):
        """Valid samples of each clip, in [1, ``max_samples``]: a clip without
        samples raises, a longer one is cut with a warning ending in ``advice``."""
        name = name or type(self).__name__
        if wavs.dim() != 2:
            raise ValueError(
                f"{name} expects waveforms [batch, samples], got shape "
                f"{tuple(wavs.shape)}; mix multi-channel audio down to mono."
            )
        samples = wavs.shape[1]
        if wav_lens is None:
            lengths = torch.full((wavs.shape[0],), samples, device=wavs.device)
        else:
            wav_lens = wav_lens.to(wavs.device).float()
            lengths = (wav_lens * samples).round().long().clamp(max=samples)
        cap = samples if self.max_samples is None else self.max_samples
        # One device sync for both checks.
        empty, long = torch.stack([(lengths < 1).any(), (lengths > cap).any()]).tolist()
        if empty:
            i = int((lengths < 1).nonzero()[0, 0])
            raise ValueError(
                f"Clip {i} of the batch is empty (wav_lens[{i}] = "
                f"{0 if wav_lens is None else float(wav_lens[i]):g} of {samples} "
                f"samples); {name} cannot encode it. Remove empty or unreadable "
                "audio files from the data set (e.g. filter on duration in the data "
                "preparation) or fix the relative lengths."
            )
        rate = self.sample_rate
        for i in (lengths > cap).nonzero()[:, 0].tolist() if long else []:
            logger.warning(
                f"Clip {i} of the batch lasts {int(lengths[i]) / rate:.2f} s; "
                f"{name} encodes at most {cap / rate:.2f} s (max_duration), "
                f"so only its first {cap / rate:.2f} s are used. {advice}"
            )
        return lengths.clamp(max=cap)

    def forward(self, wavs, wav_lens=None):
        """Pooled utterance embedding ``[batch, output_size]`` of :meth:`encode`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        torch.Tensor
            ``[batch, output_size]``: the mean over the real tokens
            (``pooling: mean``) or the first token (``pooling: cls``).
        """
        hidden, mask = self.encode(wavs, wav_lens)
        if self.pooling == "cls":
            return hidden[:, 0]
        return masked_mean(hidden, mask)

    def describe(self):
        """The lobe, its shape and its PETL method with settings, as a dict.

        Returns
        -------
        dict
            ``model``, ``hidden_size``, ``num_layers``, ``petl_method`` and
            ``petl_settings`` (what a checkpoint must match).

        Example
        -------
        >>> class Tiny(Backbone):
        ...     output_size = 4
        >>> Tiny().describe()
        {'model': 'Tiny', 'hidden_size': 4, 'num_layers': None, 'petl_method': None, 'petl_settings': None}
        """
        targets = self.petl_targets
        layers = getattr(targets, "layers", None)
        method, settings = adaptation_of(self)
        return {
            "model": type(self).__name__,
            "hidden_size": getattr(targets, "hidden_size", None) or self.output_size,
            "num_layers": len(layers) if layers else None,
            "petl_method": method,
            "petl_settings": dict(settings) if settings is not None else None,
        }

    @staticmethod
    def format_description(description):
        """One line of text for a :meth:`describe` result (or None), for messages.

        Arguments
        ---------
        description : dict or None
            A :meth:`describe` result (None: a checkpoint without one).

        Returns
        -------
        str
            The model, its shape, and its PETL method with settings.

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
