"""What every backbone lobe shares: valid-token pooling and adapter-only
checkpoints.

A lobe subclasses :class:`Backbone`, loads its Hugging Face model into the
attribute named by ``petl_root_name``, fills ``petl_targets`` and implements
:meth:`Backbone.encode`. PETL methods then adapt it in place
(:func:`speechbrain_moe.methods.apply_method`).

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import main_process_only

POOLINGS = ("mean", "cls")
# Entry of an adapter checkpoint holding Backbone.petl_description().
DESCRIPTION_KEY = "__petl_description__"


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
    positions = torch.arange(max_len, device=lengths.device)
    return positions.unsqueeze(0) < lengths.unsqueeze(1)


@checkpoints.register_checkpoint_hooks
class Backbone(nn.Module):
    """Base class of backbone lobes.

    Subclasses set ``petl_root_name``, ``petl_targets`` and ``output_size``,
    and implement :meth:`encode`.

    Checkpoints hold only what trains (parameters with ``requires_grad``) and
    the persistent buffers of modules added by PETL methods; the pretrained
    weights come from ``source`` again. Loading checks names and shapes and
    says what differs.

    Arguments
    ---------
    pooling : str
        ``mean`` (over real tokens) or ``cls`` (first token).
    """

    petl_root_name = "model"
    petl_targets = None
    output_size = None

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

    def trainable_state_dict(self):
        """The tensors an adapter-only checkpoint holds.

        Returns
        -------
        dict
            Trainable parameters plus persistent buffers that PETL methods
            added (e.g. the selection bias of bias-balanced routers).
        """
        state = self.state_dict(keep_vars=True)
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        keep |= {name for name in state if ".adapter." in name and name not in keep}
        return {name: state[name].detach().clone() for name in state if name in keep}

    def petl_description(self):
        """What an adapter checkpoint must match: the lobe, its shape and the
        PETL method with its settings (plain values, saved with the tensors).

        Returns
        -------
        dict

        Example
        -------
        >>> class Tiny(Backbone):
        ...     output_size = 4
        >>> Tiny().petl_description()
        {'backbone': 'Tiny', 'hidden_size': 4, 'num_layers': None, 'petl_method': None, 'petl_settings': None}
        """
        targets = self.petl_targets
        layers = getattr(targets, "layers", None)
        settings = getattr(self, "petl_settings", None)
        return {
            "backbone": type(self).__name__,
            "hidden_size": getattr(targets, "hidden_size", None) or self.output_size,
            "num_layers": len(layers) if layers else None,
            "petl_method": getattr(self, "petl_method", None),
            "petl_settings": dict(settings) if settings is not None else None,
        }

    @staticmethod
    def format_description(description):
        """One-line text of :meth:`petl_description` (for messages).

        Arguments
        ---------
        description : dict or None
            A description.

        Returns
        -------
        str

        Example
        -------
        >>> Backbone.format_description({"backbone": "AST", "hidden_size": 32,
        ...     "num_layers": 2, "petl_method": "adapter",
        ...     "petl_settings": {"bottleneck": 4}})
        "AST (hidden_size 32, 2 layers) with petl_method 'adapter' {'bottleneck': 4}"
        >>> Backbone.format_description(None)
        'an unknown backbone/method (checkpoint without description)'
        """
        if not description:
            return "an unknown backbone/method (checkpoint without description)"
        layers = description.get("num_layers")
        shape = f"hidden_size {description.get('hidden_size')}"
        if layers:
            shape += f", {layers} layers"
        text = f"{description.get('backbone')} ({shape})"
        method = description.get("petl_method")
        if method:
            text += f" with petl_method {method!r}"
            if description.get("petl_settings"):
                text += f" {description['petl_settings']}"
        return text

    @checkpoints.mark_as_saver
    @main_process_only
    def _save(self, path):
        """Saves the adapter-only checkpoint (and :meth:`petl_description`);
        main process only (DDP replicas hold the same tensors)."""
        saved = self.trainable_state_dict()
        saved[DESCRIPTION_KEY] = self.petl_description()
        torch.save(saved, path)

    @checkpoints.mark_as_loader
    def _load(self, path, end_of_epoch=False):
        """Loads an adapter-only checkpoint, checking names and shapes."""
        del end_of_epoch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        self.load_trainable_state_dict(saved, source=str(path))

    @checkpoints.mark_as_transfer
    def _transfer(self, path):
        """Loads an adapter-only checkpoint for a pretrainer."""
        self._load(path)

    def load_trainable_state_dict(self, saved, source="checkpoint"):
        """Loads the tensors of :meth:`trainable_state_dict` onto this model.

        Arguments
        ---------
        saved : dict
            Name -> tensor.
        source : str
            Where it comes from (for messages).
        """
        saved = dict(saved)
        description = saved.pop(DESCRIPTION_KEY, None)
        current = self.state_dict()
        missing = sorted(set(self.trainable_state_dict()) - set(saved))
        unknown = sorted(set(saved) - set(current))
        shapes = [
            f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(current[k].shape)}"
            for k, v in saved.items()
            if k in current and v.shape != current[k].shape
        ]
        if missing or unknown or shapes:
            raise RuntimeError(
                f"The adapter checkpoint {source} was trained on "
                f"{self.format_description(description)}, but this model is "
                f"{self.format_description(self.petl_description())}: the "
                f"checkpoint lacks {missing[:5]} "
                f"(+{max(len(missing) - 5, 0)} more), has unknown {unknown[:5]} "
                f"(+{max(len(unknown) - 5, 0)} more), shape mismatches "
                f"{shapes[:5]}. Load it onto the backbone_source and petl_method "
                "(with the same settings) it was trained with."
            )
        self.load_state_dict(saved, strict=False)
