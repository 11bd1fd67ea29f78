"""Issue 22's latent bugs, each pinned by a test that failed before the fix:
the bridge path's setting errors named ``--petl_overrides`` (it is
``--bridge_overrides``), and an empty placement target list raised
``AttributeError`` (``getattr(record, placement)``) instead of the message."""

import pytest

from speechbrain_moe.checks import check_positive
from speechbrain_moe.hparams_files import load_hparams
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.speech_llm import load_bridge
from speechbrain_moe.petl import apply_method


@pytest.mark.parametrize(
    "settings",
    [
        {"num_experts": 0},
        {"top_k": 0},
        {"expert_hidden": 0},
        {"fused_size": 0},
        {"num_shared_experts": -1},
    ],
)
def test_bridge_setting_errors_name_bridge_overrides(settings):
    with pytest.raises(ValueError) as info:
        builder = load_bridge("moe_adapter", settings)
        builder(16, 8)  # (the old code only failed here, if at all)
    message = str(info.value)
    assert "--bridge_overrides" in message
    assert "--petl_overrides" not in message


def test_bridge_overrides_that_are_not_a_mapping_name_bridge_overrides():
    with pytest.raises(ValueError, match="must be a mapping") as info:
        load_hparams("bridges", "dense", "hidden_size: 8")
    assert '--bridge_overrides="' in str(info.value)
    assert "--petl_overrides" not in str(info.value)
    with pytest.raises(ValueError, match='--petl_overrides="'):
        load_hparams("petl", "adapter", ["bottleneck"])


def test_check_positive_names_both_override_flags():
    with pytest.raises(ValueError) as info:
        check_positive("SparseMoE", num_experts=0)
    assert "--bridge_overrides" in str(info.value)


def test_empty_placement_targets_raise_the_intended_message(tiny_ast_folder):
    backbone = AST(tiny_ast_folder, max_frames=100)
    backbone.petl_targets.attention = []
    with pytest.raises(ValueError) as info:
        apply_method(backbone, "adapter", {"bottleneck": 2})
    message = str(info.value)
    assert "no pfeiffer_attention sub-modules" in message
    assert "PetlTargets" in message
    assert type(backbone.model).__name__ == "ASTModel"  # nothing wrapped


def test_empty_placement_targets_of_any_module():
    import torch

    from speechbrain_moe.adapters import BottleneckAdapter
    from speechbrain_moe.petl import insert_adapters
    from speechbrain_moe.targets import PetlTargets

    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    model.petl_targets = PetlTargets(hidden_size=4, attention=[])
    with pytest.raises(ValueError, match="no pfeiffer_attention sub-modules"):
        insert_adapters(model, BottleneckAdapter)
