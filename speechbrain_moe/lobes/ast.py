"""Audio Spectrogram Transformer (Gong et al., 2021) as a SpeechBrain lobe."""

import torch
import torch.nn.functional as F
from torchaudio.compliance import kaldi

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask, quiet_loading
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

AUDIOSET_MEAN = -4.2677393
AUDIOSET_STD = 4.5689974

# AST's front end (as it was trained): Kaldi fbank of 16 kHz audio, 25 ms
# windows every 10 ms (torchaudio's Kaldi defaults, passed explicitly).
SAMPLE_RATE = 16000
FRAME_LENGTH_MS = 25.0
FRAME_SHIFT_MS = 10.0
WINDOW_SAMPLES = int(SAMPLE_RATE * FRAME_LENGTH_MS / 1000)  # 400
HOP_SAMPLES = int(SAMPLE_RATE * FRAME_SHIFT_MS / 1000)  # 160


def _time_patches(frames, patch_size, stride):
    """Number of patch columns AST makes from ``frames`` fbank frames."""
    return (frames - patch_size) // stride + 1


def _resize_position_embeddings(pos, freq_patches, old_time, new_time, num_prefix=2):
    """AST's 2-D position embeddings ``[1, num_prefix + freq * time, d]`` for
    another number of time patches: the time axis of the grid centre-cropped
    (shorter) or bilinearly interpolated (longer), as the original AST does.

    >>> pos = torch.arange(2 + 2 * 5).float().view(1, -1, 1)
    >>> _resize_position_embeddings(pos, 2, 5, 3)[0, :, 0].tolist()
    [0.0, 1.0, 3.0, 4.0, 5.0, 8.0, 9.0, 10.0]
    """
    prefix, grid = pos[:, :num_prefix], pos[:, num_prefix:]
    dim = grid.shape[-1]
    grid = grid.reshape(1, freq_patches, old_time, dim).permute(0, 3, 1, 2)
    if new_time <= old_time:
        start = old_time // 2 - new_time // 2
        grid = grid[..., start : start + new_time]
    else:
        grid = F.interpolate(grid, size=(freq_patches, new_time), mode="bilinear")
    grid = grid.permute(0, 2, 3, 1).reshape(1, freq_patches * new_time, dim)
    return torch.cat([prefix, grid], dim=1)


class AST(Backbone):
    """Hugging Face ``ASTModel`` behind waveforms + relative lengths.

    Its input is ``ASTFeatureExtractor``'s fbank, padded or cut to ``max_frames``
    (longer clips are cut, with a warning; clips under 25 ms, zero-padded).

    Arguments
    ---------
    source, save_path : str
        Hub id or local folder of an AST checkpoint, and the hub cache folder.
    max_frames : int
        Fbank frames after padding/cutting (AST's ``max_length``).
    pooling : str
        ``mean`` over real tokens or ``cls`` (``ASTModel``'s pooler).
    sample_rate : int
        Of the input (must be 16000, as AST's).

    Example
    -------
    >>> from transformers import ASTConfig, ASTModel
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, max_length=100)).save_pretrained(folder)
    >>> ast, wavs = AST(folder, max_frames=60), torch.randn(2, 16000)
    >>> hidden, mask = ast.encode(wavs, torch.tensor([1.0, 0.2]))
    >>> hidden.shape, mask.sum(1).tolist(), ast(wavs).shape
    (torch.Size([2, 62, 32]), [62, 26], torch.Size([2, 32]))
    """

    def __init__(
        self,
        source,
        save_path=None,
        max_frames=1024,
        pooling="mean",
        sample_rate=SAMPLE_RATE,
    ):
        super().__init__(pooling=pooling)
        from transformers import ASTModel

        self._check_rate("AST", SAMPLE_RATE, sample_rate)
        config = self._load_config(
            source, save_path, ("audio-spectrogram-transformer",), "AST"
        )
        with quiet_loading():
            self.model = ASTModel.from_pretrained(
                source, config=config, cache_dir=save_path
            )
        self.num_mel_bins = config.num_mel_bins
        self.max_frames = max_frames
        self.time_stride = config.time_stride
        self.freq_patches = (
            config.num_mel_bins - config.patch_size
        ) // config.frequency_stride + 1
        new_time = _time_patches(max_frames, config.patch_size, config.time_stride)
        if new_time < 1:
            raise ValueError(
                f"max_frames={max_frames} is shorter than one AST patch "
                f"({config.patch_size} frames); use at least {config.patch_size}."
            )
        old_time = _time_patches(
            config.max_length, config.patch_size, config.time_stride
        )
        if new_time != old_time:
            emb = self.model.embeddings
            resized = _resize_position_embeddings(
                emb.position_embeddings.data, self.freq_patches, old_time, new_time
            )
            emb.position_embeddings = torch.nn.Parameter(resized)
            # The model now holds position embeddings for max_frames: its
            # config says so (save_pretrained then writes a folder that
            # loads). The one config field changed after loading, since the
            # checkpoint's embeddings must load at their stored size first.
            config.max_length = max_frames
        self.time_patches = new_time
        # Longest clip that fits max_frames fbank frames: one window for the
        # first frame, one hop for each further frame; in seconds.
        self.max_samples = (max_frames - 1) * HOP_SAMPLES + WINDOW_SAMPLES
        self.max_duration = self.max_samples / SAMPLE_RATE
        self.output_size = config.hidden_size
        layers = [f"layers.{i}" for i in range(config.num_hidden_layers)]
        self.petl_targets = PetlTargets(
            hidden_size=config.hidden_size,
            layers=layers,
            attention=[f"{name}.attention" for name in layers],
            attention_norm=[f"{name}.layernorm_before" for name in layers],
            ffn=[f"{name}.mlp" for name in layers],
            ffn_norm=[f"{name}.layernorm_after" for name in layers],
            lora=[
                f"{name}.attention.{p}" for name in layers for p in ("q_proj", "v_proj")
            ],
            num_prefix_tokens=2,
            grid_height=self.freq_patches,
        )

    def features(self, wavs, wav_lens=None):
        """The normalised fbank ``[batch, max_frames, num_mel_bins]`` that
        ``ASTFeatureExtractor`` computes, and the ``[batch]`` real frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        feats : torch.Tensor
            ``[batch, max_frames, num_mel_bins]`` fbank, normalised with
            AudioSet's mean and standard deviation (as AST was trained),
            zero-padded after each clip's real frames.
        frames : torch.Tensor
            ``[batch]`` number of real (not padded) frames of each clip.
        """
        advice = f"Raise max_frames (now {self.max_frames}) to keep more audio."
        lengths = self._valid_lengths(wavs, wav_lens, advice)
        feats, frames = [], []
        for wav, length in zip(wavs.float(), lengths.tolist()):
            # A clip shorter than one window is zero-padded to it, so that it
            # still gives one fbank frame.
            wav = F.pad(wav[:length], (0, max(0, WINDOW_SAMPLES - length)))
            fbank = kaldi.fbank(
                wav.unsqueeze(0),
                sample_frequency=SAMPLE_RATE,
                frame_length=FRAME_LENGTH_MS,
                frame_shift=FRAME_SHIFT_MS,
                window_type="hanning",
                num_mel_bins=self.num_mel_bins,
                htk_compat=True,
                use_energy=False,
                dither=0.0,
            )[: self.max_frames]
            frames.append(fbank.shape[0])
            feats.append(F.pad(fbank, (0, 0, 0, self.max_frames - fbank.shape[0])))
        feats = (torch.stack(feats) - AUDIOSET_MEAN) / (2 * AUDIOSET_STD)
        return feats.to(wavs.device), torch.tensor(frames, device=wavs.device)

    def token_mask(self, frames):
        """Which tokens cover real audio, given ``[batch]`` real fbank ``frames``:
        the two special tokens, then the patch grid (frequency-major, as
        ``ASTModel`` flattens it), a column real if it starts on a real frame.

        Arguments
        ---------
        frames : torch.Tensor
            ``[batch]`` real fbank frames (from :meth:`features`).

        Returns
        -------
        torch.Tensor
            ``[batch, 2 + freq_patches * time_patches]`` boolean mask, True
            on the tokens that cover real audio.
        """
        columns = ((frames + self.time_stride - 1) // self.time_stride).clamp(
            min=1, max=self.time_patches
        )
        grid = lengths_to_mask(columns, self.time_patches)
        grid = grid.unsqueeze(1).expand(-1, self.freq_patches, -1).flatten(1)
        return torch.cat([grid.new_ones(grid.shape[0], 2), grid], dim=1)

    def encode(self, wavs, wav_lens=None):
        """:meth:`Backbone.encode`: two special tokens, then the patch grid.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, tokens, hidden_size]`` last hidden states.
        mask : torch.Tensor
            ``[batch, tokens]`` boolean mask of the real tokens
            (:meth:`token_mask`).
        """
        feats, frames = self.features(wavs, wav_lens)
        mask = self.token_mask(frames)
        with token_mask(mask):
            hidden = self.model(input_values=feats).last_hidden_state
        return hidden, mask

    def forward(self, wavs, wav_lens=None):
        """:meth:`Backbone.forward`; ``cls`` averages the two special tokens.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms at 16 kHz.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        torch.Tensor
            ``[batch, hidden_size]`` pooled embedding (``mean`` over the real
            tokens, or ``cls``: the mean of the two special tokens).
        """
        if self.pooling == "cls":
            hidden, _ = self.encode(wavs, wav_lens)
            return hidden[:, :2].mean(1)
        return super().forward(wavs, wav_lens)
