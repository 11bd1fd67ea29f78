"""Smoke tests of the benchmark tool: every suite runs with ``--quick`` and
writes a report that follows the JSON schema (timings are not checked).

Authors
 * speechbrain-moe contributors 2026
"""

import json
import os
import platform
import subprocess
import sys

import pytest
import torch

from benchmarks import validate_report
from benchmarks.__main__ import main
from benchmarks.bridge import (
    bridge_cases,
    bridge_macs,
    build_bridge_modules,
    scaled_bridge_shape,
)
from benchmarks.bridge_params import bridge_parameter_report
from benchmarks.make_table import END, START, render
from benchmarks.naive import PEERS
from benchmarks.report import format_table, implementation_table
from speechbrain_moe.adapters import DenseMoA, SoftMoA

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
    ran = {r["config"].get("implementation"): set() for r in report["results"]}
    for r in report["results"]:
        ran[r["config"].get("implementation")].add(r["method"])
    rows = {
        r["method"]: r
        for r in report["results"]
        if r["config"].get("implementation") in (None, "auto")
    }
    naive = {
        r["method"]: r
        for r in report["results"]
        if r["config"].get("implementation") == "naive_loop"
    }
    plain = {
        r["method"]: r
        for r in report["results"]
        if r["config"].get("implementation") == "plain"
    }
    assert set(naive) == {"dense_moa", "soft_moa"}
    # Every mixture ran twice in the same rounds: auto (the kernels on the
    # CPU, said in the JSON) and plain, with the plain path's own ratios.
    assert {"dense_moa", "soft_moa", "moe_adapter"} <= ran["auto"] == set(plain)
    assert report["config"]["implementations"]["auto"] == "kernel"
    for method, row in plain.items():
        assert row["implementation"] == "plain"
        assert rows[method]["implementation"] == "kernel"
        assert row["settings"]["implementation"] == "plain"
        assert row["ratio_to_auto"] > 0 and row["ratio_to_adapter"] > 0
        assert row["trainable_params"] == rows[method]["trainable_params"]
        assert len(row["step_ms_all"]) == len(rows[method]["step_ms_all"])
    assert rows["adapter"]["implementation"] is None
    for method, row in naive.items():
        assert row["config"]["implementation"] == "naive_loop"
        assert row["ratio_to_ours"] > 0 and len(row["ratio_to_ours_iqr"]) == 2
        assert row["trainable_params"] == rows[method]["trainable_params"]
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
    # A plain row's N=2 reference is the plain N=2 row (not the kernel one).
    by_key = {
        (r["method"], r["config"]["num_experts"], r["implementation"]): r for r in sweep
    }
    assert {impl for _, _, impl in by_key} == {"kernel", "plain"}
    for (method, n, impl), row in by_key.items():
        if n == 2:
            assert row["ratio_to_n2"] == 1.0
        else:
            ref = by_key[(method, 2, impl)]["step_ms_all"]
            ratios = sorted(t / r for t, r in zip(row["step_ms_all"], ref))
            assert ratios[0] <= row["ratio_to_n2"] <= ratios[-1]
    frames = [r for r in report["results"] if r["config"]["sweep"] == "frames"]
    assert {r["method"] for r in frames} == {"adapter", "soft_moa"}
    assert {r["implementation"] for r in frames} == {None, "kernel", "plain"}
    assert len({r["config"]["frames"] for r in frames}) > 1
    assert plot.stat().st_size > 0


def test_bridge_quick_with_memory(tmp_path):
    report = _run(tmp_path, "bridge")
    groups = {}
    for row in report["results"]:
        name = row["method"] + (" (plain)" if row["implementation"] == "plain" else "")
        groups.setdefault(row["group"], {})[name] = row
    assert {g.split("/")[1] for g in groups} == {"train", "train_input_grad", "forward"}
    for rows in groups.values():
        assert set(rows) == {"moe_adapter", "moe_adapter (plain)", "dense"}
        plain = rows["moe_adapter (plain)"]
        assert rows["moe_adapter"]["implementation"] == "kernel"
        assert plain["ratio_to_auto"] > 0 and plain["ratio_to_dense"] > 0
        assert plain["total_params"] == rows["moe_adapter"]["total_params"]
        moe, dense = rows["moe_adapter"], rows["dense"]
        assert moe["active_params"] < moe["total_params"]
        assert moe["active_ratio"] < 1 and moe["macs_ratio"] < 1
        assert dense["active_params"] == dense["total_params"]
        assert (
            abs(moe["total_params"] - dense["total_params"]) / dense["total_params"]
            < 0.01
        )
        assert dense["ratio_to_dense"] == 1.0
        for row in rows.values():  # measured in a (shared) fresh subprocess
            assert row["peak_mem_mb"] > 0 and row["mem_ratio_to_dense"] > 0
    assert "| moe_adapter | kernel |" in format_table(report, markdown=True)
    assert "| moe_adapter (plain) | plain |" in format_table(report, markdown=True)
    side_by_side = implementation_table(report, markdown=True).splitlines()
    assert len(side_by_side) == 2 + len(groups)
    assert side_by_side[2].startswith("| quick/train moe_adapter | kernel |")
    assert report["provenance"]["date"] and "--quick" in report["provenance"]["command"]


def test_bridge_quick_under_autocast(tmp_path):
    """``--autocast bf16``: forward passes under ``torch.autocast``, in the
    timed steps and in the memory worker, recorded in the report."""
    from benchmarks.report import describe
    from benchmarks.targets import run_label

    report = _run(tmp_path, "bridge", "--autocast", "bf16")
    assert report["config"]["autocast"] == "bf16"
    assert "torch.autocast bf16" in describe(report)
    assert run_label(report) == "bf16"
    assert all(row["peak_mem_mb"] > 0 for row in report["results"])


def test_dispatch_check_compares_grouped_with_dense(tmp_path, monkeypatch):
    """``benchmarks.dispatch_check``: grouped and dense dispatch agree in
    float32 and under bf16 autocast, every parameter gets a gradient, and a
    difference above the tolerance fails the check (exit status 1)."""
    from benchmarks import dispatch_check

    for autocast in (None, "bf16"):
        result = dispatch_check.compare_dispatch("quick", autocast=autocast, time=20)
        assert result["ok"] and result["missing_grads"] == []
        assert {"output", "input grad", "grad experts.up_weight"} <= set(
            result["differences"]
        )
    out = tmp_path / "dispatch.json"
    assert dispatch_check.main(["--shapes", "quick", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["results"]["quick"]["ok"] is True
    monkeypatch.setitem(dispatch_check.TOLERANCE, None, 0.0)
    assert dispatch_check.main(["--shapes", "quick"]) == 1


def test_memory_worker_builds_only_its_own_bridge():
    """Holding both bridges at build time would set the forward step's peak."""
    config = bridge_cases(quick=True)[0]["config"]
    both = build_bridge_modules(config)
    for method, other in (("moe_adapter", "dense"), ("dense", "moe_adapter")):
        parts = build_bridge_modules(config, only=method)
        assert parts[other] is None and parts[method] is not None
        assert parts["dense_hidden"] == both["dense_hidden"]
        for mine, full in zip(parts[method].parameters(), both[method].parameters()):
            assert torch.equal(mine, full)  # same seed, same weights


def test_timing_allocator_keeps_freed_memory():
    """Full runs time steady-state steps: glibc told to keep freed memory."""
    code = "from benchmarks.core import keep_freed_memory; print(keep_freed_memory())"
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True
    )
    assert out.returncode == 0, out.stderr
    if platform.libc_ver()[0] == "glibc":
        assert out.stdout.startswith("glibc mallopt: mmap off, no trim")
    for suite in ("table1", "scaling", "bridge"):
        with open(os.path.join(ROOT, "benchmarks", "results", f"{suite}.json")) as f:
            assert json.load(f)["config"]["allocator"].startswith("glibc mallopt")


@pytest.mark.parametrize("cls", [DenseMoA, SoftMoA])
def test_naive_peers_compute_the_same_function(cls):
    """The naive-loop peer built from our module gives the same values and
    gradients: the table1 comparison is between two implementations of one
    function."""
    torch.manual_seed(0)
    ours = cls(8, num_experts=3, bottleneck=2)
    with torch.no_grad():
        for param in ours.parameters():
            param.normal_(0.0, 0.5)
    peer = PEERS[cls](ours)
    x = torch.randn(2, 5, 8, requires_grad=True)
    target = torch.randn(2, 5, 8)
    y_ours, y_peer = ours(x), peer(x)
    torch.testing.assert_close(y_peer, y_ours, atol=1e-5, rtol=1e-4)
    (g_ours,) = torch.autograd.grad((y_ours * target).sum(), x)
    (g_peer,) = torch.autograd.grad((y_peer * target).sum(), x)
    torch.testing.assert_close(g_peer, g_ours, atol=1e-5, rtol=1e-4)
    with pytest.raises(NotImplementedError, match="unpadded"):
        peer(x, torch.tensor([[True] * 5, [True] * 3 + [False] * 2]))


def test_bridge_mac_limits_at_the_paper_shape():
    """Arithmetic limits of moe_adapter / dense at the paper's shape: 0.77 for
    inference and with an input gradient, 0.95 with a frozen encoder (the
    dense projector's big first layer needs no input gradient then)."""
    hidden = bridge_parameter_report(verbose=False)["dense_hidden"]
    macs = bridge_macs(scaled_bridge_shape(1), hidden)
    ratio = {m: macs["moe_adapter"][m] / macs["dense"][m] for m in macs["dense"]}
    assert ratio["forward"] == pytest.approx(0.77, abs=0.01)
    assert ratio["train_input_grad"] == pytest.approx(0.77, abs=0.01)
    assert ratio["train"] == pytest.approx(0.953, abs=0.01)


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


@pytest.mark.parametrize("markdown", ["README.md", "benchmarks/README.md"])
def test_committed_tables_are_rendered_from_committed_results(markdown):
    """The README tables are exactly what ``make_table`` makes of the JSON."""
    results = os.path.join(ROOT, "benchmarks", "results")
    suites = set()
    for name in os.listdir(results):
        if name.endswith(".json"):
            if name.startswith("bridge_real"):  # tests/test_bridge_real_table.py
                continue
            with open(os.path.join(results, name)) as handle:
                report = json.load(handle)
            if report.get("suite") in ("accuracy", "multitask"):  # their own tests
                continue
            if "suite" not in report:  # a diagnosis record (prompt_diagnosis.json)
                continue
            if report["suite"] == "layers":  # benchmarks.layers: cited, not tabled
                assert {r["part"] for r in report["results"]} == {"soft_moa", "bridge"}
            elif report["suite"] == "dispatch_check":  # cited, not tabled
                assert all(r["ok"] for r in report["results"].values()), name
            else:
                assert validate_report(report) == [], name
            suites.add(report["suite"])
    expected = {"table1", "scaling", "bridge", "layers"}
    assert expected <= suites <= expected | {"dispatch_check"}
    with open(os.path.join(ROOT, markdown)) as handle:
        block = handle.read().split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == render(results).strip(), (
        f"{markdown} is stale: run python -m benchmarks.make_table --update {markdown}"
    )


def test_unknown_suite_is_rejected():
    with pytest.raises(SystemExit):
        main(["--suite", "tabel1"])


def test_layer_costs_time_every_stage_and_count_its_work():
    """``benchmarks.layers``: both Soft-MoA lengths and every bridge stage are
    timed; the stages' multiply-adds add up to the whole MoE bridge's."""
    from benchmarks.layers import bridge_rows, format_rows, soft_moa_rows

    soft = soft_moa_rows(1, tokens=(12, 20), batch=2, width=32, warmup=0)
    assert [(r["tokens"], r["method"]) for r in soft] == [
        (12, "adapter"),
        (12, "soft_moa"),
        (20, "adapter"),
        (20, "soft_moa"),
    ]
    stages = {r["stage"]: r for r in bridge_rows(1, "small", warmup=0)}
    floor_parts = ("fuse", "sparse products", "aggregate", "norm")
    alone = ["dense", *(f"moe.{n}" for n in floor_parts), "moe floor"]
    assert set(stages) == {
        "dense",
        "moe.fuse",
        "moe.sparse",
        "moe.aggregate",
        "moe.norm",
        "moe (whole)",
        "moe.sparse products",
        "moe floor",
        *(f"{name} (back-to-back)" for name in alone),
    }
    parts = sum(stages[f"moe.{n}"]["gmac"] for n in ("fuse", "sparse", "aggregate"))
    assert abs(parts - stages["moe (whole)"]["gmac"]) < 1e-9
    # The floor swaps the sparse layer for its expert products (no router),
    # and its time is the sum of its stages' times.
    products = stages["moe.sparse products"]["gmac"]
    assert 0 < stages["moe.sparse"]["gmac"] - products < 0.05 * products
    floor = parts - stages["moe.sparse"]["gmac"] + products
    assert abs(stages["moe floor"]["gmac"] - floor) < 1e-9
    for suffix in ("", " (back-to-back)"):
        floor_ms = sum(stages[f"moe.{n}{suffix}"]["ms"] for n in floor_parts)
        assert abs(stages[f"moe floor{suffix}"]["ms"] - floor_ms) < 1e-9  # one round
        assert stages[f"moe floor{suffix}"]["gmac"] == stages["moe floor"]["gmac"]
    assert stages["dense (back-to-back)"]["ratio_to_dense"] == 1.0
    assert all(r["ms"] > 0 for r in soft + list(stages.values()))
    assert "GMAC/s" in format_rows(soft + list(stages.values()))


def test_profile_step_compares_two_cases(capsys):
    """``benchmarks.profile_step`` profiles both cases of a group and names
    the operators only one of them runs."""
    from benchmarks.profile_step import main as profile_main

    profile_main(["--suite", "bridge", "--group", "small/forward", "--rows", "3"])
    out = capsys.readouterr().out
    assert out.startswith("self CPU ms of one step: moe_adapter")
    assert "aten::" in out and len(out.splitlines()) == 7


def test_rounds_per_group_and_estimate(tmp_path, capsys):
    """``--rounds GROUP=N`` sets one group's rounds (recorded in the JSON);
    ``--estimate`` costs a run from an earlier report without running it."""
    report = _run(tmp_path, "bridge", "--no-memory", "--repeats", "3")
    assert report["config"]["repeats"] == 3
    assert all(len(r["step_ms_all"]) == 3 for r in report["results"])
    from benchmarks.runner import estimate_seconds, group_repeats
    from benchmarks.suites import bridge_suite_cases

    cases = bridge_suite_cases()
    plan = group_repeats(cases, rounds={"paper/train": 4})
    assert plan["paper/train"] == 4 and plan["small/train"] == 15
    with pytest.raises(ValueError, match="unknown group 'papr/train'"):
        group_repeats(cases, rounds={"papr/train": 4})
    committed = os.path.join(ROOT, "benchmarks", "results", "bridge.json")
    with open(committed) as handle:
        previous = json.load(handle)
    few = estimate_seconds("bridge", previous, rounds={"paper/train": 3})
    many = estimate_seconds("bridge", previous, rounds={"paper/train": 30})
    assert many["groups"]["paper/train"][:2] == [3, 30]
    assert many["total_s"] > few["total_s"] > few["memory_s"] > 0
    assert main(["--suite", "bridge", "--estimate", committed, "--repeats", "5"]) == 0
    out = capsys.readouterr().out
    assert "paper/train: 3 cases, 5 rounds" in out and "total (with margin)" in out


def test_targets_say_the_verdict_against_the_replaced_report():
    """Each target is compared with the report it replaces: a ratio more than
    3 % higher than before fails the verdict, one within 3 % is kept; the
    plain peers are listed beside the targets, without a limit."""
    from benchmarks.targets import baseline_record, target_checks, targets_table

    def report(soft, dense, plain):
        rows = []
        for method, ratio, impl in (
            ("adapter", 1.0, None),
            ("soft_moa", soft, "auto"),
            ("soft_moa", plain, "plain"),
            ("dense_moa", dense, "auto"),
        ):
            cfg = {"frames": 100} if impl is None else {"implementation": impl}
            rows.append(
                {
                    "method": method,
                    "config": cfg,
                    "ratio_to_adapter": ratio,
                    "mem_ratio_to_adapter": 1.0,
                    "ratio_to_auto": plain / soft if impl == "plain" else None,
                }
            )
        return {"suite": "table1", "device": "cpu", "config": {}, "results": rows}

    old = report(soft=1.00, dense=1.00, plain=1.20)
    new = report(soft=1.02, dense=1.05, plain=1.30)
    new["baseline"] = baseline_record(old)
    checks = {c["what"]: c for c in target_checks(new)}
    assert checks["table1 soft_moa (plain) / adapter time"]["met"] is None
    assert checks["table1 soft_moa / adapter time"]["met"] is True
    lines = {
        line.split(" | ")[0][2:]: line for line in targets_table([new]).splitlines()
    }
    assert lines["table1 soft_moa / adapter time"].endswith("| 1.000 | +2.0 % | kept |")
    assert lines["table1 dense_moa / adapter time"].endswith(
        "| 1.000 | +5.0 % | **worse by more than 3 %** |"
    )
    assert lines["table1 soft_moa (plain) / adapter time"].endswith("| +8.3 % | - |")
    # Without a baseline the verdict columns stay empty.
    assert targets_table([old]).splitlines()[2].endswith("| - | - | - |")


def test_plain_peer_runs_the_plain_path(monkeypatch):
    """The plain peer of a case is built with implementation plain: the
    Soft-MoA modules of its model ask for the plain path (so the JSON's
    label is what ran), those of the auto case for auto."""
    import speechbrain_moe.adapters.soft_moa as soft_moa_module
    from benchmarks.suites import AST_TINY, build_step, save_random_ast, table1_cases
    from speechbrain_moe.kernels import use_kernel

    folder = save_random_ast(AST_TINY)
    specs = [
        s
        for s in table1_cases(quick=True)
        if s["method"] == "soft_moa" and not s.get("naive")
    ]
    assert [s["config"]["implementation"] for s in specs] == ["auto", "plain"]
    for spec in specs:
        seen = []

        def spy(implementation, tensor, seen=seen):
            seen.append(implementation)
            return use_kernel(implementation, tensor)

        monkeypatch.setattr(soft_moa_module, "use_kernel", spy)
        step, _ = build_step(spec, folder)
        step()
        assert seen and set(seen) == {spec["config"]["implementation"]}
