"""The frozen LLM's and encoder's dtype is a setting (default float32), not
the checkpoint's: a float16 folder loads as float32 on the CPU, and the log
says what was loaded."""

import logging

import pytest
import torch

from speechbrain_moe.lobes.speech_llm import load_llm
from speechbrain_moe.settings import check_recipe_settings


@pytest.fixture(scope="module")
def float16_llm(tmp_path_factory):
    from transformers import AutoModelForCausalLM

    from synthetic.llm import make_tiny_llm

    folder = make_tiny_llm(str(tmp_path_factory.mktemp("llm32")))
    half = str(tmp_path_factory.mktemp("llm16"))
    AutoModelForCausalLM.from_pretrained(folder).half().save_pretrained(half)
    return half


def _dtypes(module):
    return {p.dtype for p in module.parameters()}


def test_float16_llm_folder_loads_as_float32_by_default(float16_llm, caplog):
    with caplog.at_level(logging.INFO, logger="speechbrain_moe.lobes.dtypes"):
        llm = load_llm(float16_llm)
    assert _dtypes(llm) == {torch.float32}
    line = next(
        r.getMessage() for r in caplog.records if r.getMessage().startswith("LLM")
    )
    assert "in float32 on cpu (checkpoint dtype float16)" in line
    count = sum(p.numel() for p in llm.parameters())
    assert f"{count} parameters" in line


def test_llm_dtype_is_explicit(float16_llm, caplog):
    assert _dtypes(load_llm(float16_llm, dtype="bfloat16")) == {torch.bfloat16}
    with caplog.at_level(logging.WARNING, logger="speechbrain_moe.lobes.dtypes"):
        kept = load_llm(float16_llm, dtype="checkpoint")
    assert _dtypes(kept) == {torch.float16}
    assert any(
        "half-precision matrix products are slow" in r.getMessage()
        for r in caplog.records
    )
    with pytest.raises(ValueError, match="llm_dtype must be one of float32"):
        load_llm(float16_llm, dtype="fp16")


def test_float16_whisper_folder_loads_as_float32_by_default(tmp_path):
    from transformers import WhisperConfig, WhisperModel

    from speechbrain_moe.lobes.whisper import Whisper

    config = WhisperConfig(
        d_model=32,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=64,
        decoder_ffn_dim=64,
        vocab_size=64,
        pad_token_id=0,
    )
    WhisperModel(config).half().save_pretrained(str(tmp_path))
    assert _dtypes(Whisper(str(tmp_path))) == {torch.float32}
    assert _dtypes(Whisper(str(tmp_path), dtype="checkpoint")) == {torch.float16}


def test_bridge_recipe_refuses_an_unknown_dtype():
    check_recipe_settings(
        {"llm_dtype": "float32", "encoder_dtype": "bfloat16"}, "b.yaml"
    )
    with pytest.raises(ValueError, match="llm_dtype .* must be one of float32"):
        check_recipe_settings({"llm_dtype": "half"}, "b.yaml")
