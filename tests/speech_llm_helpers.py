"""Test-only helpers of the speech-LLM tests (not part of the package)."""

import torch
import torch.nn as nn

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask
from speechbrain_moe.lobes.speech_llm import target_nll


def sequence_nll(logits, labels, loss_mask):
    """Next-token loss over a whole layout: position ``t`` predicts
    ``labels[t + 1]`` where ``loss_mask[t]`` (a reference for ``target_nll``)."""
    next_labels = labels[:, 1:].clamp(min=0)
    return target_nll(logits[:, :-1], next_labels, loss_mask[:, :-1])


class FrameEncoder(Backbone):
    """A tiny frozen-style encoder: log-mel fbank -> Linear -> GELU, frame-wise.

    Frame-wise (no context across frames), so padding never changes a valid
    frame. Useful for tests and CPU demos of the bridge; real recipes use a
    pretrained lobe (Whisper, AST, ...).

    Arguments
    ---------
    output_size : int
        Width of the frames.
    n_mels : int
        Mel bins.
    sample_rate : int
        Sampling rate of the input.
    hop_length : float
        Frame shift in ms.

    Example
    -------
    >>> enc = FrameEncoder(output_size=8)
    >>> h, m = enc.encode(torch.randn(2, 1600), torch.tensor([1.0, 0.5]))
    >>> h.shape, m.sum(1).tolist()
    (torch.Size([2, 11, 8]), [9, 4])
    """

    def __init__(self, output_size=32, n_mels=40, sample_rate=16000, hop_length=10.0):
        super().__init__()
        from speechbrain.lobes.features import Fbank

        self.fbank = Fbank(
            n_mels=n_mels, sample_rate=sample_rate, hop_length=hop_length
        )
        self.hop = int(sample_rate * hop_length / 1000)
        self.win = int(sample_rate * 25 / 1000)
        self.proj = nn.Linear(n_mels, output_size)
        # Deterministic weights: the same encoder is rebuilt at inference.
        generator = torch.Generator().manual_seed(0)
        with torch.no_grad():
            self.proj.weight.copy_(
                torch.randn(output_size, n_mels, generator=generator)
            )
            self.proj.weight.mul_(n_mels**-0.5)
            self.proj.bias.zero_()
        self.act = nn.GELU()
        self.output_size = output_size

    def encode(self, wavs, wav_lens=None):
        """Frame-wise features and the mask of frames inside the real audio.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, output_size]``.
        mask : torch.Tensor
            ``[batch, frames]`` bool.
        """
        feats = self.fbank(wavs)
        frames = feats.shape[1]
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        samples = torch.round(wav_lens * wavs.shape[1])
        # frames whose whole analysis window lies inside the real audio
        inside = torch.floor((samples - self.win // 2) / self.hop) + 1
        lengths = inside.long().clamp(min=1, max=frames)
        return self.act(self.proj(feats / 10.0)), lengths_to_mask(lengths, frames)


def greedy_without_cache(self, inputs, max_new_tokens):
    """Greedy decoding of ``SpeechLLM`` ``self`` recomputing the whole
    sequence at every step (a reference for the KV-cached ``generate``)."""
    embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
    batch = embeds.shape[0]
    done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
    out = []
    for _ in range(max_new_tokens):
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        logits = self.llm(
            inputs_embeds=embeds,
            attention_mask=mask.long(),
            position_ids=positions,
            use_cache=False,
            logits_to_keep=1,
        ).logits[:, -1]
        token = logits.argmax(-1).masked_fill(done, self.pad_index)
        out.append(token)
        done = done | (token == self.eos_index)
        if bool(done.all()):
            break
        embeds = torch.cat([embeds, self.embed_tokens(token).unsqueeze(1)], dim=1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    return torch.stack(out, dim=1)


def bridge_recipe_command(out, data, llm, encoder, overrides):
    """``train.py hparams/bridge.yaml`` with a MoE-Adapter bridge shrunk by
    ``overrides``, on the synthetic LibriSpeech ``data`` (run it in the recipe
    folder, flags appended)."""
    return [
        "train.py",
        "hparams/bridge.yaml",
        f"--output_folder={out}",
        f"--data_folder={data}",
        f"--llm_source={llm}",
        f"--backbone_source={encoder}",
        "--bridge=moe_adapter",
        f"--bridge_overrides={overrides}",
    ]
