"""Issue 22 item 2, hidden state: each test failed on the code before.

* the PETL method a backbone was adapted with lives in attributes its class
  declares (``Backbone.petl_method`` / ``petl_settings``), written by
  ``apply_method`` only on a backbone and read through ``adaptation_of``
  (before: set on any module, read with ``getattr`` from anything);
* ``load_bridge`` returns a ``BridgeBuilder`` that carries its name and
  settings (before: attributes set on a ``functools.partial``);
* the WavLM lobe builds its attention and masked group norm around the same
  tensors and sets them through their parents (before: ``__class__`` was
  assigned on Hugging Face's modules); checkpoint keys and values unchanged.

Authors
 * speechbrain-moe contributors 2026
"""

import inspect

import pytest
import torch
import torch.nn as nn
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

import speechbrain_moe.lobes.wavlm as wavlm_module
from speechbrain_moe.lobes.base import Backbone, adaptation_of
from speechbrain_moe.lobes.speech_llm import BridgeBuilder, SpeechLLM, load_bridge
from speechbrain_moe.lobes.wavlm import (
    MaskedGroupNorm,
    ModularWavLMAttention,
    WavLM,
    rebuilt_with_parameters,
)
from speechbrain_moe.petl import apply_method
from synthetic.models import make_tiny_wavlm


class Tiny(Backbone):
    """A minimal backbone: one linear layer as its model."""

    def __init__(self):
        super().__init__()
        self.model = nn.Linear(2, 2)


def test_backbone_declares_its_petl_record():
    backbone = Tiny()
    assert backbone.petl_method is None and backbone.petl_settings is None
    assert adaptation_of(backbone) == (None, None)
    adapted = apply_method(backbone, "linear")
    method, settings = adaptation_of(adapted)
    assert method == "linear" and settings is adapted.petl_settings
    assert not any(p.requires_grad for p in adapted.parameters())


def test_apply_method_refuses_a_module_that_is_not_a_backbone():
    linear = nn.Linear(2, 2)
    with pytest.raises(TypeError, match="Backbone") as info:
        apply_method(linear, "linear")
    assert "speechbrain_moe.lobes" in str(info.value)
    assert "petl_method" not in vars(linear)  # nothing set on a foreign module
    assert all(p.requires_grad for p in linear.parameters())


def test_adaptation_of_ignores_attributes_of_other_modules():
    module = nn.Sequential(nn.Linear(2, 2))
    module.petl_method = "soft_moa"  # not a Backbone: not a record
    assert adaptation_of(module) == (None, None)


def test_load_bridge_returns_a_named_builder():
    builder = load_bridge("dense", {"hidden_size": 16})
    assert isinstance(builder, BridgeBuilder)
    assert builder.bridge_name == "dense" and builder.bridge_settings["hidden_size"]
    # The YAML's own partial is left as HyperPyYAML built it.
    assert not hasattr(builder.build, "bridge_name")
    assert not hasattr(builder.build, "bridge_settings")


def test_speech_llm_records_the_builders_name_or_the_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    encoder = nn.Module()
    encoder.output_size = 8
    llm = LlamaForCausalLM(
        LlamaConfig(
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            vocab_size=32,
        )
    )
    named = SpeechLLM(encoder, llm, load_bridge("dense", {"hidden_size": 16}), 2)
    assert named.describe()["bridge"] == "dense"
    assert named.describe()["bridge_settings"]["hidden_size"] == 16
    plain = SpeechLLM(encoder, llm, nn.Linear, 2)
    assert plain.describe()["bridge"] == "Linear"
    assert plain.describe()["bridge_settings"] is None


def test_wavlm_lobe_assigns_no_class():
    assert "__class__ =" not in inspect.getsource(wavlm_module)


def test_modular_attention_is_built_around_the_same_tensors():
    attn = WavLMAttention(embed_dim=8, num_heads=2, num_buckets=8, max_distance=16)
    attn.eval()
    modular = ModularWavLMAttention.from_attention(attn)
    assert type(attn) is WavLMAttention  # the original block is untouched
    assert not modular.training
    assert list(modular.state_dict()) == list(attn.state_dict())
    for (name, mine), theirs in zip(
        modular.named_parameters(), attn.parameters(), strict=True
    ):
        assert mine is theirs, name
    x = torch.randn(2, 5, 8)
    torch.testing.assert_close(modular(x)[0], attn(x)[0], atol=1e-6, rtol=1e-6)
    norm = nn.GroupNorm(2, 4)
    masked = MaskedGroupNorm.from_group_norm(norm)
    assert masked.weight is norm.weight and masked.bias is norm.bias
    assert (masked.num_groups, masked.eps) == (norm.num_groups, norm.eps)


def test_rebuilding_refuses_tensors_the_module_lacks():
    with pytest.raises(RuntimeError, match="Pin transformers"):
        rebuilt_with_parameters(nn.Linear(3, 2, bias=False), nn.Linear, 3, 2)


@pytest.mark.parametrize("stable", [False, True])
def test_wavlm_checkpoint_keys_and_values_are_hugging_faces(tmp_path, stable):
    """The replaced blocks keep every state-dict key and tensor of the model
    Hugging Face loads (``model.`` prefixed in the lobe), but the SpecAugment
    embedding the lobe deletes when ``apply_spec_augment`` is off."""
    from transformers import WavLMModel

    extra = {"do_stable_layer_norm": True, "feat_extract_norm": "layer"}
    folder = make_tiny_wavlm(str(tmp_path), **(extra if stable else {}))
    reference = WavLMModel.from_pretrained(folder).state_dict()
    del reference["masked_spec_embed"]  # the lobe drops it (no SpecAugment)
    lobe = WavLM(folder)
    ours = lobe.model.state_dict()
    assert list(ours) == list(reference)
    for key, value in reference.items():
        assert torch.equal(ours[key], value), key
    kinds = {type(m) for m in lobe.model.modules()}
    assert ModularWavLMAttention in kinds and WavLMAttention not in kinds
    assert (MaskedGroupNorm in kinds) is not stable


def test_wavlm_settings_reach_the_config_as_it_loads(tmp_path, monkeypatch):
    """``layerdrop`` and ``apply_spec_augment`` are given to
    ``AutoConfig.from_pretrained`` (HF's overrides), not assigned on the
    loaded config afterwards (item "config fields mutated on load")."""
    import transformers

    folder = make_tiny_wavlm(str(tmp_path))
    calls, original = [], transformers.AutoConfig.from_pretrained

    def spy(*args, **kwargs):
        calls.append(kwargs)
        config = original(*args, **kwargs)
        before = dict(vars(config))
        loaded.append((config, before))
        return config

    loaded = []
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained", spy)
    lobe = WavLM(folder, layerdrop=0.05)
    assert calls[0]["layerdrop"] == 0.05 and calls[0]["apply_spec_augment"] is False
    config, before = loaded[0]
    assert (config.layerdrop, config.apply_spec_augment) == (0.05, False)
    assert before["layerdrop"] == 0.05  # already set when the config was returned
    assert lobe.model.config.layerdrop == 0.05


def test_classes_split_for_the_old_size_cap_are_whole_again():
    """Issue 22 item 3: SparseMoE's routing and SpeechLLM's input layout were
    mixins (``_TopKRouting``, ``SpeechPromptLayout``) reading their host's
    attributes; each class now defines its own methods, and no class of the
    package derives from a private helper that is not a module."""
    import importlib
    import pkgutil

    import speechbrain_moe
    from speechbrain_moe.adapters.moe import SparseMoE
    from speechbrain_moe.lobes.speech_llm import SpeechLLM

    for name in ("route", "_aux_loss", "_report_routing", "update_bias"):
        assert name in vars(SparseMoE), name
    for name in ("build_inputs", "embed_tokens"):
        assert name in vars(SpeechLLM), name
    offenders = []
    for info in pkgutil.walk_packages(speechbrain_moe.__path__, "speechbrain_moe."):
        module = importlib.import_module(info.name)
        for cls in vars(module).values():
            if not isinstance(cls, type) or cls.__module__ != info.name:
                continue
            for base in cls.__bases__:
                private = base.__name__.startswith("_") and base.__module__.startswith(
                    "speechbrain_moe"
                )
                if private and not issubclass(base, nn.Module):
                    offenders.append(f"{cls.__name__}({base.__name__})")
    assert offenders == []


def test_bridge_builder_passes_constructor_arguments():
    """A ``BridgeBuilder`` is called like the partial it replaces."""
    bridge = load_bridge("moe_adapter")(40, 16, fused_size=8, expert_hidden=4)
    assert bridge.fuse.out_features == 8


def test_masked_group_norm_gets_the_valid_frames_of_the_call_only(tmp_path):
    """The first convolution's norm reads each clip's valid frames from the
    forward pass in progress: no attribute is written on it (the old lobe set
    and cleared ``valid_frames`` on every norm around each call), and a padded
    clip in a batch equals the clip alone."""
    lobe = WavLM(make_tiny_wavlm(str(tmp_path)))
    norm = next(m for m in lobe.modules() if isinstance(m, MaskedGroupNorm))
    seen = []
    norm.register_forward_pre_hook(lambda module, args: seen.append(dict(vars(module))))
    before = dict(vars(norm))
    wavs = torch.randn(2, 16000)
    with torch.no_grad():
        batch, _ = lobe.encode(wavs, torch.tensor([0.5, 1.0]))
        alone, _ = lobe.encode(wavs[:1, :8000])
    assert seen and all(state == before for state in seen)
    frames = alone.shape[1]
    assert torch.allclose(batch[0, :frames], alone[0], atol=1e-4)
