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
