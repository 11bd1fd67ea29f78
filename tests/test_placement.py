"""Placement wrappers: parallel and sequential adapters around modules that
return tensors or tuples (Hugging Face attention), used through SpeechBrain's
``AdaptedModel``."""

import pytest
import torch
from speechbrain.nnet.adapters import AdaptedModel
from transformers import ASTConfig
from transformers.models.audio_spectrogram_transformer.modeling_audio_spectrogram_transformer import (
    ASTAttention,
)

from speechbrain_moe.adapters import BottleneckAdapter, SoftMoA
from speechbrain_moe.placement import ParallelAdapter, SequentialAdapter, infer_sizes
from speechbrain_moe.routing import token_mask


def randomize_up(wrapper):
    """Random up-projection so that the adapter's contribution is visible."""
    with torch.no_grad():
        wrapper.adapter.up.weight.normal_()
        wrapper.adapter.up.bias.normal_()
    return wrapper


@pytest.fixture
def attention():
    """A tiny HF attention block (returns ``(output, weights)``)."""
    torch.manual_seed(0)
    config = ASTConfig(hidden_size=16, num_attention_heads=2, intermediate_size=32)
    return ASTAttention(config).eval()


def test_sizes_of_an_attention_block(attention):
    assert infer_sizes(attention) == (16, 16)


def test_parallel_on_tuple_output(attention):
    layer = randomize_up(
        ParallelAdapter(attention, BottleneckAdapter, {"bottleneck": 4})
    )
    x = torch.randn(2, 5, 16)
    out, weights = attention(x)
    adapted = layer(x)
    assert isinstance(adapted, tuple) and len(adapted) == 2
    torch.testing.assert_close(adapted[0], out + layer.adapter(x))
    assert adapted[1] is None or torch.equal(adapted[1], weights)
    # Keyword input, as some Hugging Face layers call their blocks.
    torch.testing.assert_close(layer(hidden_states=x)[0], adapted[0])


def test_sequential_on_tuple_output(attention):
    layer = randomize_up(
        SequentialAdapter(attention, BottleneckAdapter, {"bottleneck": 4})
    )
    x = torch.randn(2, 5, 16)
    out = attention(x)[0]
    torch.testing.assert_close(layer(x)[0], out + layer.adapter(out))


@pytest.mark.parametrize("wrapper", [ParallelAdapter, SequentialAdapter])
def test_tensor_output_and_size_change(wrapper):
    torch.manual_seed(0)
    target = torch.nn.Linear(8, 6)
    layer = randomize_up(wrapper(target, BottleneckAdapter, {"bottleneck": 3}))
    x = torch.randn(2, 4, 8)
    t = target(x)
    expected = t + layer.adapter(x if wrapper is ParallelAdapter else t)
    torch.testing.assert_close(layer(x), expected)


def test_adapted_model_freezes_target_and_passes_the_mask():
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(8, 8), torch.nn.GELU(), torch.nn.Linear(8, 8)
    )
    adapted = AdaptedModel(
        model,
        ParallelAdapter,
        target_layers=["2"],
        adapter_kwargs={"adapter": SoftMoA, "adapter_kwargs": {"num_experts": 2}},
    )
    trainable = {n for n, p in adapted.named_parameters() if p.requires_grad}
    assert trainable and all(".adapter." in n for n in trainable)
    seen = {}
    soft = adapted.adapted_model[2].adapter
    soft.register_forward_pre_hook(
        lambda module, args, kwargs: seen.update(kwargs), with_kwargs=True
    )
    mask = torch.tensor([[True, True, False]])
    with token_mask(mask):
        adapted(torch.randn(1, 3, 8))
    assert torch.equal(seen["mask"], mask)
    adapted(torch.randn(1, 3, 8))  # outside the block: no mask
    assert seen["mask"] is None
