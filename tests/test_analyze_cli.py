"""``python -m speechbrain_moe.analyze`` on a Soft-MoA run of the ESC-50 recipe
trained on synthetic data: routing and gradient analyses, JSON and plots."""

import json
import os
import subprocess
import sys

import pytest

from speechbrain_moe.analyze import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def trained_demo(tmp_path_factory):
    """A 2-epoch Soft-MoA run of the demo (mini ESC-50, tiny AST)."""
    out = tmp_path_factory.mktemp("demo")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "speechbrain_moe.demo",
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
    return [
        mode,
        "--hparams",
        os.path.join(REPO, "recipes", "ESC50", "PETL", "hparams", "ast.yaml"),
        "--out",
        str(folder),
        f"--data_folder={out / 'ESC-50'}",
        f"--backbone_source={out / 'tiny_ast'}",
        f"--output_folder={out / 'results'}",
        "--petl_method=soft_moa",
        "--n_classes=5",
        "--max_frames=100",
        *extra,
    ]


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
    args = _args(trained_demo, "ROUTING", tmp_path)
    args = [
        a
        if not a.startswith("--output_folder")
        else f"--output_folder={tmp_path / 'none'}"
        for a in args
    ]
    with pytest.raises(FileNotFoundError, match="Train first"):
        main(args)
