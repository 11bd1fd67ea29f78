"""Mistakes a user can make raise a ValueError whose message names the
setting and the fix: bad hyper-parameters, unknown methods, unknown settings."""

import pytest
import torch

from speechbrain_moe.adapters import (
    BottleneckAdapter,
    Convpass,
    DenseMoA,
    SoftMoA,
    SparseMoE,
)
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method, available_methods


@pytest.mark.parametrize(
    "build, setting",
    [
        (lambda: SoftMoA(8, num_experts=0), "num_experts"),
        (lambda: SoftMoA(8, slots_per_expert=0), "slots_per_expert"),
        (lambda: SoftMoA(8, bottleneck=0), "bottleneck"),
        (lambda: DenseMoA(8, num_experts=0), "num_experts"),
        (lambda: DenseMoA(8, bottleneck=-1), "bottleneck"),
        (lambda: SparseMoE(8, num_experts=0), "num_experts"),
        (lambda: SparseMoE(8, num_experts=4, top_k=5), "top_k"),
        (lambda: SparseMoE(8, num_experts=4, top_k=0), "top_k"),
        (lambda: SparseMoE(8, hidden_size=0), "hidden_size"),
        (lambda: SparseMoE(8, routing="softmax"), "routing"),
        (lambda: SparseMoE(8, num_shared_experts=-1), "num_shared_experts"),
        (lambda: BottleneckAdapter(8, bottleneck=0), "bottleneck"),
        (lambda: BottleneckAdapter(8, bottleneck=2.5), "bottleneck"),
        (lambda: Convpass(8, bottleneck=0), "bottleneck"),
        (lambda: Convpass(8, kernel_size=4), "kernel_size"),
        (lambda: ExpertBank(0, 8, 2), "num_experts"),
    ],
)
def test_bad_hyper_parameters(build, setting):
    with pytest.raises(ValueError, match=setting) as info:
        build()
    message = str(info.value)
    assert any(hint in message for hint in ("Set ", "Choose", "choose", "Use ")), (
        message
    )


def test_convpass_rejects_a_sequence_that_is_not_a_grid():
    conv = Convpass(8, bottleneck=2, num_prefix_tokens=2, grid_height=3)
    with pytest.raises(ValueError, match="grid_height"):
        conv(torch.randn(1, 2 + 7, 8))


def test_unknown_method_lists_valid_names(tiny_ast_folder):
    backbone = AST(tiny_ast_folder, max_frames=100)
    with pytest.raises(ValueError, match="Unknown PETL method 'soft_moe'") as info:
        apply_method(backbone, "soft_moe")
    for name in available_methods():
        assert name in str(info.value)
    assert len(available_methods()) >= 11


@pytest.fixture
def tiny_ast(tiny_ast_folder):
    """The tiny AST lobe."""
    return AST(tiny_ast_folder, max_frames=100)


@pytest.mark.parametrize(
    "method, settings, valid",
    [
        ("soft_moa", {"num_expert": 4}, "num_experts"),
        ("adapter", {"rank": 4}, "bottleneck"),
        ("lora", {"bottleneck": 4}, "rank"),
        ("prompt", {"num_prefix": 4}, "num_prompts"),
        ("linear", {"rank": 4}, "none"),
    ],
)
def test_unknown_setting_lists_valid_settings(tiny_ast, method, settings, valid):
    with pytest.raises(ValueError, match="has no setting") as info:
        apply_method(tiny_ast, method, settings)
    assert valid in str(info.value)
    assert list(settings)[0] in str(info.value)
    # Nothing was changed: the backbone is still fully trainable and unwrapped.
    assert all(p.requires_grad for p in tiny_ast.parameters())
    assert type(tiny_ast.model).__name__ == "ASTModel"


@pytest.mark.parametrize(
    "settings, match",
    [
        ({"placement": "everywhere"}, "placement"),
        ({"mode": "serial"}, "mode"),
        ({"num_experts": 0}, "num_experts"),
    ],
)
def test_bad_adapter_settings_through_the_method_file(tiny_ast, settings, match):
    with pytest.raises(ValueError, match=match):
        apply_method(tiny_ast, "soft_moa", settings)
    # The error comes before anything is frozen or wrapped.
    assert all(p.requires_grad for p in tiny_ast.parameters())
    assert type(tiny_ast.model).__name__ == "ASTModel"


def test_targets_naming_missing_modules_are_reported(tiny_ast):
    tiny_ast.petl_targets.attention = ["layers.0.attn", "layers.1.attn"]
    with pytest.raises(ValueError, match="layers.0.attn"):
        apply_method(tiny_ast, "adapter", {"bottleneck": 2})
    assert type(tiny_ast.model).__name__ == "ASTModel"
