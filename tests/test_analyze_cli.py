"""``python -m analysis`` on a Soft-MoA run of the ESC-50 recipe
trained on synthetic data: routing and gradient analyses, JSON and plots."""

import json
import os
import subprocess
import sys

import pytest

from analysis.cli import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """A 2-epoch Soft-MoA run of the demo (mini ESC-50, tiny AST)."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "demo_tiny.py"),
            "--output_folder",
            str(out),
            "--epochs",
            "2",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
        timeout=600,
    )
    return out


def _args(out, mode, folder, *extra):
    return [mode, "--experiment", str(out / "results"), "--out", str(folder), *extra]


def test_routing_analysis(trained_demo, tmp_path):
    main(_args(trained_demo, "ROUTING", tmp_path))
    summary = json.loads((tmp_path / "routing.json").read_text())
    assert len(summary["layers"]) == 2  # tiny AST: one Soft-MoA per layer
    for entry in summary["layers"].values():
        assert sum(entry["contribution"]) == pytest.approx(1.0, abs=1e-4)
        assert len(entry["contribution"]) == 14
        assert 0.0 <= entry["balance"]["entropy"] <= 1.0
    classes = next(iter(summary["by_group"].values()))
    assert len(classes) == 5
    for name in ("expert_contribution_per_layer", "expert_by_class", "load_balance"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000


def test_gradient_analysis(trained_demo, tmp_path):
    main(
        _args(
            trained_demo,
            "GRADIENTS",
            tmp_path,
            "--groups",
            "class_name",
            "--batches",
            "1",
        )
    )
    result = json.loads((tmp_path / "gradient_cosine.json").read_text())
    assert len(result["groups"]) == 5
    for i, row in enumerate(result["cosine"]):
        assert row[i] == pytest.approx(1.0, abs=1e-6)
        assert all(-1.0 - 1e-6 <= v <= 1.0 + 1e-6 for v in row)
    assert result["num_parameters"] > 0
    assert (tmp_path / "gradient_cosine.png").stat().st_size > 5000


def test_missing_checkpoint_is_explained(trained_demo, tmp_path):
    import shutil

    experiment = tmp_path / "untrained"
    shutil.copytree(trained_demo / "results", experiment)
    for folder in (experiment / "save").glob("CKPT+*"):
        shutil.rmtree(folder)
    with pytest.raises(FileNotFoundError, match="train the model"):
        main(["ROUTING", "--experiment", str(experiment), "--out", str(tmp_path)])
    with pytest.raises(FileNotFoundError, match="output_folder of a classification"):
        main(["ROUTING", "--experiment", str(tmp_path), "--out", str(tmp_path)])


def test_gradients_command_prints_named_matrix(trained_demo, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "analysis"]
        + _args(trained_demo, "GRADIENTS", tmp_path, "--batches", "1"),
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line.split() for line in proc.stdout.splitlines()]
    names = json.loads((tmp_path / "gradient_cosine.json").read_text())["groups"]
    start = next(i for i, r in enumerate(rows) if r == names)  # the header
    body = rows[start + 1 : start + 1 + len(names)]
    assert [r[0] for r in body] == names
    assert all(
        float(r[1 + i]) == pytest.approx(1.0, abs=1e-3) for i, r in enumerate(body)
    )
