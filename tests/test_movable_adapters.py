"""A task's trained adapters as a movable unit (peft's adapter folders):
disabling them gives the frozen backbone back, unmerge undoes merge, merging
refuses non-finite weights and mixtures, and a packaged folder loads onto a
backbone the user already has (and refuses another one, naming both)."""

import os

import pytest
import torch
from speechbrain.nnet.adapters import LoRA

from speechbrain_moe.inference.adapters import load_adapters
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.petl.disable import disable_adapters, trained_in_place
from speechbrain_moe.petl.merge import merge_and_unload, merge_lora, unmerge


def trained(folder, method, **overrides):
    """A tiny AST adapted by ``method``, every trainable tensor moved away
    from its initial value (as after training), in eval mode."""
    torch.manual_seed(0)
    model = apply_method(AST(folder, max_frames=100), method, overrides)
    with torch.no_grad():
        for param in model.parameters():
            if param.requires_grad:
                param.add_(0.3 * torch.randn_like(param))
    return model.eval()


def outputs(model):
    """Pooled embeddings of a fixed padded batch."""
    torch.manual_seed(1)
    wavs = 0.1 * torch.randn(2, 16000)
    with torch.no_grad():
        return model(wavs, torch.tensor([1.0, 0.6]))


@pytest.fixture(scope="module")
def plain_outputs(tiny_ast_folder):
    return outputs(AST(tiny_ast_folder, max_frames=100).eval())


@pytest.mark.parametrize(
    "method",
    ["lora", "adapter", "soft_moa", "moe_adapter", "prompt", "prefix", "bitfit"],
)
def test_disable_adapters_gives_the_frozen_backbone(
    tiny_ast_folder, plain_outputs, method
):
    model = trained(tiny_ast_folder, method)
    adapted = outputs(model)
    assert not torch.allclose(adapted, plain_outputs, atol=1e-4)
    pretrained = AST(tiny_ast_folder, max_frames=100).state_dict()
    with disable_adapters(model, pretrained=pretrained):
        assert torch.allclose(outputs(model), plain_outputs, atol=1e-6)
    assert torch.equal(outputs(model), adapted)  # back, the same modules


def test_disable_refuses_tensors_trained_in_place_without_pretrained(tiny_ast_folder):
    model = trained(tiny_ast_folder, "soft_moa")  # train_norms: True
    in_place = trained_in_place(model)
    assert in_place and all("layernorm" in name for name in in_place)
    before = outputs(model)
    with pytest.raises(ValueError, match="in place .*pretrained=") as err:
        with disable_adapters(model):
            pass
    assert in_place[0] in str(err.value)
    assert torch.equal(outputs(model), before)  # nothing changed
    lora = trained(tiny_ast_folder, "lora")
    assert trained_in_place(lora) == []  # LoRA needs no pretrained values


def test_unmerge_restores_the_unmerged_model(tiny_ast_folder):
    model = trained(tiny_ast_folder, "lora")
    before = outputs(model)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    merged = merge_lora(model)
    assert not any(isinstance(m, LoRA) for m in model.modules())
    assert torch.allclose(outputs(model), before, atol=1e-5)
    unmerge(model, merged)
    assert sum(isinstance(m, LoRA) for m in model.modules()) == len(merged.loras)
    assert torch.allclose(outputs(model), before, atol=1e-5)
    restored = model.state_dict()
    assert list(restored) == list(weights)
    for key, value in weights.items():
        assert torch.allclose(restored[key], value, atol=1e-6), key
    with disable_adapters(model):  # the unmerged frozen weights are back too
        plain = AST(tiny_ast_folder, max_frames=100).eval()
        assert torch.allclose(outputs(model), outputs(plain), atol=1e-5)


def test_merge_refuses_non_finite_weights_and_changes_nothing(tiny_ast_folder):
    model = trained(tiny_ast_folder, "lora")
    names = [n for n, m in model.named_modules() if isinstance(m, LoRA)]
    bad = dict(model.named_modules())[names[-1]]
    with torch.no_grad():
        bad.adapter_down_proj.weight[0, 0] = float("inf")
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="NaN or inf") as err:
        merge_and_unload(model)
    assert f"{names[-1]}.adapter_down_proj.weight" in str(err.value)
    after = model.state_dict()
    assert all(torch.equal(after[k], v) for k, v in weights.items())


@pytest.mark.parametrize("method", ["soft_moa", "dense_moa", "moe_adapter"])
def test_mixtures_refuse_merging_for_their_routing(tiny_ast_folder, method):
    model = trained(tiny_ast_folder, method)
    with pytest.raises(ValueError, match="input-dependent routing"):
        merge_lora(model)


def package(tmp_path, model, source, max_frames=100):
    """A packaged folder of ``model`` as package_experiment leaves it (the
    parts load_adapters reads: trained tensors, inference.yaml, the copy of
    the method file)."""
    from importlib import resources

    folder = tmp_path / "unit"
    folder.mkdir()
    model.save_trainable(str(folder / "backbone.ckpt"))
    method = model.petl_method
    installed = resources.files("speechbrain_moe") / "hparams" / "petl"
    (folder / f"{method}.yaml").write_text((installed / f"{method}.yaml").read_text())
    (folder / "inference.yaml").write_text(
        "backbone: !apply:speechbrain_moe.petl.apply_method\n"
        "    backbone: !new:speechbrain_moe.lobes.ast.AST\n"
        f"        source: {source}\n"
        f"        max_frames: {max_frames}\n"
        f"    method: !ref <inference_folder>/{method}.yaml\n"
    )
    return str(folder)


@pytest.mark.parametrize(
    "method, overrides",
    [("lora", {"rank": 4}), ("soft_moa", {"num_experts": 3})],
    ids=["lora", "soft_moa"],
)
def test_load_adapters_onto_a_given_backbone(
    tiny_ast_folder, tmp_path, method, overrides
):
    model = trained(tiny_ast_folder, method, **overrides)
    folder = package(tmp_path, model, tiny_ast_folder)
    mine = AST(tiny_ast_folder, max_frames=100)
    adapted = load_adapters(folder, mine)
    assert adapted.petl_method == os.path.join(folder, f"{method}.yaml")  # the copy
    for key, value in overrides.items():
        assert adapted.petl_settings[key] == value
    assert torch.equal(outputs(adapted.eval()), outputs(model))
    with pytest.raises(ValueError, match="already adapted"):
        load_adapters(folder, adapted)


def test_load_adapters_refuses_another_backbone_naming_both(tiny_ast_folder, tmp_path):
    from transformers import ASTConfig, ASTModel

    from synthetic.models import TINY_AST

    model = trained(tiny_ast_folder, "lora")
    folder = package(tmp_path, model, tiny_ast_folder)
    other = str(tmp_path / "other_ast")
    ASTModel(ASTConfig(**{**TINY_AST, "intermediate_size": 48})).save_pretrained(other)
    with pytest.raises(ValueError, match="trained on") as err:
        load_adapters(folder, AST(other, max_frames=100))
    message = str(err.value)
    assert tiny_ast_folder in message and other in message
    assert "config intermediate_size" in message
    with pytest.raises(ValueError, match="max_frames: 100 -> 60"):
        load_adapters(folder, AST(tiny_ast_folder, max_frames=60))
    copy = str(tmp_path / "copy_ast")
    AST(tiny_ast_folder, max_frames=100).model.save_pretrained(copy)
    with pytest.raises(ValueError, match="source: "):
        load_adapters(folder, AST(copy, max_frames=100))
    adapted = load_adapters(folder, AST(copy, max_frames=100), check_source=False)
    assert torch.allclose(outputs(adapted.eval()), outputs(model), atol=1e-6)
    assert os.path.isfile(os.path.join(folder, "backbone.ckpt"))


def test_classifier_unmerge_after_merge_true(tiny_ast_folder):
    from speechbrain.dataio.encoder import CategoricalEncoder

    from speechbrain_moe.inference import PETLAudioClassifier

    encoder = CategoricalEncoder()
    encoder.update_from_iterable(["a", "b", "c"])
    torch.manual_seed(2)
    head = torch.nn.Linear(32, 3)
    backbone = trained(tiny_ast_folder, "lora")
    torch.manual_seed(1)
    wavs = 0.1 * torch.randn(2, 16000)
    before = PETLAudioClassifier(
        modules={"backbone": backbone, "classifier": head},
        hparams={"label_encoder": encoder, "sample_rate": 16000},
    ).classify_batch(wavs)[0]
    model = PETLAudioClassifier(
        modules={"backbone": backbone, "classifier": head},
        hparams={"label_encoder": encoder, "sample_rate": 16000},
        merge=True,
    )
    assert not any(isinstance(m, LoRA) for m in model.mods.modules())
    assert torch.allclose(model.classify_batch(wavs)[0], before, atol=1e-5)
    model.unmerge()
    assert any(isinstance(m, LoRA) for m in model.mods.modules())
    assert torch.allclose(model.classify_batch(wavs)[0], before, atol=1e-5)
    with pytest.raises(ValueError, match="not merged"):
        model.unmerge()
