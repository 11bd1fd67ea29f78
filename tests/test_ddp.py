"""DDP on CPU: ``torchrun --standalone --nproc_per_node=2 ... --device=cpu
--distributed_backend=gloo`` without ``--find_unused_parameters``; data
preparation runs once; both ranks end with identical trained weights."""

import glob
import os
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO

METHODS = ["moe_adapter", "soft_moa"]


@pytest.mark.slow
@pytest.mark.parametrize("method", METHODS)
def test_ddp_two_ranks_identical_weights(
    method, tmp_path, tiny_ast_dir, synthetic_dataset
):
    recipe_dir = os.path.join(REPO, "recipes", "ESC50", "PETL")
    cmd = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        os.path.join(REPO, "tests", "recipe_runner.py"),
        recipe_dir,
        os.path.join(recipe_dir, "hparams", "ast.yaml"),
        str(tmp_path),
        method,
        f"--data_folder={synthetic_dataset('esc50')}",
        f"--backbone_source={tiny_ast_dir}",
        "--n_classes=6",
        "--max_frames=100",
        "--batch_size=2",
        "--test_batch_size=4",
        "--number_of_epochs=1",
        "--debug",
        "--debug_batches=2",
        "--debug_epochs=1",
        "--device=cpu",
        "--distributed_backend=gloo",
        "--noprogressbar",
    ]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, cwd=str(tmp_path), env=env
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    assert "find_unused_parameters" not in " ".join(cmd)
    folder = tmp_path / method
    # Preparation ran once (on the main process): one set of manifests,
    # written once.
    assert output.count(f"Wrote {folder}/train.csv") <= 1
    assert (folder / "prepare_options.json").is_file()
    ranks = sorted(glob.glob(str(folder / "weights_rank*.pt")))
    assert len(ranks) == 2, ranks
    first, second = (torch.load(p, weights_only=True) for p in ranks)
    assert first.keys() == second.keys()
    adapter_keys = [k for k in first if k.startswith("backbone.")]
    assert adapter_keys, f"{method}: no trained backbone tensors"
    for key in first:
        assert torch.equal(first[key], second[key]), f"{method}: {key} differs"
    assert "test accuracy" in (folder / "train_log.txt").read_text()
