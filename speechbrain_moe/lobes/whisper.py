"""The Whisper encoder (Radford et al., 2022) as a SpeechBrain lobe, run on each
clip's own frames rather than 30 s of padding (``docs/fidelity.md``, "Whisper").
"""

import logging

import torch
import torch.nn.functional as F
from transformers.masking_utils import (
    ALL_MASK_ATTENTION_FUNCTIONS,
    create_bidirectional_mask,
)

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask, quiet_loading, unwrap
from speechbrain_moe.lobes.dtypes import load_dtype, log_loaded
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

logger = logging.getLogger(__name__)


def _attention_mask(config, hidden, mask):
    """Mask hiding padded frames as keys: HF's own form for its attention
    implementations, a boolean ``[batch, 1, T, T]`` view for the others."""
    if config._attn_implementation in ALL_MASK_ATTENTION_FUNCTIONS:
        return create_bidirectional_mask(
            config=config, inputs_embeds=hidden, attention_mask=mask
        )
    batch, time = mask.shape
    return mask[:, None, None, :].expand(batch, 1, time, time)


def _load_extractor(source, save_path, num_mel_bins):
    """The checkpoint's ``WhisperFeatureExtractor``, checked against the model."""
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
    return extractor


class Whisper(Backbone):
    """Hugging Face Whisper encoder (decoder dropped) behind waveforms + lengths,
    never under ``no_grad``, so that adapters inside it get gradients.

    Clips longer than 30 s (``max_duration``) are cut, with a warning; clips
    shorter than one STFT window (``min_samples``) count as zero-padded.

    Arguments
    ---------
    source, save_path : str
        Hub id or local folder of a Whisper checkpoint, and the hub cache folder.
    trim_to_valid : bool
        Run the encoder on each clip's own frames, not on 30 s of padding.
    pooling : str
        Only ``mean`` (over valid encoder frames): Whisper has no CLS token.
    sample_rate : int
        Of the input (must be 16000, as Whisper's).
    dtype : str
        The weights' dtype: ``float32`` (default), ``bfloat16``, ``float16``
        or ``checkpoint`` (see :mod:`speechbrain_moe.lobes.dtypes`).

    Example
    -------
    >>> import tempfile
    >>> from transformers import WhisperConfig, WhisperModel
    >>> folder = tempfile.mkdtemp()
    >>> WhisperModel(WhisperConfig(d_model=32, encoder_layers=1, decoder_layers=1,
    ...     encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=64,
    ...     decoder_ffn_dim=64, vocab_size=64, pad_token_id=0)).save_pretrained(folder)
    >>> whisper, wavs = Whisper(folder), torch.randn(2, 16000)
    >>> hidden, mask = whisper.encode(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape, mask.sum(1).tolist(), whisper(wavs).shape
    (torch.Size([2, 50, 32]), [50, 25], torch.Size([2, 32]))
    >>> Whisper(folder, trim_to_valid=False).encode(wavs)[0].shape
    torch.Size([2, 1500, 32])
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
        dtype="float32",
    ):
        if pooling != "mean":
            raise ValueError(
                f"Whisper has no CLS token; pooling={pooling!r} is not available. "
                "Use pooling: mean (over valid frames)."
            )
        super().__init__(pooling=pooling)
        from transformers import WhisperModel

        whisper_config = self._load_config(source, save_path, ("whisper",), "Whisper")
        stored_dtype = whisper_config.dtype
        with quiet_loading():
            self.model = WhisperModel.from_pretrained(
                source,
                config=whisper_config,
                cache_dir=save_path,
                dtype=load_dtype(dtype, "encoder_dtype"),
            ).encoder
        log_loaded("Whisper encoder", source, self.model, stored_dtype)
        config = self.model.config
        extractor = _load_extractor(source, save_path, config.num_mel_bins)
        self._check_rate("Whisper", extractor.sampling_rate, sample_rate)
        self.trim_to_valid = trim_to_valid
        self.n_fft = extractor.n_fft
        self.hop_length = extractor.hop_length
        self.frame_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self.max_mel_frames = config.max_source_positions * self.frame_stride
        self.max_samples = self.max_mel_frames * self.hop_length
        self.max_duration = self.max_samples / sample_rate
        self.min_samples = self.n_fft
        filters = torch.as_tensor(extractor.mel_filters, dtype=torch.float32)
        self.register_buffer("mel_filters", filters, persistent=False)
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.output_size = config.d_model
        layers = [f"layers.{i}" for i in range(config.encoder_layers)]
        self.petl_targets = PetlTargets(
            hidden_size=config.d_model,
            layers=layers,
            attention=[f"{name}.self_attn" for name in layers],
            attention_norm=[f"{name}.self_attn_layer_norm" for name in layers],
            # fc1 -> activation -> fc2 is not one sub-module: no FFN placement.
            lora=[
                f"{name}.self_attn.{p}" for name in layers for p in ("q_proj", "v_proj")
            ],
        )

    def features(self, wavs, wav_lens=None):
        """The log-mel features ``[batch, num_mel_bins, frames]`` that
        ``WhisperFeatureExtractor`` computes (silence past each clip; 3000
        frames, or with ``trim_to_valid`` the longest valid length rounded up to
        whole encoder frames), and the ``[batch]`` real frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        feats : torch.Tensor
            ``[batch, num_mel_bins, frames]`` log-mel features.
        mel_frames : torch.Tensor
            ``[batch]`` mel frames covering each clip's real samples.
        """
        advice = "Split longer recordings in the data preparation to keep the rest."
        lengths = self._valid_lengths(wavs, wav_lens, advice)
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
        wavs = F.pad(wavs, (0, total - wavs.shape[1])) * lengths_to_mask(lengths, total)
        stft = torch.stft(
            wavs, self.n_fft, self.hop_length, window=self.window, return_complex=True
        )
        mel = self.mel_filters.T @ (stft[..., :-1].abs() ** 2)
        # WhisperFeatureExtractor's log-mel: floor at 1e-10 before log10, a
        # dynamic range of 8 (log10 units, i.e. 80 dB) below each clip's peak,
        # then (x + 4) / 4 to bring the values near [-1, 1].
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        feats = (torch.maximum(log_spec, peak - 8.0) + 4.0) / 4.0
        return feats[..., :frames], mel_frames

    def _run_encoder(self, feats, mask):
        """``WhisperEncoder.forward`` on features of any length, each clip
        seeing only its valid frames (mel frames past them zeroed, keys past
        them masked)."""
        encoder = unwrap(self.model)
        padded = not bool(mask.all())
        if padded:
            mel_mask = mask.repeat_interleave(self.frame_stride, dim=1)
            feats = feats * mel_mask.unsqueeze(1).to(feats.dtype)
        hidden = F.gelu(encoder.conv1(feats))
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        attention_mask = (
            _attention_mask(encoder.config, hidden, mask) if padded else None
        )
        for layer in encoder.layers:
            out = layer(hidden, attention_mask)
            hidden = out[0] if isinstance(out, tuple) else out
        return encoder.layer_norm(hidden)

    def encode(self, wavs, wav_lens=None):
        """:meth:`Backbone.encode`: encoder frames (1500 without ``trim_to_valid``).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, hidden_size]`` encoder output (one frame per
            20 ms; 1500 frames for 30 s without ``trim_to_valid``).
        mask : torch.Tensor
            ``[batch, frames]`` boolean, True on the frames of real audio.
        """
        feats, mel_frames = self.features(wavs, wav_lens)
        frames, stride = feats.shape[-1] // self.frame_stride, self.frame_stride
        valid = ((mel_frames + stride - 1) // stride).clamp(min=1, max=frames)
        mask = lengths_to_mask(valid, frames)
        with token_mask(mask):
            if self.trim_to_valid:
                hidden = self._run_encoder(feats, mask)
            else:
                hidden = self.model(input_features=feats).last_hidden_state
        return hidden, mask
