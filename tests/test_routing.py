"""Routing plumbing on an adapted tiny AST: auxiliary losses through the
routing context, padding masks reaching the adapters, and routing statistics
on demand."""

import pytest
import torch

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.routing import (
    LoadCounter,
    record_routing,
    routed_modules,
    routing_context,
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


def test_routing_context_sums_every_router(tiny_ast_folder):
    backbone = adapted_ast(
        tiny_ast_folder,
        "moe_adapter",
        num_experts=4,
        top_k=2,
        hidden_size=4,
        placement="houlsby",
    )
    wavs, lens = clips()
    with routing_context(backbone) as routing:
        backbone(wavs, lens)
    routers = [m for _, m in routed_modules(backbone)]
    assert len(routers) == 4  # 2 layers x (attention + FFN)
    names = [name for name, _ in routing.aux_losses]
    assert names == [name for name, _ in routed_modules(backbone)]
    total = routing.aux_loss
    torch.testing.assert_close(total, sum(loss for _, loss in routing.aux_losses))
    assert float(total.detach()) > 0
    total.backward()
    assert all(m.router.weight.grad.abs().sum() > 0 for m in routers)
    with routing_context(backbone) as later:  # a new block starts empty
        pass
    assert later.aux_losses == [] and float(later.aux_loss) == 0.0


def test_aux_loss_is_zero_without_routers(tiny_ast_folder):
    backbone = adapted_ast(tiny_ast_folder, "soft_moa", num_experts=3)
    with routing_context(backbone) as routing:
        backbone(*clips())
    loss = routing.aux_loss
    assert loss.shape == () and float(loss) == 0.0
    with routing_context(torch.nn.Linear(2, 2)) as routing:
        pass
    assert float(routing.aux_loss) == 0.0


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
    counter = LoadCounter(backbone)
    assert len(counter) == 2
    with routing_context(backbone, track_load=True) as routing:
        backbone.encode(wavs, lens)
    counter.add(routing)
    stats = counter.pop()
    assert set(stats["layers"]) == {name for name, _ in routed_modules(backbone)}
    assert 0.0 < stats["mean"]["entropy"] <= 1.0
    assert counter.pop() == {}  # reset after reading
