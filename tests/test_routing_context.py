"""The explicit channel between routers and the Brain: what a router computes
reaches the code that opened a routing context, every call counts, nothing
is left on the routers for a later pass, the token mask is a context (not an
attribute set on other modules), and the load statistics' all-reduce runs on
every rank for every router."""

import warnings

import pytest
import speechbrain as sb
import torch
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.adapters import SoftMoA, SparseMoE
from speechbrain_moe.brain import PETLClassifierBrain
from speechbrain_moe.placement import ParallelAdapter
from speechbrain_moe.routing import (
    LoadCounter,
    current_token_mask,
    routed_modules,
    routing_context,
    token_mask,
)


def make_moe(**settings):
    """A small SparseMoE with a balance loss and a z-loss."""
    torch.manual_seed(0)
    return SparseMoE(6, num_experts=4, top_k=2, hidden_size=3, **settings)


def aux_alone(moe, x):
    """The auxiliary loss of one call of ``moe`` on ``x``."""
    with routing_context(moe) as routing:
        moe(x)
    (loss,) = [loss for _, loss in routing.aux_losses]
    return loss


def test_a_router_called_twice_reports_both_losses():
    moe = make_moe()
    x1, x2 = torch.randn(2, 5, 6), 3 * torch.randn(2, 4, 6)
    with routing_context(moe) as routing:
        moe(x1)
        moe(x2)
    assert [name for name, _ in routing.aux_losses] == ["", ""]
    expected = aux_alone(moe, x1) + aux_alone(moe, x2)
    torch.testing.assert_close(routing.aux_loss, expected)


def test_nothing_leaks_between_forward_passes():
    moe = make_moe()
    with routing_context(moe, track_load=True) as first:
        moe(torch.randn(2, 5, 6))
    assert first.aux_losses and first.loads
    with pytest.warns(UserWarning):  # a pass with no context reports to nobody
        moe(torch.randn(2, 5, 6))
    with routing_context(moe, track_load=True) as second:
        pass
    assert second.aux_losses == [] and second.loads == {}
    assert float(second.aux_loss) == 0.0
    with routing_context(moe, track_load=True) as third:
        moe(torch.randn(2, 5, 6))
    assert len(third.aux_losses) == 1  # its own pass only
    assert float(third.loads[""].sum()) == pytest.approx(10.0)  # 10 tokens
    assert len(first.aux_losses) == 1  # a closed context receives nothing more
    # The router keeps no per-pass state of its own.
    assert not hasattr(moe, "aux_loss") and not hasattr(moe, "routing_sink")


def test_nested_contexts_both_receive_every_report():
    moe = make_moe()
    with routing_context(moe, track_load=True) as outer:
        with routing_context(moe) as inner:
            moe(torch.randn(2, 5, 6))
        moe(torch.randn(2, 5, 6))
    assert len(inner.aux_losses) == 1 and len(outer.aux_losses) == 2
    assert inner.loads == {}  # only the contexts that asked count loads
    assert float(outer.loads[""].sum()) == pytest.approx(20.0)


def test_an_aux_loss_without_context_in_training_warns_it_is_dropped():
    moe = make_moe().train()
    with pytest.warns(UserWarning, match="routing_context"):
        moe(torch.randn(2, 5, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        moe.eval()(torch.randn(2, 5, 6))  # evaluation: nothing to warn about
        with routing_context(moe):
            moe.train()(torch.randn(2, 5, 6))


class HasTokenMaskMethod(torch.nn.Module):
    """A module (like the AST lobe) with a method named ``token_mask``."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(8, 8)

    def token_mask(self, lengths):
        """Its own method: lengths -> mask."""
        return torch.arange(4) < lengths[:, None]

    def forward(self, x):
        """Applies the layer."""
        return self.layer(x)


def test_a_module_with_a_token_mask_method_is_untouched():
    model = HasTokenMaskMethod()
    adapted = AdaptedModel(
        model,
        ParallelAdapter,
        target_layers=["layer"],
        adapter_kwargs={"adapter": SoftMoA, "adapter_kwargs": {"num_experts": 2}},
    )
    seen = []
    soft = adapted.adapted_model.layer.adapter
    soft.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["mask"]), with_kwargs=True
    )
    mask = model.token_mask(torch.tensor([4, 2]))
    with token_mask(mask):
        adapted(torch.randn(2, 4, 8))
        assert current_token_mask() is mask
    assert torch.equal(seen[0], mask)  # the adapter got the mask
    # Nothing was set on any module: the method is still the method.
    assert not any("token_mask" in vars(m) for m in adapted.modules())
    assert torch.equal(
        model.token_mask(torch.tensor([1])), torch.tensor([[1, 0, 0, 0]]).bool()
    )
    assert current_token_mask() is None
    adapted(torch.randn(2, 4, 8))
    assert seen[1] is None  # no mask leaks out of the block


def test_nested_token_masks_restore_the_outer_one():
    outer, inner = (
        torch.ones(1, 3, dtype=torch.bool),
        torch.zeros(1, 2, dtype=torch.bool),
    )
    with token_mask(outer):
        with token_mask(inner):
            assert current_token_mask() is inner
        assert current_token_mask() is outer


def test_load_counter_all_reduces_every_router_on_every_rank(monkeypatch):
    """Under DDP a rank that counted nothing (or only some routers) must
    still reduce one tensor per router, in the same order as the others."""
    model = torch.nn.Sequential(make_moe(), make_moe())
    counter = LoadCounter(model)
    with routing_context(model, track_load=True) as routing:
        model[0](torch.randn(1, 3, 6))  # only the first router ran
    counter.add(routing)
    reduced = []

    def fake_all_reduce(tensor):
        reduced.append(tensor.clone())
        tensor.mul_(2)  # as if a second rank had counted the same

    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "all_reduce", fake_all_reduce)
    stats = counter.pop()
    assert [t.shape for t in reduced] == [(4,), (4,)]
    assert (
        float(reduced[0].sum()) == pytest.approx(3.0) and float(reduced[1].sum()) == 0
    )
    assert set(stats["layers"]) == {"0"}
    reduced.clear()
    assert counter.pop() == {} and len(reduced) == 2  # nothing counted: still reduces


def test_brain_adds_the_aux_loss_of_its_own_forward():
    """The classification Brain takes the aux loss and loads from the routing
    context of the forward pass whose predictions it scores."""

    class Backbone(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.moe = make_moe(balance_loss_weight=0.5)

        def forward(self, wavs, wav_lens=None):
            return self.moe(wavs.reshape(wavs.shape[0], -1, 6)).mean(1)

    modules = {"backbone": Backbone(), "classifier": torch.nn.Linear(6, 3)}
    brain = PETLClassifierBrain(modules, run_opts={"device": "cpu"})
    batch = sb.dataio.batch.PaddedBatch(
        [
            {"id": "a", "sig": torch.randn(12), "label_encoded": torch.tensor([1])},
            {"id": "b", "sig": torch.randn(12), "label_encoded": torch.tensor([0])},
        ]
    )
    brain.on_stage_start(sb.Stage.TEST)
    log_probs, finite, routing = brain.compute_forward(batch, sb.Stage.TEST)
    assert len(routing.aux_losses) == 1 and float(routing.aux_loss.detach()) > 0
    loss = brain.compute_objectives((log_probs, finite, routing), batch, sb.Stage.TEST)
    nll = torch.nn.functional.nll_loss(log_probs, torch.tensor([1, 0]))
    torch.testing.assert_close(loss, nll + routing.aux_loss)
    assert len(brain.loads) == 1
    stats = brain.stage_stats(sb.Stage.TEST, 1)
    assert stats["aux_loss"] == pytest.approx(float(routing.aux_loss.detach()))
    assert 0 < stats["load_entropy"] <= 1
    assert [name for name, _ in routed_modules(brain.modules)] == ["backbone.moe"]


def test_load_counter_still_counts_after_the_model_is_wrapped():
    """SpeechBrain wraps the Brain's modules in DDP in ``on_fit_start``, after
    the Brain built its counter: the routers' names change (``module.``),
    the routers themselves do not."""

    class Wrapper(torch.nn.Module):  # stands in for DDP (`.module`)
        def __init__(self, module):
            super().__init__()
            self.module = module

        def forward(self, x):
            return self.module(x)

    modules = torch.nn.ModuleDict({"backbone": make_moe()})
    counter = LoadCounter(modules)
    modules["backbone"] = Wrapper(modules["backbone"])
    with routing_context(modules, track_load=True) as routing:
        modules["backbone"](torch.randn(1, 3, 6))
    assert list(routing.loads) == ["backbone.module"]
    counter.add(routing)
    assert set(counter.pop()["layers"]) == {"backbone"}
