"""Merging a trained linear update into the frozen weights (peft's
``merge_and_unload``): same outputs, no adapter module left; methods that
cannot be merged refuse and say why."""

import os
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO
from speechbrain.nnet.adapters import AdaptedModel, LoRA

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.petl.merge import NOT_MERGEABLE, merge_and_unload

SAMPLES = os.path.join(REPO, "tests", "samples")
CONV_AND_FFN = ["embeddings.patch_embeddings.projection", "layers.*.mlp.fc1"]


def adapted(folder, method, **overrides):
    """A tiny AST adapted by ``method``, in eval mode, with the LoRA
    up-projections made non-zero (as after training)."""
    torch.manual_seed(0)
    model = apply_method(AST(folder, max_frames=100), method, overrides)
    for module in model.modules():
        if isinstance(module, LoRA):
            torch.nn.init.normal_(module.adapter_up_proj.weight, std=0.5)
    return model.eval()


def outputs(model):
    """The pooled embeddings of a fixed padded batch."""
    torch.manual_seed(1)
    wavs = 0.1 * torch.randn(2, 16000)
    with torch.no_grad():
        return model(wavs, torch.tensor([1.0, 0.6]))


@pytest.mark.parametrize("targets", [None, CONV_AND_FFN], ids=["qv", "conv+ffn"])
def test_lora_merge_keeps_outputs_and_removes_adapters(tiny_ast_folder, targets):
    model = adapted(tiny_ast_folder, "lora", target_layers=targets)
    before = outputs(model)
    n_lora = sum(isinstance(m, LoRA) for m in model.modules())
    assert n_lora >= 2
    plain = AST(tiny_ast_folder, max_frames=100)
    assert not torch.allclose(before, outputs(plain.eval()), atol=1e-3)

    merged = merge_and_unload(model)
    assert torch.allclose(outputs(merged), before, atol=1e-5)
    assert not any(isinstance(m, (LoRA, AdaptedModel)) for m in merged.modules())
    assert sum(p.numel() for p in merged.parameters()) == sum(
        p.numel() for p in plain.parameters()
    )


@pytest.mark.parametrize("method", ["bitfit", "linear", "full_ft"])
def test_methods_without_added_modules_merge_as_identity(tiny_ast_folder, method):
    model = adapted(tiny_ast_folder, method)
    with torch.no_grad():  # as after training: the trained tensors moved
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.05 * torch.randn_like(param))
    before = outputs(model)
    names = [n for n, _ in model.named_modules()]
    merged = merge_and_unload(model)
    assert torch.equal(outputs(merged), before)
    assert [n for n, _ in merged.named_modules()] == names


@pytest.mark.parametrize("method", sorted(NOT_MERGEABLE))
def test_unmergeable_methods_refuse_and_say_why(tiny_ast_folder, method):
    model = adapted(tiny_ast_folder, method)
    with pytest.raises(ValueError, match="cannot be merged") as err:
        merge_and_unload(model)
    assert NOT_MERGEABLE[method] in str(err.value)
    assert "merge=False" in str(err.value)


def test_custom_method_with_adapters_refuses(tiny_ast_folder):
    path = os.path.join(REPO, "speechbrain_moe", "hparams", "petl", "dense_moa.yaml")
    model = adapted(tiny_ast_folder, path)  # a user's own file: no known name
    with pytest.raises(ValueError, match=r"\['DenseMoA', 'ParallelAdapter'\]"):
        merge_and_unload(model)


@pytest.mark.slow
def test_classifier_merge_true_matches_unmerged(tmp_path):
    """A LoRA model trained by the ESC-50 recipe, loaded with and without
    ``merge=True``: equal outputs, no adapter module in the merged one."""
    from speechbrain_moe.inference import PETLAudioClassifier

    recipe = os.path.join(REPO, "recipes", "ESC50", "PETL")
    out = tmp_path / "exp"
    proc = subprocess.run(
        [
            PYTHON,
            "train.py",
            "hparams/ast.yaml",
            f"--data_folder={SAMPLES}/esc50",
            f"--backbone_source={SAMPLES}/tiny_ast",
            f"--output_folder={out}",
            "--petl_method=lora",
            "--n_classes=2",
            "--number_of_epochs=1",
            "--lr=0.05",
            "--batch_size=2",
            "--max_frames=100",
            "--device=cpu",
            "--noprogressbar",
        ],
        cwd=recipe,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    plain = PETLAudioClassifier.from_hparams(
        source=str(out), savedir=str(tmp_path / "a")
    )
    merged = PETLAudioClassifier.from_hparams(
        source=str(out), savedir=str(tmp_path / "b"), merge=True
    )
    assert any(isinstance(m, LoRA) for m in plain.mods.modules())
    assert not any(isinstance(m, (LoRA, AdaptedModel)) for m in merged.mods.modules())
    wavs = 0.1 * torch.randn(3, 4000)
    lens = torch.tensor([1.0, 0.7, 0.5])
    expected = plain.classify_batch(wavs, lens)[0]
    assert torch.allclose(merged.classify_batch(wavs, lens)[0], expected, atol=1e-5)
