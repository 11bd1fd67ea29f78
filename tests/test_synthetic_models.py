"""Tiny random backbones: generated offline, loadable by the lobes."""

import os
import subprocess
import sys

import pytest
import torch

from synthetic import GENERATORS, generate


@pytest.mark.parametrize(
    "kind, lobe_path",
    [
        ("tiny-ast", "speechbrain_moe.lobes.ast.AST"),
        ("tiny-whisper", "speechbrain_moe.lobes.whisper.Whisper"),
        ("tiny-wavlm", "speechbrain_moe.lobes.wavlm.WavLM"),
    ],
)
def test_generated_models_load_offline(tmp_path, monkeypatch, kind, lobe_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert kind in sorted(GENERATORS)
    folder = generate(kind, str(tmp_path / kind))
    names = os.listdir(folder)
    assert "config.json" in names and "preprocessor_config.json" in names
    assert any(n.endswith(".safetensors") for n in names)
    module, cls = lobe_path.rsplit(".", 1)
    lobe = getattr(__import__(module, fromlist=[cls]), cls)(folder)
    with torch.no_grad():
        assert lobe(torch.randn(2, 16000)).shape == (2, lobe.output_size)


def test_tiny_ast_defaults(tmp_path):
    from transformers import ASTConfig

    from synthetic.models import make_tiny_ast

    folder = make_tiny_ast(str(tmp_path))
    cfg = ASTConfig.from_pretrained(folder)
    assert (
        cfg.max_length == 100 and cfg.hidden_size <= 64 and cfg.num_hidden_layers <= 2
    )
    assert (
        ASTConfig.from_pretrained(
            make_tiny_ast(str(tmp_path / "b"), max_length=60)
        ).max_length
        == 60
    )


def test_seed_makes_same_weights(tmp_path):
    from safetensors.torch import load_file

    a = generate("tiny-whisper", str(tmp_path / "a"), seed=3)
    b = generate("tiny-whisper", str(tmp_path / "b"), seed=3)
    wa = load_file(os.path.join(a, "model.safetensors"))
    wb = load_file(os.path.join(b, "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_command_line(tmp_path):
    out = tmp_path / "wavlm"
    result = subprocess.run(
        [sys.executable, "-m", "synthetic", "tiny-wavlm", str(out)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert str(out) in result.stdout
    assert (out / "config.json").exists()
