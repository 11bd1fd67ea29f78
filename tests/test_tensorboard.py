"""``--use_tensorboard=True``: a recipe run writes TensorBoard event files
(SpeechBrain's ``TensorboardLogger``) holding the statistics of
``train_log.txt`` and, for a routed method, one expert-load histogram per
router and epoch."""

import os
import re
import subprocess
import sys

import pytest
from conftest import PYTHON, REPO

SAMPLES = os.path.join(REPO, "tests", "samples")


def read_events(folder):
    """Scalars (tag -> [(step, value)]) and histograms (tag -> [step, ...])."""
    # tensorboard is in the dev extra (pyproject.toml): no skip without it
    from tensorboard.backend.event_processing import event_accumulator

    events = event_accumulator.EventAccumulator(
        str(folder), size_guidance={"scalars": 0, "histograms": 0}
    )
    events.Reload()
    tags = events.Tags()
    scalars = {
        t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags["scalars"]
    }
    histograms = {
        t: [(e.step, list(e.histogram_value.bucket)) for e in events.Histograms(t)]
        for t in tags["histograms"]
    }
    return scalars, histograms


def logged(train_log, stage, stat):
    """Every ``<stage> <stat>`` value of a train log, in order."""
    text = open(train_log).read()
    return [float(v) for v in re.findall(rf"{stage} {stat}: ([-0-9.e+]+)", text)]


@pytest.mark.slow
def test_tensorboard_holds_the_logged_statistics(tmp_path, tiny_ast_dir):
    recipe = os.path.join(REPO, "recipes", "ESC50", "PETL")
    out = tmp_path / "exp"
    cmd = [
        PYTHON,
        "train.py",
        "hparams/ast.yaml",
        f"--data_folder={SAMPLES}/esc50",
        f"--backbone_source={tiny_ast_dir}",
        f"--output_folder={out}",
        "--petl_method=moe_adapter",
        "--n_classes=2",
        "--number_of_epochs=2",
        "--batch_size=2",
        "--max_frames=100",
        "--device=cpu",
        "--noprogressbar",
        "--use_tensorboard=True",
    ]
    proc = subprocess.run(cmd, cwd=recipe, capture_output=True, text=True)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    scalars, histograms = read_events(out / "tensorboard")

    train_log = out / "train_log.txt"
    for stage in ("train", "valid", "test"):
        for stat in ("loss", "accuracy", "aux_loss", "load_cv", "load_entropy"):
            values = [v for _, v in scalars[f"{stat}/{stage}"]]
            expected = logged(train_log, stage, stat)
            assert len(values) == len(expected) == (1 if stage == "test" else 2)
            assert values == pytest.approx(expected, rel=6e-3, abs=1e-6), stat
        assert f"load_max_share/{stage}" in scalars
    assert [s for s, _ in scalars["lr"]] == [1, 2]
    assert scalars["lr"][0][1] == pytest.approx(0.005)

    # one histogram per router (2 layers) and stage, every epoch
    for stage, steps in (("train", [1, 2]), ("valid", [1, 2]), ("test", [2])):
        tags = sorted(t for t in histograms if t.startswith(f"expert_load_{stage}/"))
        assert len(tags) == 2, histograms.keys()
        for tag in tags:
            assert [step for step, _ in histograms[tag]] == steps
            for _, shares in histograms[tag]:
                assert len(shares) == 8 and sum(shares) == pytest.approx(1.0)


def test_missing_tensorboard_is_a_clear_error(monkeypatch, tmp_path):
    from speechbrain_moe.tensorboard import open_tensorboard

    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    with pytest.raises(ImportError, match="pip install tensorboard"):
        open_tensorboard(str(tmp_path))
