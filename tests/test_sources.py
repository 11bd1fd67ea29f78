"""Where a backbone comes from, and what it is given: a missing folder, a
folder of another model type, empty and too-short clips, over-long clips."""

import logging

import pytest
import torch

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.wavlm import WavLM
from speechbrain_moe.lobes.whisper import Whisper
from synthetic.models import make_tiny_whisper

LOBES = {"AST": AST, "Whisper": Whisper, "WavLM": WavLM}


@pytest.mark.parametrize("lobe", sorted(LOBES))
def test_missing_source_folder_names_it(lobe, tmp_path):
    missing = str(tmp_path / "no_such_model")
    with pytest.raises(FileNotFoundError, match="--backbone_source") as info:
        LOBES[lobe](missing)
    assert missing in str(info.value)


@pytest.mark.parametrize("lobe", ["AST", "WavLM"])
def test_source_of_another_model_type_is_refused(lobe, tmp_path):
    whisper = make_tiny_whisper(str(tmp_path / "whisper"))
    with pytest.raises(ValueError, match="holds a 'whisper' model") as info:
        LOBES[lobe](whisper)
    assert "whisper.yaml" in str(info.value)


def test_ast_pads_short_clips_and_refuses_empty_ones(tiny_ast_folder):
    ast = AST(tiny_ast_folder, max_frames=100).eval()
    with torch.no_grad():
        short = ast(torch.randn(1, 80))  # 5 ms: padded to one 25 ms window
        assert torch.isfinite(short).all()
        with pytest.raises(ValueError, match="Clip 1 of the batch is empty"):
            ast(torch.randn(2, 1600), torch.tensor([1.0, 0.0]))


def test_ast_warns_naming_the_clip_it_cuts(tiny_ast_folder, caplog):
    ast = AST(tiny_ast_folder, max_frames=100).eval()
    assert ast.max_duration == pytest.approx(1.015)
    with caplog.at_level(logging.WARNING), torch.no_grad():
        ast(torch.randn(2, 32000), torch.tensor([0.5, 1.0]))
    assert "Clip 1 of the batch lasts 2.00 s" in caplog.text
    assert "Clip 0" not in caplog.text
