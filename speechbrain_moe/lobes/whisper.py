"""The Whisper encoder (Radford et al., 2022) as a SpeechBrain lobe.

The lobe takes 16 kHz waveforms and relative lengths, computes Whisper's
log-mel features in torch with exactly the math of ``WhisperFeatureExtractor``
(Hann window of 400 samples, hop 160, Slaney mel filters read from the
checkpoint's feature-extractor config, ``log10``, dynamic range clipped to
8 below each clip's maximum, ``(x + 4) / 4``) and runs the Hugging Face
``WhisperEncoder``; the decoder is dropped.

Whisper pads every clip to 30 s (1500 encoder frames): a 1 s clip occupies the
first 50 frames. With ``trim_to_valid=True`` (default) the encoder runs only on
the batch's longest valid length, rounded up to whole encoder frames, with the
position embeddings sliced accordingly. For 30 s inputs both paths compute the
same thing; for shorter clips the trimmed encoder attends to fewer padding
frames than the pretrained one did, which adapters and heads learn with (and
which saves 6-30x of the compute for 1-5 s clips). ``trim_to_valid=False``
pads to 30 s and runs Hugging Face's own encoder forward, as Whisper does.

The encoder never runs under ``no_grad``, so adapters inside it get gradients
(SpeechBrain's ``Whisper(freeze=True)`` starves them); the pretrained weights
are frozen by the PETL method.

Authors
 * speechbrain-moe contributors 2026
"""

import logging

import torch
import torch.nn.functional as F

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

logger = logging.getLogger(__name__)


def unwrap(module):
    """The model inside (possibly nested) ``AdaptedModel`` wrappers.

    Arguments
    ---------
    module : torch.nn.Module
        A model or an ``AdaptedModel`` around it.

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
        Run the encoder on the batch's longest valid length only (default)
        instead of 30 s of padding.
    pooling : str
        Only ``mean`` (over valid encoder frames): Whisper has no CLS token.
    sample_rate : int
        Sample rate of the input waveforms (must be 16000, as Whisper's).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.synthetic.models import make_tiny_whisper
    >>> folder = make_tiny_whisper(tempfile.mkdtemp())
    >>> whisper = Whisper(folder)
    >>> wavs = torch.randn(2, 16000)
    >>> hidden, mask = whisper.encode(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape, mask.sum(1).tolist()
    (torch.Size([2, 50, 32]), [50, 25])
    >>> Whisper(folder, trim_to_valid=False).encode(wavs)[0].shape
    torch.Size([2, 1500, 32])
    >>> whisper(wavs).shape
    torch.Size([2, 32])
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
        from transformers import WhisperFeatureExtractor, WhisperModel

        full = WhisperModel.from_pretrained(source, cache_dir=save_path)
        self.model = full.encoder
        del full
        config = self.model.config
        try:
            extractor = WhisperFeatureExtractor.from_pretrained(
                source, cache_dir=save_path
            )
        except OSError:
            logger.warning(
                "No Whisper feature-extractor config found for %s; using "
                "Whisper's default mel filters.",
                source,
            )
            extractor = WhisperFeatureExtractor(feature_size=config.num_mel_bins)
        if extractor.feature_size != config.num_mel_bins:
            raise ValueError(
                f"The feature extractor of {source} makes {extractor.feature_size} mel "
                f"bins but the encoder expects {config.num_mel_bins}; the folder mixes "
                "files of two checkpoints."
            )
        if sample_rate != extractor.sampling_rate:
            raise ValueError(
                f"Whisper expects {extractor.sampling_rate} Hz audio, got "
                f"sample_rate={sample_rate}. Resample in the data pipeline (the "
                f"recipes do) and set sample_rate: {extractor.sampling_rate}."
            )
        self.trim_to_valid = trim_to_valid
        self.n_fft = extractor.n_fft
        self.hop_length = extractor.hop_length
        self.frame_stride = self.model.conv1.stride[0] * self.model.conv2.stride[0]
        self.max_encoder_frames = config.max_source_positions
        self.max_mel_frames = self.max_encoder_frames * self.frame_stride
        self.max_samples = self.max_mel_frames * self.hop_length
        self.register_buffer(
            "mel_filters",
            torch.as_tensor(extractor.mel_filters, dtype=torch.float32),
            persistent=False,
        )
        self.register_buffer("window", torch.hann_window(self.n_fft), persistent=False)
        self.output_size = config.d_model
        layers = [f"layers.{i}" for i in range(config.encoder_layers)]
        self.petl_targets = PetlTargets(
            hidden_size=config.d_model,
            layers=layers,
            attention=[f"{name}.self_attn" for name in layers],
            attention_norm=[f"{name}.self_attn_layer_norm" for name in layers],
            # fc1 -> activation -> fc2 is not one sub-module: no FFN placement.
            ffn=[],
            ffn_norm=[],
            lora=[
                f"{name}.self_attn.{p}" for name in layers for p in ("q_proj", "v_proj")
            ],
            num_prefix_tokens=0,
            grid_height=1,
        )

    def sample_lengths(self, wavs, wav_lens=None):
        """Absolute valid lengths in samples, capped at 30 s.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        torch.Tensor
            ``[batch]`` long.
        """
        samples = wavs.shape[1]
        if wav_lens is None:
            lengths = torch.full((wavs.shape[0],), samples, device=wavs.device)
        else:
            lengths = (wav_lens.to(wavs.device) * samples).round().long()
        return lengths.clamp(min=1, max=min(samples, self.max_samples))

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
            ``[batch, num_mel_bins, frames]``: 3000 frames (30 s) when
            ``trim_to_valid`` is False, else the batch's longest valid length
            rounded up to whole encoder frames. Samples past a clip's length
            count as silence, whatever the batch holds there.
        mel_frames : torch.Tensor
            ``[batch]`` frames of real audio (``ceil(samples / hop)``).
        """
        lengths = self.sample_lengths(wavs, wav_lens)
        mel_frames = (lengths + self.hop_length - 1) // self.hop_length
        if self.trim_to_valid:
            stride = self.frame_stride
            frames = int((mel_frames.max() + stride - 1) // stride) * stride
            frames = min(frames, self.max_mel_frames)
            # A margin of n_fft samples keeps every frame that touches audio
            # (for the per-clip maximum) and keeps the reflection at the end
            # away from the frames kept.
            total = min(frames * self.hop_length + self.n_fft, self.max_samples)
        else:
            frames, total = self.max_mel_frames, self.max_samples
        wavs = wavs[:, :total].float()
        wavs = F.pad(wavs, (0, total - wavs.shape[1]))
        wavs = wavs * lengths_to_mask(lengths, total)
        stft = torch.stft(
            wavs, self.n_fft, self.hop_length, window=self.window, return_complex=True
        )
        magnitudes = stft[..., :-1].abs() ** 2
        mel = self.mel_filters.T @ magnitudes
        log_spec = torch.clamp(mel, min=1e-10).log10()
        peak = log_spec.amax(dim=(1, 2), keepdim=True)
        log_spec = torch.maximum(log_spec, peak - 8.0)
        feats = (log_spec + 4.0) / 4.0
        return feats[..., :frames], mel_frames

    def frame_mask(self, mel_frames, num_frames):
        """Valid encoder frames of each clip.

        Arguments
        ---------
        mel_frames : torch.Tensor
            ``[batch]`` mel frames of real audio.
        num_frames : int
            Encoder frames computed.

        Returns
        -------
        torch.Tensor
            ``[batch, num_frames]`` bool.
        """
        stride = self.frame_stride
        valid = ((mel_frames + stride - 1) // stride).clamp(min=1, max=num_frames)
        return lengths_to_mask(valid, num_frames)

    def run_encoder(self, feats):
        """Runs the (possibly adapted) encoder on features of any length.

        Same computation as ``WhisperEncoder.forward``, but the position
        embeddings are sliced to the number of frames instead of requiring
        3000 mel frames.

        Arguments
        ---------
        feats : torch.Tensor
            ``[batch, num_mel_bins, frames]``, frames a multiple of 2 and at
            most 3000.

        Returns
        -------
        torch.Tensor
            ``[batch, frames / 2, d]``.
        """
        encoder = unwrap(self.model)
        hidden = F.gelu(encoder.conv1(feats))
        hidden = F.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        hidden = F.dropout(hidden, p=encoder.dropout, training=self.training)
        for layer in encoder.layers:
            out = layer(hidden, None)
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
            ``[batch, frames, d]`` (1500 frames when ``trim_to_valid`` is
            False).
        mask : torch.Tensor
            ``[batch, frames]``, True for frames of real audio.
        """
        feats, mel_frames = self.features(wavs, wav_lens)
        mask = self.frame_mask(mel_frames, feats.shape[-1] // self.frame_stride)
        with token_mask(self.model, mask):
            if self.trim_to_valid:
                hidden = self.run_encoder(feats)
            else:
                hidden = self.model(input_features=feats).last_hidden_state
        return hidden, mask
