"""Routing plumbing on an adapted tiny AST: collecting auxiliary losses,
padding masks reaching the adapters, and routing statistics on demand."""

import pytest
import torch

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.routing import (
    collect_aux_loss,
    pop_load_stats,
    record_routing,
    routed_modules,
    track_load,
)


def adapted_ast(folder, method, **settings):
    """The tiny AST adapted with ``method``."""
    torch.manual_seed(0)
    backbone = AST(folder, max_frames=100)
    return apply_method(backbone, method, settings)


def clips():
    """Two 1 s clips, the second 60 % real."""
    torch.manual_seed(1)
    return 0.1 * torch.randn(2, 16000), torch.tensor([1.0, 0.6])


def test_collect_aux_loss_sums_every_router_and_clears(tiny_ast_folder):
    backbone = adapted_ast(
        tiny_ast_folder,
        "moe_adapter",
        num_experts=4,
        top_k=2,
        hidden_size=4,
        placement="houlsby",
    )
    wavs, lens = clips()
    backbone(wavs, lens)
    routers = [m for _, m in routed_modules(backbone)]
    assert len(routers) == 4  # 2 layers x (attention + FFN)
    expected = sum(m.aux_loss for m in routers)
    total = collect_aux_loss(backbone)
    torch.testing.assert_close(total, expected)
    assert float(total.detach()) > 0
    total.backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in routers)
    assert float(collect_aux_loss(backbone)) == 0.0  # cleared


def test_collect_aux_loss_is_zero_without_routers(tiny_ast_folder):
    backbone = adapted_ast(tiny_ast_folder, "soft_moa", num_experts=3)
    backbone(*clips())
    loss = collect_aux_loss(backbone)
    assert loss.shape == () and float(loss) == 0.0
    assert float(collect_aux_loss(torch.nn.Linear(2, 2))) == 0.0


@pytest.mark.parametrize("method", ["soft_moa", "dense_moa"])
def test_recorded_weights_sum_to_one_per_token(tiny_ast_folder, method):
    backbone = adapted_ast(tiny_ast_folder, method, num_experts=3, bottleneck=2)
    wavs, lens = clips()
    seen = []
    with record_routing(backbone, lambda name, stats: seen.append((name, stats))):
        _, mask = backbone.encode(wavs, lens)
    assert [name for name, _ in seen] == [
        f"model.adapted_model.layers.{i}.attention.adapter" for i in range(2)
    ]
    for _, stats in seen:
        weights = stats["weights"]
        assert weights.shape == (*mask.shape, 3)
        assert torch.equal(
            stats["mask"], mask
        )  # the lobe's padding reached the adapter
        assert (weights >= 0).all()
        torch.testing.assert_close(weights.sum(-1)[mask], torch.ones(int(mask.sum())))
    # Off by default: nothing recorded outside the context.
    seen.clear()
    backbone.encode(wavs, lens)
    assert not seen


def test_sparse_recording_and_load_tracking(tiny_ast_folder):
    backbone = adapted_ast(
        tiny_ast_folder, "moe_adapter", num_experts=4, top_k=2, hidden_size=4
    )
    wavs, lens = clips()
    seen = []
    with record_routing(backbone, lambda name, stats: seen.append(stats)):
        _, mask = backbone.encode(wavs, lens)
    for stats in seen:
        real = stats["mask"]
        torch.testing.assert_close(
            stats["weights"].sum(-1)[real], torch.ones(int(real.sum()))
        )
        assert (stats["selected"].sum(-1)[real] == 2).all()
        assert (stats["selected"][~real] == 0).all()  # padding is not routed
    assert track_load(backbone) == 2
    backbone.encode(wavs, lens)
    stats = pop_load_stats(backbone)
    assert set(stats["layers"]) == {name for name, _ in routed_modules(backbone)}
    assert 0.0 < stats["mean"]["entropy"] <= 1.0
    assert pop_load_stats(backbone) == {}  # reset after reading
