"""Adapter-only checkpoints: only trained tensors are saved; loading them onto
a freshly loaded backbone reproduces the outputs exactly; loading onto a
backbone of another shape or method fails naming both."""

import pytest
import torch

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.recoverables import DESCRIPTION_KEY


def adapted(folder, method="soft_moa", **overrides):
    """A tiny AST adapted with ``method`` as the recipes do it."""
    return apply_method(AST(folder, max_frames=100), method, overrides)


@pytest.fixture
def trained(tiny_ast_folder, tmp_path):
    """A Soft-MoA AST whose trainable tensors were moved off their init, and
    the path of its saved adapter checkpoint."""
    torch.manual_seed(0)
    model = adapted(tiny_ast_folder, num_experts=4)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    path = tmp_path / "backbone.ckpt"
    model.save_trainable(path)
    return model.eval(), path


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("soft_moa", {"num_experts": 4}),
        ("moe_adapter", {"num_experts": 4}),
        ("lora", {}),
    ],
)
def test_saved_file_holds_only_trainable_tensors(
    tiny_ast_folder, tmp_path, method, overrides
):
    model = adapted(tiny_ast_folder, method, **overrides)
    path = tmp_path / "b.ckpt"
    model.save_trainable(path)
    saved = torch.load(path, weights_only=True)
    description = saved.pop(DESCRIPTION_KEY)
    assert description["petl_method"] == method
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    frozen = {n for n, p in model.named_parameters() if not p.requires_grad}
    assert trainable <= set(saved)
    assert not frozen & set(saved)
    extra = set(saved) - trainable  # only buffers of the added modules
    assert all(".adapter." in k for k in extra), extra
    n_saved = sum(v.numel() for v in saved.values())
    n_total = sum(p.numel() for p in model.parameters())
    assert n_saved < 0.5 * n_total


def test_reload_reproduces_outputs_exactly(trained, tiny_ast_folder):
    model, path = trained
    wavs = torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.6])
    with torch.no_grad():
        expected = model(wavs, lens)
    fresh = adapted(tiny_ast_folder, num_experts=4).eval()
    with torch.no_grad():
        assert not torch.equal(fresh(wavs, lens), expected)
    fresh.load_trainable(path)
    with torch.no_grad():
        assert torch.equal(fresh(wavs, lens), expected)


def test_other_method_fails_naming_both(trained, tiny_ast_folder):
    _, path = trained
    other = adapted(tiny_ast_folder, "adapter", bottleneck=4)
    with pytest.raises(RuntimeError) as info:
        other.load_trainable(path)
    message = str(info.value)
    assert "petl_method 'soft_moa'" in message and "'num_experts': 4" in message
    assert "petl_method 'adapter'" in message and "'bottleneck': 4" in message
    assert "Load it onto the backbone_source and petl_method" in message


def test_other_settings_fail_naming_both(trained, tiny_ast_folder):
    _, path = trained
    other = adapted(tiny_ast_folder, num_experts=6)
    with pytest.raises(RuntimeError, match="shape mismatches") as info:
        other.load_trainable(path)
    assert "'num_experts': 4" in str(info.value)
    assert "'num_experts': 6" in str(info.value)


def test_other_backbone_shape_fails_naming_both(trained, tmp_path):
    from synthetic.models import make_tiny_ast

    _, path = trained
    folder = make_tiny_ast(str(tmp_path / "wider"), hidden_size=48)
    other = adapted(str(folder), num_experts=4)
    with pytest.raises(RuntimeError) as info:
        other.load_trainable(path)
    message = str(info.value)
    assert "AST (hidden_size 32, 2 layers)" in message
    assert "AST (hidden_size 48, 2 layers)" in message


def test_checkpoint_without_description_still_loads(trained, tiny_ast_folder, tmp_path):
    model, path = trained
    legacy = tmp_path / "legacy.ckpt"
    torch.save(model.trainable_state_dict(), legacy)
    fresh = adapted(tiny_ast_folder, num_experts=4)
    fresh.load_trainable(legacy)
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(v, fresh.trainable_state_dict()[k])
