"""End-to-end runs of the classification recipes on synthetic data.

Every recipe runs every representative method in ``--debug`` mode (one
subprocess per recipe, methods run one after the other through the script's
``__main__``), then one recipe trains Soft-MoA for real and must beat chance
by far.
"""

import os
import re
import subprocess

import pytest
from conftest import PYTHON, REPO

RECIPES = {
    "ESC50": "esc50",
    "UrbanSound8k": "us8k",
    "Google-speech-commands": "gsc",
    "fluent-speech-commands": "fsc",
}
METHODS = ["linear", "adapter", "dense_moa", "soft_moa", "moe_adapter", "lora"]
TINY = [
    "--max_frames=100",
    "--batch_size=2",
    "--test_batch_size=4",
    "--device=cpu",
    "--noprogressbar",
]
DEBUG = ["--debug", "--debug_batches=1", "--debug_epochs=1"]


def run_recipe(recipe, out_dir, methods, args, hparams="ast.yaml", timeout=900):
    """Runs ``methods`` of ``recipe`` in one subprocess; returns its output."""
    recipe_dir = os.path.join(REPO, "recipes", recipe, "PETL")
    cmd = [
        PYTHON,
        os.path.join(REPO, "tests", "recipe_runner.py"),
        recipe_dir,
        os.path.join(recipe_dir, "hparams", hparams),
        str(out_dir),
        ",".join(methods),
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, cwd=str(out_dir)
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def accuracies(train_log, stage):
    """All ``<stage> accuracy`` values of a train log."""
    with open(train_log) as fin:
        return [
            float(v) for v in re.findall(rf"{stage} accuracy: ([0-9.e+-]+)", fin.read())
        ]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPES))
def test_recipe_debug_all_methods(recipe, tmp_path, tiny_ast_dir, synthetic_dataset):
    data = synthetic_dataset(RECIPES[recipe])
    args = [
        f"--data_folder={data}",
        f"--backbone_source={tiny_ast_dir}",
    ]
    output = run_recipe(recipe, tmp_path, METHODS, args + TINY + DEBUG)
    for method in METHODS:
        assert f"=== {method}: ok" in output
        log = tmp_path / method / "train_log.txt"
        assert len(accuracies(log, "train")) == 1, log.read_text()
        assert len(accuracies(log, "valid")) == 1
        assert len(accuracies(log, "test")) == 1
    moe_log = (tmp_path / "moe_adapter" / "train_log.txt").read_text()
    assert "train aux_loss" in moe_log and "load_entropy" in moe_log


@pytest.mark.slow
def test_soft_moa_learns_esc50(tmp_path, tiny_ast_dir):
    """A short real Soft-MoA run beats chance (1/5) by far; --test_only then
    reloads the best checkpoint and reproduces the test accuracy."""
    from synthetic import generate

    data = generate(
        "esc50", str(tmp_path / "data"), num_classes=5, clips_per_class_per_fold=3
    )
    args = [
        f"--data_folder={data}",
        f"--backbone_source={tiny_ast_dir}",
        "--n_classes=5",
        "--number_of_epochs=8",
        "--lr=0.01",
        "--batch_size=4",
        "--max_frames=100",
        "--device=cpu",
        "--noprogressbar",
    ]
    run_recipe("ESC50", tmp_path, ["soft_moa"], args)
    log = tmp_path / "soft_moa" / "train_log.txt"
    test_acc = accuracies(log, "test")
    assert len(accuracies(log, "valid")) == 8
    assert test_acc[-1] >= 0.6, log.read_text()
    run_recipe("ESC50", tmp_path, ["soft_moa"], args + ["--test_only"])
    again = accuracies(log, "test")
    assert len(again) == 2 and again[-1] == pytest.approx(test_acc[-1])


@pytest.mark.slow
@pytest.mark.parametrize("backbone", ["whisper", "wavlm"])
def test_other_backbones_debug(backbone, tmp_path, synthetic_dataset):
    models = pytest.importorskip("synthetic.models")
    pytest.importorskip(f"speechbrain_moe.lobes.{backbone}")
    source = getattr(models, f"make_tiny_{backbone}")(str(tmp_path / "model"))
    args = [
        f"--data_folder={synthetic_dataset('gsc')}",
        f"--backbone_source={source}",
        "--batch_size=2",
        "--test_batch_size=4",
        "--device=cpu",
        "--noprogressbar",
    ]
    output = run_recipe(
        "Google-speech-commands",
        tmp_path,
        ["soft_moa", "moe_adapter"],
        args + DEBUG,
        hparams=f"{backbone}.yaml",
    )
    assert "=== soft_moa: ok" in output and "=== moe_adapter: ok" in output


@pytest.mark.slow
def test_cross_validation_reports_mean_std(tmp_path, tiny_ast_dir):
    """``cross_validate.py`` runs every fold and reports mean ± std."""
    from synthetic import generate

    data = generate("esc50", str(tmp_path / "data"), num_classes=2, seconds=0.5)
    proc = cross_validate(tmp_path, data, tiny_ast_dir, "--folds=1,2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert re.search(
        r"2-fold cross-validation \(folds 1,2\): test accuracy [0-9.]+ ± [0-9.]+",
        proc.stdout,
    )
    assert (tmp_path / "cv" / "cross_validation.json").is_file()
    # the audio was checked once for both folds
    assert (proc.stdout + proc.stderr).count("ESC-50: kept ") == 1


def cross_validate(tmp_path, data, backbone, *args):
    """Runs ESC-50's cross_validate.py; returns the completed process."""
    recipe = os.path.join(REPO, "recipes", "ESC50", "PETL")
    return subprocess.run(
        [
            PYTHON,
            os.path.join(recipe, "cross_validate.py"),
            os.path.join(recipe, "hparams", "ast.yaml"),
            f"--output_folder={tmp_path / 'cv'}",
            f"--data_folder={data}",
            f"--backbone_source={backbone}",
            "--n_classes=2",
            "--petl_method=linear",
            *TINY,
            *DEBUG,
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=str(tmp_path),
    )


def test_cross_validation_refuses_bad_folds_before_training(tmp_path, tiny_ast_dir):
    proc = cross_validate(tmp_path, tmp_path / "no_data", tiny_ast_dir, "--folds=1,9")
    assert proc.returncode != 0
    assert "--folds=1,9: folds must be whole numbers from 1 to 5" in proc.stderr
    assert not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_failing_fold_keeps_the_finished_ones(tmp_path, tiny_ast_dir):
    import json

    from synthetic import generate

    data = generate("esc50", str(tmp_path / "data"), num_classes=2, seconds=0.5)
    # Fold 2's folder holds a checkpoint of unknown configuration (no
    # experiment.json): its train.py refuses it after fold 1 finished. (A
    # damaged checkpoint would not do: with --debug, SpeechBrain keeps
    # checkpoints in a temporary folder.)
    fold2 = tmp_path / "cv" / "fold2"
    (fold2 / "save" / "CKPT+unknown").mkdir(parents=True)
    proc = cross_validate(tmp_path, data, tiny_ast_dir, "--folds=1,2")
    assert proc.returncode != 0
    assert "Fold 2 failed" in proc.stderr
    assert "holds checkpoints but" in proc.stdout + proc.stderr  # for that reason
    assert re.search(r"fold 1: test accuracy [0-9.]+", proc.stdout)
    summary = json.loads((tmp_path / "cv" / "cross_validation.json").read_text())
    assert list(summary["folds"]) == ["1"] and summary["failed_fold"] == 2
    assert summary["std_kind"] == "sample (n - 1)"

    # the fix, then the remaining fold as the message says: fold 1 is kept
    import shutil

    shutil.rmtree(fold2)
    proc = cross_validate(tmp_path, data, tiny_ast_dir, "--folds=2")
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    summary = json.loads((tmp_path / "cv" / "cross_validation.json").read_text())
    assert list(summary["folds"]) == ["1", "2"] and "failed_fold" not in summary
    assert "2-fold cross-validation (folds 1,2)" in proc.stdout
