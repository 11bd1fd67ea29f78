"""DDP on CPU with ``torchrun --standalone --nproc_per_node=2 ... --device=cpu
--distributed_backend=gloo``, without ``--find_unused_parameters``: three
epochs, so that checkpoints rotate (each save deletes the previous one, with
a collective per deletion), for every mixture method and the LLM bridge, plus
a ``--debug`` run (where SpeechBrain gives each rank a temporary checkpoint
folder of its own). Both ranks end with identical trained weights."""

import glob
import json
import os
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO
from speech_llm_helpers import bridge_recipe_command

TORCHRUN = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
ENV = dict(os.environ, OMP_NUM_THREADS="1")
TIMEOUT = 900


def run(cmd, cwd):
    """Runs a command; fails with its output (a hang ends at the timeout)."""
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=str(cwd), env=ENV
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def classification(tmp_path, method, data, backbone, *args):
    """The ESC-50 recipe under torchrun (one launch per method: a process
    group is initialised once per process)."""
    recipe_dir = os.path.join(REPO, "recipes", "ESC50", "PETL")
    cmd = TORCHRUN + [
        os.path.join(REPO, "tests", "recipe_runner.py"),
        recipe_dir,
        os.path.join(recipe_dir, "hparams", "ast.yaml"),
        str(tmp_path),
        method,
        f"--data_folder={data}",
        f"--backbone_source={backbone}",
        "--max_frames=100",
        "--batch_size=2",
        "--test_batch_size=4",
        "--petl_overrides={num_experts: 4}",
        "--device=cpu",
        "--distributed_backend=gloo",
        "--noprogressbar",
        *args,
    ]
    return run(cmd, tmp_path)


def assert_closed(output):
    """The recipe freed its process group before exit (no holder reported)."""
    assert "outlives destroy_process_group" not in output, output[-3000:]


def assert_ranks_agree(folder):
    """Both ranks saved the same trained tensors."""
    ranks = sorted(glob.glob(str(folder / "weights_rank*.pt")))
    assert len(ranks) == 2, ranks
    first, second = (torch.load(p, weights_only=True) for p in ranks)
    assert first.keys() == second.keys()
    assert any(k.startswith("backbone.") for k in first), "no trained backbone tensor"
    for key in first:
        assert torch.equal(first[key], second[key]), f"{folder.name}: {key} differs"


@pytest.mark.slow
def test_three_epochs_every_mixture(tmp_path, tiny_ast_dir, synthetic_dataset):
    for method in ["soft_moa", "dense_moa", "moe_adapter"]:
        output = classification(
            tmp_path,
            method,
            synthetic_dataset("esc50"),
            tiny_ast_dir,
            "--number_of_epochs=3",
        )
        folder = tmp_path / method
        log = (folder / "train_log.txt").read_text()
        assert log.count("epoch: ") == 3 and "test accuracy" in log, method
        # per-expert loads counted under DDP (routers found after the wrapping)
        assert "load_entropy" in log, method
        # the checkpoints rotated: older ones were deleted, one is left
        assert output.count(f"Deleted checkpoint in {folder}/save") >= 1
        assert 1 <= len(list((folder / "save").glob("CKPT+*"))) <= 2  # best, latest
        # data preparation ran once (on the main process)
        assert output.count(f"Wrote {folder}/train.csv") == 1
        assert_ranks_agree(folder)
        assert_closed(output)


@pytest.mark.slow
def test_debug_three_epochs(tmp_path, tiny_ast_dir, synthetic_dataset):
    classification(
        tmp_path,
        "soft_moa",
        synthetic_dataset("esc50"),
        tiny_ast_dir,
        "--debug",
        "--debug_batches=2",
        "--debug_epochs=3",
    )
    log = (tmp_path / "soft_moa" / "train_log.txt").read_text()
    assert log.count("epoch: ") == 3 and "test accuracy" in log
    assert_ranks_agree(tmp_path / "soft_moa")


@pytest.mark.slow
def test_llm_bridge_three_epochs(tmp_path):
    from synthetic import generate

    libri = generate("librispeech", str(tmp_path / "LibriSpeech"))
    llm = generate("tiny-llm", str(tmp_path / "llm"))
    whisper = generate("tiny-whisper", str(tmp_path / "whisper"))
    out = tmp_path / "exp"
    output = run(
        TORCHRUN
        + bridge_recipe_command(
            out,
            libri,
            llm,
            whisper,
            "{fused_size: 32, expert_hidden: 16, aggregation_hidden: 32, "
            "num_experts: 4, top_k: 2}",
        )
        + [
            '--llm_lora_layers=["*q_proj", "*v_proj"]',
            "--number_of_epochs=3",
            "--select_n_sentences=4",
            "--batch_size=2",
            "--max_new_tokens=4",
            "--valid_decode=False",
            "--device=cpu",
            "--distributed_backend=gloo",
            "--noprogressbar",
        ],
        os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge"),
    )
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: ") == 3 and "test WER" in log
    assert output.count("Deleted checkpoint") >= 1
    assert_closed(output)


@pytest.mark.parametrize("keep", [False, True], ids=["closed", "wrapper-kept"])
def test_close_process_group_joins_gloo(tmp_path, keep):
    """After ``close_process_group(brain)`` no gloo worker thread is left to
    outlive the script (one that is can abort the process during interpreter
    shutdown, after a run that succeeded); a DDP wrapper kept elsewhere keeps
    them, and is reported."""
    worker = os.path.join(REPO, "tests", "ddp_close_worker.py")
    output = run(TORCHRUN + [worker] + (["keep"] if keep else []), tmp_path)
    for rank in (0, 1):
        result = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert result["closed"] and result["module"] == "Linear", result
        if keep:
            assert result["gloo_threads"] > 0, result
        else:
            assert result["gloo_threads"] == 0, result
    assert ("outlives destroy_process_group" in output) == keep
