"""wav2vec2-family encoders (WavLM, HuBERT, wav2vec 2.0) as a SpeechBrain lobe,
each clip encoded as alone and unpadded (``docs/fidelity.md``, ``docs/design.md``).
"""

import contextvars
import logging
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.nnet.adapters import replace_module
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask, quiet_loading, unwrap
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

logger = logging.getLogger(__name__)

MODEL_TYPES = ("wavlm", "hubert", "wav2vec2", "wav2vec2-conformer", "data2vec-audio")


def rebuilt_with_parameters(module, cls, *args, **kwargs):
    """A ``cls(*args, **kwargs)`` that holds ``module``'s own parameters,
    buffers and sub-modules (the same tensors, not copies).

    The new module is built on the meta device (nothing allocated or
    initialised), then given every direct parameter, buffer and child of
    ``module`` under the same names, so its ``state_dict`` has the same keys
    and tensors; a parameter or buffer of ``cls`` that ``module`` lacks is
    refused. Used to give a Hugging Face block a subclass of ours without
    assigning ``__class__``.

    Arguments
    ---------
    module : torch.nn.Module
        The module whose tensors the new one takes.
    cls : type
        Class of the new module (usually a subclass of ``type(module)``).
    *args, **kwargs
        ``cls``'s constructor arguments (the same shapes as ``module``).

    Returns
    -------
    torch.nn.Module
        The new module, in ``module``'s training mode.

    Example
    -------
    >>> old = nn.Linear(3, 2)
    >>> new = rebuilt_with_parameters(old, nn.Linear, 3, 2)
    >>> new.weight is old.weight, list(new.state_dict()) == list(old.state_dict())
    (True, True)
    """
    with torch.device("meta"):
        new = cls(*args, **kwargs)
    for name, child in module.named_children():
        setattr(new, name, child)
    for name, param in module.named_parameters(recurse=False):
        setattr(new, name, param)
    for name, buffer in module.named_buffers(recurse=False):
        setattr(new, name, buffer)
    missing = [
        name
        for name, tensor in [*new.named_parameters(), *new.named_buffers()]
        if tensor.is_meta
    ]
    if missing:
        raise RuntimeError(
            f"Cannot rebuild this {type(module).__name__} as {cls.__name__}: "
            f"{cls.__name__} has {missing}, which the module lacks (a "
            "transformers release changed the block). Pin transformers to the "
            "tested range of pyproject.toml."
        )
    return new.train(module.training)


class ModularWavLMAttention(WavLMAttention):
    """``WavLMAttention`` calling its projections as modules (LoRA-wrappable).

    Hugging Face's hands ``q_proj.weight`` etc. to
    ``F.multi_head_attention_forward``, which bypasses LoRA wrappers. The lobe
    replaces every ``WavLMAttention`` of its model by the one
    :meth:`from_attention` builds around the same weights (same parameter
    names, so checkpoints are unchanged).

    Example
    -------
    >>> attn = WavLMAttention(embed_dim=8, num_heads=2, num_buckets=8, max_distance=16)
    >>> x = torch.randn(2, 5, 8)
    >>> modular = ModularWavLMAttention.from_attention(attn)
    >>> torch.allclose(modular(x)[0], attn(x)[0], atol=1e-6)
    True
    >>> modular.q_proj is attn.q_proj
    True
    """

    @classmethod
    def from_attention(cls, attention):
        """The modular attention holding ``attention``'s weights.

        Arguments
        ---------
        attention : WavLMAttention
            A Hugging Face WavLM attention block.

        Returns
        -------
        ModularWavLMAttention
            Same settings, same parameter objects and names.

        Example
        -------
        >>> attn = WavLMAttention(embed_dim=8, num_heads=2, has_relative_position_bias=False)
        >>> modular = ModularWavLMAttention.from_attention(attn)
        >>> modular.gru_rel_pos_const is attn.gru_rel_pos_const
        True
        """
        return rebuilt_with_parameters(
            attention,
            cls,
            embed_dim=attention.embed_dim,
            num_heads=attention.num_heads,
            dropout=attention.dropout,
            num_buckets=attention.num_buckets,
            max_distance=attention.max_distance,
            has_relative_position_bias=hasattr(attention, "rel_attn_embed"),
        )

    def torch_multi_head_self_attention(
        self, hidden_states, attention_mask, gated_position_bias
    ):
        """Same inputs and outputs as ``WavLMAttention``'s (mask: 1 = real).

        Arguments
        ---------
        hidden_states : torch.Tensor
            ``[batch, time, embed_dim]`` input of the attention block.
        attention_mask : torch.Tensor or None
            ``[batch, time]`` padding mask, 1 on real frames (None: all real).
        gated_position_bias : torch.Tensor
            ``[batch * num_heads, time, time]`` WavLM's gated relative
            position bias, added to the attention logits.

        Returns
        -------
        output : torch.Tensor
            ``[batch, time, embed_dim]`` attention output (after ``out_proj``).
        weights : None
            No attention weights (SDPA does not return them).
        """
        batch, time, _ = hidden_states.shape
        query, key, value = (
            proj(hidden_states).view(batch, time, self.num_heads, -1).transpose(1, 2)
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )
        bias = gated_position_bias.view(batch, self.num_heads, time, time)
        bias = bias.to(query.dtype)
        if attention_mask is not None:
            padding = attention_mask.ne(1)[:, None, None, :]
            bias = bias.masked_fill(padding, float("-inf"))
        dropout = self.dropout if self.training else 0.0
        out = F.scaled_dot_product_attention(
            query, key, value, attn_mask=bias, dropout_p=dropout
        )
        out = out.transpose(1, 2).reshape(batch, time, self.embed_dim)
        return self.out_proj(out), None


class MaskedGroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` over ``[batch, channels, time]`` whose statistics
    cover each clip's first valid frames only. The lobe replaces the first
    convolution's norm of "base" models by the one :meth:`from_group_norm`
    builds around the same weight and bias. The valid frames of the current
    call come through :func:`front_end_frames` (a context variable, like
    :func:`speechbrain_moe.routing.token_mask`: nothing is stored on the
    module); outside it the norm is plain ``nn.GroupNorm``.

    Example
    -------
    >>> plain = nn.GroupNorm(2, 4)
    >>> x = torch.randn(2, 4, 9)
    >>> alone = plain(x[:1, :, :5])
    >>> norm = MaskedGroupNorm.from_group_norm(plain)
    >>> with front_end_frames(torch.tensor([5, 9])):
    ...     masked = norm(x)
    >>> torch.allclose(masked[:1, :, :5], alone, atol=1e-5)
    True
    >>> torch.allclose(norm(x), plain(x))
    True
    """

    @classmethod
    def from_group_norm(cls, norm):
        """The masked norm holding ``norm``'s weight and bias.

        Arguments
        ---------
        norm : torch.nn.GroupNorm
            The norm to replace.

        Returns
        -------
        MaskedGroupNorm
            Same groups, channels, epsilon and affine parameters (the same
            objects).

        Example
        -------
        >>> plain = nn.GroupNorm(2, 4)
        >>> MaskedGroupNorm.from_group_norm(plain).weight is plain.weight
        True
        """
        return rebuilt_with_parameters(
            norm, cls, norm.num_groups, norm.num_channels, norm.eps, norm.affine
        )

    def forward(self, x):
        """Normalises ``x``; padded frames come out as the bias.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, channels, time]`` output of the first convolution.

        Returns
        -------
        torch.Tensor
            ``[batch, channels, time]``, normalised with statistics of each
            clip's valid frames (float32) inside :func:`front_end_frames`.
        """
        valid_frames = _FRONT_END_FRAMES.get()
        if valid_frames is None:
            return super().forward(x)
        batch, channels, time = x.shape
        size = channels // self.num_groups
        x = x.float()
        valid = lengths_to_mask(valid_frames, time)
        count = valid.sum(1).view(batch, 1, 1).float() * size

        def group_mean(sums):
            """``[batch, channels, 1]`` sums -> means over each group."""
            sums = sums.view(batch, self.num_groups, size).sum(-1, keepdim=True)
            return sums.repeat_interleave(size, 1) / count

        mean = group_mean(torch.bmm(x, valid.float().unsqueeze(-1)))
        centred = (x - mean).masked_fill_(~valid.unsqueeze(1), 0.0)
        rows = centred.reshape(batch * channels, 1, time)
        squares = torch.bmm(rows, rows.transpose(1, 2)).view(batch, channels, 1)
        scale = torch.rsqrt(group_mean(squares) + self.eps)
        if not self.affine:
            return centred * scale
        return torch.addcmul(self.bias[:, None], centred, scale * self.weight[:, None])


#: The valid output frames of the first convolution, per clip, of the
#: forward pass in progress (see :func:`front_end_frames`).
_FRONT_END_FRAMES = contextvars.ContextVar("front_end_frames", default=None)


@contextmanager
def front_end_frames(valid_frames):
    """Hands each clip's valid frame count to the :class:`MaskedGroupNorm`
    modules run inside the ``with`` block (and to nothing else).

    Arguments
    ---------
    valid_frames : torch.Tensor or None
        ``[batch]`` valid frames of the first convolution's output; None:
        plain group norm.

    Yields
    ------
    None

    Example
    -------
    >>> norm = MaskedGroupNorm.from_group_norm(nn.GroupNorm(1, 2))
    >>> x = torch.randn(1, 2, 6)
    >>> with front_end_frames(torch.tensor([6])):
    ...     inside = norm(x)
    >>> torch.allclose(inside, norm(x), atol=1e-5)
    True
    """
    token = _FRONT_END_FRAMES.set(valid_frames)
    try:
        yield
    finally:
        _FRONT_END_FRAMES.reset(token)


def _ssl_targets(config, num_layers, attention_interface):
    """The :class:`PetlTargets` of a wav2vec2-family model."""
    layers = [f"encoder.layers.{i}" for i in range(num_layers)]
    if getattr(config, "do_stable_layer_norm", False):  # pre-LN ("large")
        attention_norm = [f"{name}.layer_norm" for name in layers]
        ffn_norm = [f"{name}.final_layer_norm" for name in layers]
    else:  # post-LN: attention reads the previous layer's final_layer_norm
        attention_norm = ["encoder.layer_norm"] + [
            f"{name}.final_layer_norm" for name in layers[:-1]
        ]
        ffn_norm = [f"{name}.layer_norm" for name in layers]
    return PetlTargets(
        hidden_size=config.hidden_size,
        layers=layers,
        attention=[f"{name}.attention" for name in layers],
        attention_norm=attention_norm,
        ffn=[f"{name}.feed_forward" for name in layers],
        ffn_norm=ffn_norm,
        lora=[f"{name}.attention.{p}" for name in layers for p in ("q_proj", "v_proj")],
        attention_interface=attention_interface,
    )


class SSLEncoder(Backbone):
    """Any wav2vec2-family encoder (WavLM, HuBERT, wav2vec 2.0; loaded with
    ``AutoModel``) behind waveforms + relative lengths.

    Clips longer than ``max_duration`` are cut, with a warning; clips shorter
    than the front end's receptive field (``min_samples``) are zero-padded.

    Arguments
    ---------
    source, save_path : str
        Hub id or local folder of the checkpoint, and the hub cache folder.
    pooling : str
        ``mean`` over valid frames (``cls`` takes the first frame).
    normalize : bool, optional
        Normalise each clip (default: the feature extractor's ``do_normalize``).
    use_attention_mask : bool, optional
        Encode each clip independently of its batch (default True).
    apply_spec_augment : bool
        Keep the model's own masking in training (off: unused under DDP).
    layerdrop : float
        LayerDrop in training (DDP rejects adapters without gradient).
    sample_rate : int
        Of the input (must match the checkpoint's).
    max_duration : float or None
        Longest clip encoded, in seconds (None: no cap).

    Example
    -------
    >>> import tempfile
    >>> from transformers import WavLMConfig, WavLMModel
    >>> folder = tempfile.mkdtemp()
    >>> WavLMModel(WavLMConfig(hidden_size=32, num_hidden_layers=1,
    ...     num_attention_heads=2, intermediate_size=64, conv_dim=(16,) * 7,
    ...     num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    ...     ).save_pretrained(folder)
    >>> encoder, wavs = WavLM(folder), torch.randn(2, 16000)
    >>> hidden, mask = encoder.encode(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape, mask.sum(1).tolist(), encoder(wavs).shape
    (torch.Size([2, 49, 32]), [49, 24], torch.Size([2, 32]))
    >>> encoder.min_samples, encoder.petl_targets.attention_norm
    (400, ['encoder.layer_norm'])
    """

    def __init__(
        self,
        source,
        save_path=None,
        pooling="mean",
        normalize=None,
        use_attention_mask=None,
        apply_spec_augment=False,
        layerdrop=0.0,
        sample_rate=16000,
        max_duration=30.0,
    ):
        super().__init__(pooling=pooling)
        from transformers import AutoFeatureExtractor, AutoModel

        config = self._load_config(
            source,
            save_path,
            MODEL_TYPES,
            "WavLM/HuBERT/wav2vec2",
            overrides={
                "layerdrop": layerdrop,
                "apply_spec_augment": apply_spec_augment,
            },
        )
        with quiet_loading():
            self.model = AutoModel.from_pretrained(
                source, config=config, cache_dir=save_path
            )
        layers = getattr(getattr(self.model, "encoder", None), "layers", None)
        frames_of = getattr(self.model, "_get_feat_extract_output_lengths", None)
        if layers is None or frames_of is None:
            raise ValueError(
                f"{source} ({type(self.model).__name__}) is not a wav2vec2-family "
                "encoder (WavLM, HuBERT, wav2vec2). Use the AST or Whisper lobe for "
                "other backbones."
            )
        if not apply_spec_augment and hasattr(self.model, "masked_spec_embed"):
            del self.model.masked_spec_embed
        try:
            extractor = AutoFeatureExtractor.from_pretrained(
                source, cache_dir=save_path
            )
        except (OSError, ValueError):
            logger.warning("No feature-extractor config in %s; normalising.", source)
            extractor = None
        rate = getattr(extractor, "sampling_rate", 16000)
        self._check_rate(source, rate, sample_rate)
        self.normalize = bool(
            getattr(extractor, "do_normalize", True) if normalize is None else normalize
        )
        self.use_attention_mask = use_attention_mask is None or bool(use_attention_mask)
        self.first_conv = (config.conv_kernel[0], config.conv_stride[0])
        field, jump = 1, 1  # the shortest clip: the front end's receptive field
        for kernel, stride in zip(config.conv_kernel, config.conv_stride):
            field, jump = field + (kernel - 1) * jump, jump * stride
        self.min_samples = field
        self.max_duration = max_duration
        self.max_samples = (
            None if max_duration is None else round(max_duration * sample_rate)
        )
        if self.max_samples is not None and self.max_samples < self.min_samples:
            raise ValueError(
                f"max_duration={max_duration} s is shorter than one frame "
                f"({self.min_samples} samples); set it to the longest clip to "
                "encode (e.g. 30), or None for no cap."
            )
        # Our subclasses replace two kinds of Hugging Face blocks, through
        # their parents, holding the same tensors under the same names.
        for name, module in list(self.model.named_modules()):
            if type(module) is WavLMAttention:
                modular = ModularWavLMAttention.from_attention(module)
                replace_module(self.model, name, modular)
        first = getattr(self.model, "feature_extractor", None)
        first = first.conv_layers[0] if hasattr(first, "conv_layers") else None
        if type(getattr(first, "layer_norm", None)) is nn.GroupNorm:
            first.layer_norm = MaskedGroupNorm.from_group_norm(first.layer_norm)
        attention_interface = not any(
            isinstance(m, WavLMAttention) for m in self.model.modules()
        )
        self.output_size = config.hidden_size
        self.petl_targets = _ssl_targets(config, len(layers), attention_interface)

    def prepare(self, wavs, wav_lens=None):
        """Waveforms as the feature extractor prepares them (cut to the longest
        valid length, zero past each clip, each normalised over its valid
        samples), and the ``[batch]`` valid samples, in [min_samples, max_samples].

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        wavs : torch.Tensor
            ``[batch, width]`` float32 waveforms, zero past each clip's valid
            samples (``width``: the longest valid length, at least
            ``min_samples``).
        lengths : torch.Tensor
            ``[batch]`` valid samples of each clip.
        """
        advice = "Raise max_duration (None: no cap) or split long recordings."
        name = type(unwrap(self.model)).__name__
        lengths = self._valid_lengths(wavs, wav_lens, advice, name)
        width = max(int(lengths.max()), self.min_samples)
        wavs = wavs[:, :width].float()
        wavs = F.pad(wavs, (0, width - wavs.shape[1])) * lengths_to_mask(lengths, width)
        lengths = lengths.clamp(min=self.min_samples)
        if self.normalize:
            valid = lengths_to_mask(lengths, width)
            count = lengths.unsqueeze(1).float()
            mean = wavs.sum(1, keepdim=True) / count
            var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / count
            # 1e-7: the epsilon of Wav2Vec2FeatureExtractor's zero-mean,
            # unit-variance normalisation.
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        return wavs, lengths

    def encode(self, wavs, wav_lens=None):
        """:meth:`Backbone.encode`: the transformer's frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, hidden_size]`` last hidden states (one frame
            per 20 ms).
        mask : torch.Tensor
            ``[batch, frames]`` boolean, True on the frames of real audio.
        """
        wavs, lengths = self.prepare(wavs, wav_lens)
        model = unwrap(self.model)
        frames = int(model._get_feat_extract_output_lengths(wavs.shape[1]))
        valid = model._get_feat_extract_output_lengths(lengths).long()
        mask = lengths_to_mask(valid.clamp(min=1, max=frames), frames)
        kwargs, first_frames = {}, None
        if self.use_attention_mask:
            kwargs["attention_mask"] = lengths_to_mask(lengths, wavs.shape[1]).long()
            kernel, stride = self.first_conv
            first_frames = (lengths - kernel) // stride + 1
        with token_mask(mask), front_end_frames(first_frames):
            hidden = self.model(input_values=wavs, **kwargs).last_hidden_state
        return hidden, mask


WavLM = SSLEncoder
"""Alias of :class:`SSLEncoder` (it loads WavLM, HuBERT and wav2vec2 alike)."""
