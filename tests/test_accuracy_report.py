"""The real-weights accuracy report (``benchmarks/accuracy.py``): its summary
arithmetic, its verdicts, and the README tables generated from the committed
JSON (no training here)."""

import json
import os

import pytest

from benchmarks.accuracy import END, RESULTS, START, render, summarise, verdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _report(accuracies):
    runs = [
        {"task": "t", "method": method, "seed": seed, "accuracy": acc,
         "trainable_no_head": 100, "step_ms_median": 10.0}
        for method, values in accuracies.items()
        for seed, acc in enumerate(values, 1)
    ]  # fmt: skip
    timing = {"t": {m: {"median_ms": 10.0 * (i + 1)} for i, m in enumerate(accuracies)}}
    return {"runs": runs, "step_times": timing}


def test_summary_is_mean_and_sample_std_per_method():
    summary = summarise(_report({"adapter": [0.6, 0.8, 1.0], "soft_moa": [0.5] * 3}))
    adapter = summary["t"]["adapter"]
    assert adapter["accuracy_mean"] == pytest.approx(0.8)
    assert adapter["accuracy_std"] == pytest.approx(0.2)
    assert adapter["accuracies"] == [0.6, 0.8, 1.0]
    assert summary["t"]["soft_moa"]["accuracy_std"] == 0.0
    assert summary["t"]["soft_moa"]["step_ratio"] == 2.0  # 20 ms / 10 ms


def test_verdict_says_when_a_mixture_does_not_beat_the_adapter():
    rows = summarise(
        _report(
            {
                "adapter": [0.8] * 3,
                "adapter_lr2e-3": [0.6] * 3,  # the better adapter row is the reference
                "soft_moa": [0.9] * 3,
                "dense_moa": [0.7] * 3,
                "moe_adapter": [0.7, 0.85, 1.0],  # +0.05, spread 0.15
            }
        )
    )["t"]
    text = verdict(rows)
    assert "Soft-MoA (14x1): 0.900 vs adapter (r=24) 0.800 (+0.100): beats" in text
    assert (
        "Dense-MoA (14x1): 0.700 vs adapter (r=24) 0.800 (-0.100): does **not** beat"
        in text
    )
    assert (
        "MoE-Adapter (8, top-2): 0.850 vs adapter (r=24) 0.800 (+0.050): ahead by less than the seeds' spread (0.150)"
        in text
    )


@pytest.mark.parametrize("markdown", ["README.md", "benchmarks/README.md"])
def test_committed_accuracy_tables_match_the_json(markdown):
    """The README accuracy blocks are what render() makes of the JSON."""
    with open(os.path.join(ROOT, markdown)) as handle:
        block = handle.read().split(START, 1)[1].split(END, 1)[0]
    if not os.path.isfile(RESULTS):
        assert block.strip() == "_No results yet._"
        return
    with open(RESULTS) as handle:
        report = json.load(handle)
    assert report["suite"] == "accuracy"
    assert {"machine", "provenance", "notes", "runs", "tasks"} <= set(report)
    assert block.strip() == render(report).strip(), (
        f"{markdown} is stale: run python -m benchmarks.accuracy --update {markdown}"
    )
