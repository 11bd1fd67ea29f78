"""Unit tests of the bridge modules (speechbrain_moe.adapters.bridges) and of
the paper-shape parameter report (benchmarks.bridge_params)."""

import pytest
import torch

from benchmarks.bridge_params import bridge_parameter_report
from speechbrain_moe.adapters.bridges import (
    DenseProjector,
    MoEAdapterBridge,
    SoftMoABridge,
)

SMALL = {
    DenseProjector: dict(hidden_size=32),
    MoEAdapterBridge: dict(
        fused_size=32,
        num_experts=4,
        top_k=2,
        expert_hidden=16,
        num_shared_experts=1,
        aggregation_hidden=48,
    ),
    SoftMoABridge: dict(num_experts=3, bottleneck=8),
}


@pytest.mark.parametrize("cls", list(SMALL), ids=lambda c: c.__name__)
def test_bridge_shapes_and_padding(cls):
    torch.manual_seed(0)
    module = cls(40, 24, **SMALL[cls]).eval()
    x = torch.randn(2, 5, 40)
    mask = torch.tensor([[True] * 5, [True] * 3 + [False] * 2])
    out = module(x, mask)
    assert out.shape == (2, 5, 24)
    # padded frames change nothing for the valid ones
    alone = module(x[1:, :3], torch.ones(1, 3, dtype=torch.bool))
    assert torch.allclose(alone[0], out[1, :3], atol=1e-5)


def test_parameter_report(capsys):
    report = bridge_parameter_report()
    printed = capsys.readouterr().out
    assert "moe_adapter" in printed and "dense" in printed
    # each routed expert: 2560x1280 + 1280x2048 weights (+ biases)
    assert report["per_expert"] == 2560 * 1280 + 1280 + 1280 * 2048 + 2048
    # total - active = 4 idle experts, as in the paper (94.4M - 70.8M)
    gap = report["moe_total"] - report["moe_active"]
    assert abs(gap / 1e6 - (94.4 - 70.8)) < 0.1
    assert abs(report["dense_total"] - report["moe_total"]) / report["moe_total"] < 1e-3
    assert report["dense_active"] == report["dense_total"]
    # the paper's figures = experts + aggregation + one 2560x2048 linear
    c = report["components"]
    paper_total = c["routed_experts"] + c["aggregation"] + 2560 * 2048
    assert abs(paper_total / 1e6 - 94.4) < 0.1
    assert abs((paper_total - gap) / 1e6 - 70.8) < 0.1


@pytest.mark.parametrize("chunk, cached", [(None, None), (3000, None), (3000, 0)])
def test_recomputed_mlp_equals_sequential_in_value_and_gradient(
    chunk, cached, monkeypatch
):
    """The aggregation MLP recomputes its activation in backward (and, with a
    small chunk, runs its forward in row chunks; at inference, both layers on
    blocks of 256 rows, or with ``cached=0`` one block activated in chunks):
    same values, same gradients, same state-dict keys as nn.Sequential."""
    from speechbrain_moe.adapters.bridges import RecomputedMLP
    from speechbrain_moe.kernels import recomputed_mlp

    if chunk:  # 300 rows per chunk: 701 rows make three chunks
        monkeypatch.setattr(recomputed_mlp, "CHUNK", chunk)
    if cached is not None:
        monkeypatch.setattr(recomputed_mlp, "CACHED_WEIGHTS", cached)
    torch.manual_seed(0)
    mlp = RecomputedMLP(6, 10, 5, implementation="kernel")
    plain = torch.nn.Sequential(
        torch.nn.Linear(6, 10), torch.nn.SiLU(), torch.nn.Linear(10, 5)
    )
    plain.load_state_dict(mlp.state_dict())
    x = torch.randn(1, 701, 6, requires_grad=True)
    target = torch.randn(1, 701, 5)
    inputs_a, inputs_b = [x, *mlp.parameters()], [x, *plain.parameters()]
    y_a, y_b = mlp(x), plain(x)
    torch.testing.assert_close(y_a, y_b)
    with torch.no_grad():  # the inference path (and an empty input)
        torch.testing.assert_close(mlp(x), y_b.detach())
        assert mlp(x[:, :0]).shape == (1, 0, 5)
    grads_a = torch.autograd.grad((y_a * target).sum(), inputs_a)
    grads_b = torch.autograd.grad((y_b * target).sum(), inputs_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name", ["moe_adapter", "soft_moa"])
def test_tiny_bridges_start_at_the_llm_embedding_scale(name):
    """The LayerNorm-ended bridges of hparams/bridges_tiny feed SmolLM2-135M
    (token-embedding std 0.136): at initialisation their outputs must have
    that RMS, not LayerNorm's 1.0 (7x louder than the text around them; the
    gain moved by about lr per step, so it stayed near 1 through training)."""
    import os

    from speechbrain_moe.lobes.speech_llm import load_bridge

    path = os.path.join(
        os.path.dirname(__file__),
        "..",
        "recipes",
        "LibriSpeech",
        "LLM_bridge",
        "hparams",
        "bridges_tiny",
        f"{name}.yaml",
    )
    torch.manual_seed(0)
    bridge = load_bridge(path)(1536, 576).eval()
    with torch.no_grad():
        out = bridge(torch.randn(2, 6, 1536), torch.ones(2, 6, dtype=torch.bool))
    rms = out.pow(2).mean().sqrt().item()
    assert abs(rms - 0.136) < 0.01, rms


@pytest.mark.parametrize("cls", [MoEAdapterBridge, SoftMoABridge])
def test_output_scale_sets_the_initial_output_rms(cls):
    torch.manual_seed(0)
    module = cls(40, 24, output_scale=0.25, **SMALL[cls]).eval()
    with torch.no_grad():
        out = module(torch.randn(3, 5, 40), torch.ones(3, 5, dtype=torch.bool))
    assert abs(out.pow(2).mean().sqrt().item() - 0.25) < 0.02
    default = cls(40, 24, **SMALL[cls])
    assert torch.equal(default.norm.weight, torch.ones(24))
