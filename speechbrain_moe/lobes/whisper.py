"""The Whisper encoder (Radford et al., 2022) as a SpeechBrain lobe.

The lobe takes 16 kHz waveforms and relative lengths, computes Whisper's
log-mel features in torch with exactly the math of ``WhisperFeatureExtractor``
(Hann window of 400 samples, hop 160, Slaney mel filters read from the
checkpoint's feature-extractor config, ``log10``, dynamic range clipped to
8 below each clip's maximum, ``(x + 4) / 4``) and runs the Hugging Face
``WhisperEncoder``; the decoder is dropped.

Whisper pads every clip to 30 s (1500 encoder frames): a 1 s clip occupies the
first 50 frames. With ``trim_to_valid=True`` (default) the encoder runs only on
the batch's longest valid length, rounded up to whole encoder frames (6-30x
less compute for 1-5 s clips), and each clip sees only its own frames, so its
encoding does not depend on the rest of the batch: the mel frames past its
valid encoder frames are zeroed (as the convolutions' zero padding is for the
clip alone) and every attention layer masks the keys past them. The pretrained
encoder attended to 30 s of silence padding instead; adapters and heads learn
with the trimmed one (``docs/fidelity.md``). ``trim_to_valid=False`` pads every
clip to 30 s and runs Hugging Face's own encoder forward, as Whisper does.

Bounds: at most 30 s (``max_duration``; longer clips are cut, with a warning
naming them); a clip shorter than one STFT window (``min_samples``, 400
samples) counts as zero-padded to it; a clip without samples raises a
``ValueError`` naming it.

The encoder never runs under ``no_grad``, so adapters inside it get gradients
(SpeechBrain's ``Whisper(freeze=True)`` starves them); the pretrained weights
are frozen by the PETL method.

Authors
 * speechbrain-moe contributors 2026
"""

import logging

import torch
import torch.nn.functional as F
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    create_bidirectional_mask,
)

from speechbrain_moe.lobes.base import (
    Backbone,
    checked_lengths,
    lengths_to_mask,
    load_config,
    unwrap,
)
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

logger = logging.getLogger(__name__)


def encoder_attention_mask(config, hidden, mask):
    """Attention mask that hides each clip's padding frames from every query.

    Arguments
    ---------
    config : transformers.PretrainedConfig
        The encoder's config (its attention implementation sets the form).
    hidden : torch.Tensor
        ``[batch, time, d]``.
    mask : torch.Tensor
        ``[batch, time]`` bool, True for valid frames.

    Returns
    -------
    torch.Tensor or None
        Hugging Face's mask for its attention implementations (``sdpa``:
        boolean, ``eager``: additive); for functions registered without a
        mask function (prefix tuning's SDPA wrapper) a boolean view.

    Example
    -------
    >>> from transformers import WhisperConfig
    >>> valid = torch.tensor([[True, True, False], [True, True, True]])
    >>> m = encoder_attention_mask(WhisperConfig(), torch.zeros(2, 3, 4), valid)
    >>> m.shape, m[0, 0, 2].tolist()
    (torch.Size([2, 1, 3, 3]), [True, True, False])
    """
    if config._attn_implementation in ALL_MASK_ATTENTION_FUNCTIONS:
        return create_bidirectional_mask(
            config=config, inputs_embeds=hidden, attention_mask=mask
        )
    batch, time = mask.shape
    return mask[:, None, None, :].expand(batch, 1, time, time)


def load_extractor(source, save_path, num_mel_bins, sample_rate):
    """The checkpoint's ``WhisperFeatureExtractor``, checked against the model.

    Arguments
    ---------
    source, save_path : str
        Checkpoint and cache folder, as for :class:`Whisper`.
    num_mel_bins, sample_rate : int
        What the encoder and the lobe's input have.

    Returns
    -------
    transformers.WhisperFeatureExtractor
        Whisper's default one when the checkpoint has none (with a warning).
    """
    from transformers import WhisperFeatureExtractor

    try:
        extractor = WhisperFeatureExtractor.from_pretrained(source, cache_dir=save_path)
    except OSError:
        logger.warning(
            "No Whisper feature-extractor config found for %s; using "
            "Whisper's default mel filters.",
            source,
        )
        extractor = WhisperFeatureExtractor(feature_size=num_mel_bins)
    if extractor.feature_size != num_mel_bins:
        raise ValueError(
            f"The feature extractor of {source} makes {extractor.feature_size} mel "
            f"bins but the encoder expects {num_mel_bins}; the folder mixes "
            "files of two checkpoints."
        )
    if sample_rate != extractor.sampling_rate:
        raise ValueError(
            f"Whisper expects {extractor.sampling_rate} Hz audio, got "
            f"sample_rate={sample_rate}. Resample in the data pipeline (the "
            f"recipes do) and set sample_rate: {extractor.sampling_rate}."
        )
    return extractor


def whisper_targets(config):
    """The :class:`PetlTargets` of a ``WhisperEncoder``.

    Arguments
    ---------
    config : transformers.WhisperConfig
        The encoder's config.

    Returns
    -------
    PetlTargets

    Example
    -------
    >>> from transformers import WhisperConfig
    >>> whisper_targets(WhisperConfig(encoder_layers=2)).lora[:2]
    ['layers.0.self_attn.q_proj', 'layers.0.self_attn.v_proj']
    """
    layers = [f"layers.{i}" for i in range(config.encoder_layers)]
    return PetlTargets(
        hidden_size=config.d_model,
        layers=layers,
        attention=[f"{name}.self_attn" for name in layers],
        attention_norm=[f"{name}.self_attn_layer_norm" for name in layers],
        # fc1 -> activation -> fc2 is not one sub-module: no FFN placement.
        ffn=[],
        ffn_norm=[],
        lora=[f"{name}.self_attn.{p}" for name in layers for p in ("q_proj", "v_proj")],
        num_prefix_tokens=0,
        grid_height=1,
    )


class Whisper(Backbone):
    """Hugging Face Whisper encoder behind waveforms + relative lengths.

    Arguments
    ---------
    source : str
        Hub id or local folder of a Whisper checkpoint (``WhisperModel`` or
        ``WhisperForConditionalGeneration``); its ``preprocessor_config.json``
        gives the mel filters (Whisper's defaults when it has none).
    save_path : str, optional
        Cache folder for hub downloads.
    trim_to_valid : bool
        Run the encoder on the batch's longest valid length only, each clip
        attending to its own frames (default), instead of 30 s of padding.
    pooling : str
        Only ``mean`` (over valid encoder frames): Whisper has no CLS token.
    sample_rate : int
        Sample rate of the input waveforms (must be 16000, as Whisper's).

    Example
    -------
    >>> import tempfile
    >>> from transformers import WhisperConfig, WhisperModel
    >>> folder = tempfile.mkdtemp()
    >>> WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
    ...     decoder_ffn_dim=64, vocab_size=64, pad_token_id=0)).save_pretrained(folder)
    >>> whisper = Whisper(folder)
    >>> wavs = torch.randn(2, 16000)
    >>> hidden, mask = whisper.encode(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape, mask.sum(1).tolist()
    (torch.Size([2, 50, 32]), [50, 25])
    >>> Whisper(folder, trim_to_valid=False).encode(wavs)[0].shape
    torch.Size([2, 1500, 32])
    >>> whisper(wavs).shape
    torch.Size([2, 32])
    >>> whisper.max_duration, whisper.min_samples
    (30.0, 400)
    """

    def __init__(
        self,
        source,
        save_path=None,
        trim_to_valid=True,
        pooling="mean",
        sample_rate=16000,
    ):
        if pooling != "mean":
            raise ValueError(
                f"Whisper has no CLS token; pooling={pooling!r} is not available. "
                "Use pooling: mean (over valid frames)."
            )
        super().__init__(pooling=pooling)
        from transformers import WhisperModel

        whisper_config = load_config(source, save_path, ("whisper",), "Whisper")
        full = WhisperModel.from_pretrained(
            source, config=whisper_config, cache_dir=save_path
        )
        self.model = full.encoder
        del full
        config = self.model.config
        extractor = load_extractor(source, save_path, config.num_mel_bins, sample_rate)
        self.sample_rate = sample_rate
        self.trim_to_valid = trim_to_valid
        self.n_fft = extractor.n_fft
        self.hop_length = extractor.hop_length
        self.frame_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self.max_encoder_frames = config.max_source_positions
        self.max_mel_frames = self.max_encoder_frames * self.frame_stride
        self.max_samples = self.max_mel_frames * self.hop_length
        # Documented bounds: at most 30 s; at least one STFT window.
        self.max_duration = self.max_samples / sample_rate
        self.min_samples = self.n_fft
        self.register_buffer(
            "mel_filters",
            torch.as_tensor(extractor.mel_filters, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.output_size = config.d_model
        self.petl_targets = whisper_targets(config)

    def features(self, wavs, wav_lens=None):
        """Whisper's log-mel features, as ``WhisperFeatureExtractor`` computes them.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` at 16 kHz.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        feats : torch.Tensor
            ``[batch, num_mel_bins, frames]``: 3000 (30 s), or with
            ``trim_to_valid`` the longest valid length rounded up to whole
            encoder frames. Samples past a clip's length count as silence.
        mel_frames : torch.Tensor
            ``[batch]`` frames of real audio, ``ceil(samples / hop)`` (at
            least ``min_samples`` samples).
        """
        advice = "Split longer recordings in the data preparation to keep the rest."
        lengths = checked_lengths(
            wavs, wav_lens, self.max_samples, self.sample_rate, "Whisper", advice
        )
        padded = lengths.clamp(min=self.min_samples)
        mel_frames = (padded + self.hop_length - 1) // self.hop_length
        if self.trim_to_valid:
            stride = self.frame_stride
            frames = int((mel_frames.max() + stride - 1) // stride) * stride
            frames = min(frames, self.max_mel_frames)
            # A margin of n_fft samples keeps every frame that touches audio
            # (per-clip maximum) and the reflection away from the frames kept.
            total = min(frames * self.hop_length + self.n_fft, self.max_samples)
        else:
            frames, total = self.max_mel_frames, self.max_samples
        wavs = wavs[:, :total].float()
        wavs = F.pad(wavs, (0, total - wavs.shape[1]))
        wavs = wavs * lengths_to_mask(lengths, total)
        stft = torch.stft(
            wavs, self.n_fft, self.hop_length, window=self.window, return_complex=True
        )
        mel = self.mel_filters.T @ (stft[..., :-1].abs() ** 2)
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        feats = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return feats[..., :frames], mel_frames

    def run_encoder(self, feats, mask=None):
        """Runs the (possibly adapted) encoder on features of any length.

        ``WhisperEncoder.forward`` with the position embeddings sliced to
        the number of frames, and each clip seeing only its valid frames: the
        mel frames past them are zeroed (as the convolutions' zero padding is
        for the clip alone) and every layer masks the keys past them.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, num_mel_bins, frames]``, frames a multiple of 2 and at
            most 3000.
        mask : torch.Tensor, optional
            ``[batch, frames / 2]`` valid encoder frames (None: all valid).

        Returns
        -------
        torch.Tensor
            ``[batch, frames / 2, d]``.
        """
        encoder = unwrap(self.model)
        padded = mask is not None and not bool(mask.all())
        if padded:
            mel_mask = mask.repeat_interleave(self.frame_stride, dim=1)
            feats = feats * mel_mask.unsqueeze(1).to(feats.dtype)
        hidden = F.gelu(encoder.conv1(feats))
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        attention_mask = None
        if padded:
            attention_mask = encoder_attention_mask(encoder.config, hidden, mask)
        for layer in encoder.layers:
            out = layer(hidden, attention_mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return encoder.layer_norm(hidden)

    def encode(self, wavs, wav_lens=None):
        """Encoder frames and their valid-frame mask.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` at 16 kHz.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, d]`` (1500 frames without ``trim_to_valid``).
        mask : torch.Tensor
            ``[batch, frames]``, True for frames of real audio.
        """
        feats, mel_frames = self.features(wavs, wav_lens)
        frames, stride = feats.shape[-1] // self.frame_stride, self.frame_stride
        valid = ((mel_frames + stride - 1) // stride).clamp(min=1, max=frames)
        mask = lengths_to_mask(valid, frames)
        with token_mask(self.model, mask):
            if self.trim_to_valid:
                hidden = self.run_encoder(feats, mask)
            else:
                hidden = self.model(input_features=feats).last_hidden_state
        return hidden, mask
