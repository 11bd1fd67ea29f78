"""Smoke tests of the benchmark tool: every suite runs with ``--quick`` and
writes a report that follows the JSON schema (timings are not checked).

Authors
 * speechbrain-moe contributors 2026
"""

import json
import os
import subprocess
import sys

import pytest

from benchmarks import validate_report
from benchmarks.__main__ import main
from benchmarks.report import markdown_table

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(tmp_path, suite, *extra):
    out = tmp_path / f"{suite}.json"
    assert main(["--suite", suite, "--json", str(out), "--quick", *extra]) == 0
    report = json.loads(out.read_text())
    assert validate_report(report) == []
    assert report["suite"] == suite and report["device"] == "cpu"
    assert report["config"]["quick"] is True
    return report


def test_table1_quick(tmp_path):
    plot = tmp_path / "table1.png"
    report = _run(tmp_path, "table1", "--no-memory", "--plot", str(plot))
    rows = {r["method"]: r for r in report["results"]}
    for method in (
        "adapter",
        "soft_moa",
        "dense_moa",
        "moe_adapter",
        "linear",
        "full_ft",
    ):
        assert method in rows
    assert rows["adapter"]["ratio_to_adapter"] == 1.0
    assert rows["soft_moa"]["config"]["num_experts"] == 14
    assert rows["soft_moa"]["config"]["bottleneck"] == 1
    assert rows["linear"]["trainable_params_no_head"] == 0
    assert rows["full_ft"]["trainable_params"] > rows["adapter"]["trainable_params"]
    assert plot.stat().st_size > 0


def test_scaling_quick(tmp_path):
    plot = tmp_path / "scaling.png"
    report = _run(tmp_path, "scaling", "--no-memory", "--plot", str(plot))
    sweep = [r for r in report["results"] if r["config"]["sweep"] == "experts"]
    assert {r["method"] for r in sweep} == {"soft_moa", "dense_moa"}
    assert all(r["ratio_to_n2"] is not None for r in sweep)
    frames = [r for r in report["results"] if r["config"]["sweep"] == "frames"]
    assert {r["method"] for r in frames} == {"adapter", "soft_moa"}
    assert len({r["config"]["frames"] for r in frames}) > 1
    assert plot.stat().st_size > 0


def test_bridge_quick_with_memory(tmp_path):
    report = _run(tmp_path, "bridge")
    rows = {r["method"]: r for r in report["results"]}
    assert set(rows) == {"moe_adapter", "dense"}
    moe, dense = rows["moe_adapter"], rows["dense"]
    assert moe["active_params"] < moe["total_params"]
    assert dense["active_params"] == dense["total_params"]
    assert (
        abs(moe["total_params"] - dense["total_params"]) / dense["total_params"] < 0.01
    )
    assert dense["ratio_to_dense"] == 1.0
    for row in rows.values():  # measured in a fresh subprocess
        assert row["peak_mem_mb"] > 0 and row["mem_ratio_to_dense"] > 0
    assert "| moe_adapter |" in markdown_table(report)


def test_make_table_renders_results(tmp_path):
    row = {
        "method": "moe_adapter",
        "config": {},
        "total_params": 10,
        "active_params": 6,
    }
    row.update(step_ms_median=1.0, step_ms_min=1.0, peak_mem_mb=None)
    row.update(trainable_params=10, trainable_params_no_head=10, ratio_to_adapter=None)
    report = {"suite": "bridge", "device": "cpu", "torch": "x", "config": {}}
    report["results"] = [row]
    assert validate_report(report) == []
    (tmp_path / "bridge.json").write_text(json.dumps(report))
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- bench:start -->\nold\n<!-- bench:end -->\nend\n")
    cmd = [sys.executable, "-m", "benchmarks.make_table", "--results", str(tmp_path)]
    subprocess.run(cmd + ["--update", str(readme)], check=True, cwd=ROOT)
    text = readme.read_text()
    assert "old" not in text and "| moe_adapter |" in text and text.endswith("end\n")


def test_unknown_suite_is_rejected():
    with pytest.raises(SystemExit):
        main(["--suite", "tabel1"])
