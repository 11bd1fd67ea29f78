"""Converted real weights (``real`` marker): Whisper tiny.en decodes espeak-ng
speech to the right words; SmolLM2-135M-Instruct completes a fact.

Skipped, with the reason and the command, when the assets are not built.
"""

import re
import subprocess

import numpy as np
import pytest
import torch

from tests.real_assets_fixture import real_assets_or_skip

pytestmark = pytest.mark.real

PHRASE = "please turn on the kitchen lights"
VOICES = ["en-us", "en-us+f3", "en-gb+m3"]


@pytest.fixture(scope="session")
def real_assets():
    return real_assets_or_skip(["whisper", "smollm2"])


@pytest.fixture(scope="session")
def whisper(real_assets):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    model = WhisperForConditionalGeneration.from_pretrained(real_assets.whisper)
    processor = WhisperProcessor.from_pretrained(real_assets.whisper)
    return model.eval(), processor


def _speak(text, voice):
    from tools.real_assets.speech import Voice, synthesise

    accent, _, variant = voice.partition("+")
    if not variant:
        variant = "m1"
    return synthesise(text, Voice(accent, variant, 160, 50))


def _words(text):
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


def test_converted_whisper_transcribes_espeak_speech(whisper):
    """Greedy decoding of a synthetic phrase, in three voices (one batch),
    gives exactly its words."""
    model, processor = whisper
    try:
        audio = [_speak(PHRASE, voice) for voice in VOICES]
    except (FileNotFoundError, subprocess.CalledProcessError) as err:
        pytest.skip(f"espeak-ng/sox unavailable ({err}): apt-get install espeak-ng sox")
    features = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    with torch.no_grad():
        ids = model.generate(features, num_beams=1, do_sample=False, max_new_tokens=16)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert [_words(text) for text in texts] == [PHRASE.split()] * len(VOICES), texts


def test_converted_whisper_is_float32_tiny_en(whisper):
    model, processor = whisper
    assert model.dtype == torch.float32
    config = model.config
    assert (config.d_model, config.encoder_layers, config.vocab_size) == (384, 4, 51864)
    assert processor.tokenizer.convert_tokens_to_ids("<|notimestamps|>") == 50362
    assert processor.tokenizer.convert_tokens_to_ids("<|0.00|>") == 50363
    # Whisper's English normaliser (WER scoring) came with it.
    assert processor.tokenizer.normalize("The Colour, please!") == "the color please"


def test_converted_whisper_loads_as_the_petl_backbone(real_assets):
    """The recipes' Whisper lobe loads the folder and encodes a clip."""
    from speechbrain_moe.lobes.whisper import Whisper

    backbone = Whisper(real_assets.whisper)
    audio = torch.from_numpy(np.asarray(_speak("yes", "en-us"), dtype=np.float32))
    hidden, mask = backbone.encode(audio[None], torch.ones(1))
    assert hidden.shape[-1] == 384 and mask.any()


@pytest.fixture(scope="session")
def smollm2(real_assets):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(real_assets.smollm2)
    return model.eval(), AutoTokenizer.from_pretrained(real_assets.smollm2)


@pytest.mark.parametrize(
    "prompt, expected",
    [("The capital of France is", " Paris"), ("One, two, three,", " four")],
)
def test_converted_smollm2_next_token(smollm2, prompt, expected):
    model, tokenizer = smollm2
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        logits = model(ids).logits[0, -1]
    assert tokenizer.decode([int(logits.argmax())]) == expected


def test_converted_smollm2_is_the_135m_instruct_model(smollm2):
    model, tokenizer = smollm2
    assert model.dtype == torch.float32
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.vocab_size) == (
        30,
        576,
        49152,
    )
