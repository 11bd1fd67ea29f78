"""What a training step and a model load do with awkward but legal input:
a clip shorter than one stack of encoder frames trains the LLM bridge (it
crashed with "cannot reshape tensor of 0 elements" at batch size 1), and
loading a backbone or an LLM draws no transformers "Loading weights" bar
(while the user's progress-bar setting is left as it was)."""

import os

import pytest
import torch
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.speech_llm import (
    SpeechLLM,
    load_bridge,
    load_llm,
    target_nll,
)
from speechbrain_moe.lobes.wavlm import SSLEncoder
from speechbrain_moe.lobes.whisper import Whisper

SAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "samples")
ENCODERS = {
    "whisper": lambda: Whisper(os.path.join(SAMPLES, "tiny_whisper")),
    "wavlm": lambda: SSLEncoder(os.path.join(SAMPLES, "tiny_wavlm")),
}


@pytest.mark.parametrize("encoder", sorted(ENCODERS))
@pytest.mark.parametrize("samples", [1, 100, 500, 900])
def test_clip_shorter_than_one_stack_trains(encoder, samples):
    torch.manual_seed(0)
    llm = AutoModelForCausalLM.from_pretrained(os.path.join(SAMPLES, "tiny_llm"))
    model = SpeechLLM(
        ENCODERS[encoder](),
        llm,
        load_bridge("dense", {"hidden_size": 16}),
        downsampling_factor=4,
        bos_index=1,
    ).train()
    wavs = 0.1 * torch.randn(1, samples)  # batch size 1: no longer clip pads it
    ones = torch.ones(1)
    ids = torch.tensor([[5, 6, 2]])
    emb, mask = model.encode_audio(wavs, ones)
    assert emb.shape[1] == 1 and mask.tolist() == [[True]]
    out = model(wavs, ones, ids, ones, ids, ones)
    loss = target_nll(out["logits"], out["targets"], out["target_mask"])
    loss.backward()
    assert torch.isfinite(loss)
    assert all(
        p.grad is not None and torch.isfinite(p.grad).all()
        for p in model.bridge.parameters()
    )


def test_short_clip_beside_a_long_one_is_unchanged_by_the_padding():
    llm = AutoModelForCausalLM.from_pretrained(os.path.join(SAMPLES, "tiny_llm"))
    model = SpeechLLM(
        ENCODERS["whisper"](),
        llm,
        load_bridge("dense", {"hidden_size": 16}),
        downsampling_factor=4,
    ).eval()
    short = 0.1 * torch.randn(1, 500)
    alone, _ = model.encode_audio(short, torch.ones(1))
    batch = torch.cat(
        [torch.nn.functional.pad(short, (0, 15500)), torch.randn(1, 16000)]
    )
    together, mask = model.encode_audio(batch, torch.tensor([500 / 16000, 1.0]))
    assert mask[0].sum() == 1
    assert torch.allclose(alone[0, 0], together[0, 0], atol=1e-5)


@pytest.fixture
def bars_on():
    """transformers' progress bars enabled (as by default), restored after."""
    before = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    yield
    if not before:
        hf_logging.disable_progress_bar()


@pytest.mark.parametrize(
    "load",
    [
        lambda: AST(os.path.join(SAMPLES, "tiny_ast"), max_frames=100),
        ENCODERS["whisper"],
        ENCODERS["wavlm"],
        lambda: load_llm(os.path.join(SAMPLES, "tiny_llm"), lora_layers=["*q_proj"]),
    ],
    ids=["ast", "whisper", "wavlm", "llm"],
)
def test_loading_draws_no_progress_bar(bars_on, capfd, load):
    load()
    assert "Loading weights" not in capfd.readouterr().err
    assert hf_logging.is_progress_bar_enabled()  # the user's setting is kept
