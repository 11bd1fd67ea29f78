"""Analysis tools: utilisation sums, forced routing, gradient cosine, plots."""

import json

import pytest
import torch

from analysis.gradients import cosine_matrix, mean_group_gradients
from analysis.plots import (
    plot_balance,
    plot_contribution_per_layer,
    plot_expert_by_class,
    plot_gradient_cosine,
)
from analysis.utilisation import UtilisationAccumulator
from speechbrain_moe.adapters import DenseMoA, SoftMoA, SparseMoE
from speechbrain_moe.routing import record_routing


def _run(model, batches, groups):
    acc = UtilisationAccumulator()
    with record_routing(model, acc), torch.no_grad():
        for x, mask, labels in zip(batches[0], batches[1], groups):
            acc.set_groups(labels)
            for layer in model:
                x = x + layer(x, mask)
    return acc.summary()


@pytest.mark.parametrize("cls", [SoftMoA, DenseMoA])
def test_contribution_sums_to_one(cls):
    torch.manual_seed(0)
    model = torch.nn.ModuleList([cls(16, num_experts=5), cls(16, num_experts=5)])
    x = [torch.randn(3, 7, 16), torch.randn(2, 4, 16)]
    masks = [
        torch.ones(3, 7, dtype=torch.bool),
        torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]]).bool(),
    ]
    summary = _run(model, (x, masks), [["a", "b", "a"], ["b", "b"]])
    assert len(summary["layers"]) == 2
    for entry in summary["layers"].values():
        assert sum(entry["contribution"]) == pytest.approx(1.0, abs=1e-5)
        assert entry["tokens"] == 21 + 5
    for groups in summary["by_group"].values():
        for row in groups.values():
            assert sum(row) == pytest.approx(1.0, abs=1e-5)


def test_sparse_selection_counts_equal_k_times_tokens():
    torch.manual_seed(0)
    moe = SparseMoE(16, num_experts=6, top_k=3, hidden_size=8)
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    acc = UtilisationAccumulator()
    with record_routing(moe, acc):
        moe(torch.randn(2, 5, 16), mask)
    entry = acc.summary()["layers"][""]
    assert entry["selections"] == 3 * 6
    assert sum(entry["selection_frequency"]) == pytest.approx(3.0)
    assert sum(entry["contribution"]) == pytest.approx(1.0, abs=1e-5)


def test_forced_routing_shows_in_heatmap(tmp_path):
    """Class A tokens point along +e0, class B along +e1; the router maps
    e0 -> expert 0 and e1 -> expert 1, so the heatmap must be the identity."""
    moa = DenseMoA(4, num_experts=2)
    with torch.no_grad():
        moa.router.weight.zero_()
        moa.router.bias.zero_()
        moa.router.weight[0, 0] = 100.0
        moa.router.weight[1, 1] = 100.0
    a = torch.zeros(2, 3, 4)
    a[..., 0] = 1.0
    b = torch.zeros(2, 3, 4)
    b[..., 1] = 1.0
    acc = UtilisationAccumulator()
    with record_routing(moa, acc), torch.no_grad():
        acc.set_groups(["A", "A", "B", "B"])
        moa(torch.cat([a, b]))
    summary = acc.summary()
    rows = summary["by_group"][""]
    assert rows["A"] == pytest.approx([1.0, 0.0], abs=1e-6)
    assert rows["B"] == pytest.approx([0.0, 1.0], abs=1e-6)
    png = plot_expert_by_class(summary, tmp_path / "by_class.png", method="dense_moa")
    assert png.exists() and png.stat().st_size > 1000
    assert plot_contribution_per_layer(summary, tmp_path / "layers.png").exists()
    assert plot_balance(summary, tmp_path / "balance.png").exists()
    json.dumps(summary)


def test_gradient_cosine_self_and_opposite(tmp_path):
    torch.manual_seed(0)
    layer = torch.nn.Linear(4, 1)
    data = torch.randn(8, 4)

    def loss_fn(batch):
        x, sign = batch
        return sign * layer(x).sum()

    grads = mean_group_gradients(
        list(layer.parameters()),
        {
            "speech": [(data, 1.0)],
            "speech_again": [(data, 1.0)],
            "sound": [(data, -1.0)],
        },
        loss_fn,
    )
    names, matrix = cosine_matrix(grads)
    idx = {n: i for i, n in enumerate(names)}
    assert matrix[idx["speech"]][idx["speech"]] == pytest.approx(1.0)
    assert matrix[idx["speech"]][idx["speech_again"]] == pytest.approx(1.0)
    assert matrix[idx["speech"]][idx["sound"]] < 0
    assert plot_gradient_cosine(names, matrix, tmp_path / "cos.png").exists()


def test_gradient_requires_trainable_parameters():
    frozen = torch.nn.Linear(2, 1).requires_grad_(False)
    with pytest.raises(ValueError, match="trainable"):
        mean_group_gradients(list(frozen.parameters()), {"a": [1]}, lambda b: b)
