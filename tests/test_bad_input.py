"""Bad input to the recipes: each mistake gives a clear error (or a reported
skip) and leaves the previous checkpoint untouched.

The recipe's ``train.py`` runs in-process through its ``__main__`` with a
real command line (as ``tests/recipe_runner.py`` does), on a copy of one
trained experiment; the checkpoint folder is hashed before and after.
"""

import csv
import hashlib
import logging
import os
import runpy
import shutil
import sys

import numpy as np
import pytest
import soundfile as sf
from conftest import REPO

RECIPE = os.path.join(REPO, "recipes", "ESC50", "PETL")
HPARAMS = os.path.join(RECIPE, "hparams", "ast.yaml")


def train(output_folder, data_folder, backbone, *args):
    """Runs the ESC-50 recipe in this process (raises what it raises)."""
    if RECIPE not in sys.path:
        sys.path.insert(0, RECIPE)
    options = {
        "--data_folder": data_folder,
        "--backbone_source": backbone,
        "--output_folder": output_folder,
        "--n_classes": 3,
        "--number_of_epochs": 1,
        "--batch_size": 4,
        "--max_frames": 50,
        "--petl_overrides": "{num_experts: 2}",
        "--device": "cpu",
    }
    for arg in args:
        name, _, value = arg.partition("=")
        options[name] = value or None
    argv = sys.argv
    sys.argv = [
        os.path.join(RECIPE, "train.py"),
        HPARAMS,
        "--noprogressbar",
        *(k if v is None else f"{k}={v}" for k, v in options.items()),
    ]
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    finally:
        sys.argv = argv


def resume(experiment, *args):
    """A second epoch of the trained experiment, on its existing manifests."""
    exp, data, backbone = experiment["exp"], experiment["data"], experiment["backbone"]
    train(exp, data, backbone, "--skip_prep=True", "--number_of_epochs=2", *args)


def evaluate_only(experiment, *args):
    """The test stage of the trained experiment, on its existing manifests."""
    exp, data, backbone = experiment["exp"], experiment["data"], experiment["backbone"]
    train(exp, data, backbone, "--skip_prep=True", "--test_only", *args)


def folder_hash(folder):
    """SHA-256 over the names and contents of every file under ``folder``."""
    digest = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        dirs.sort()
        for name in sorted(files):
            path = os.path.join(root, name)
            digest.update(os.path.relpath(path, folder).encode())
            with open(path, "rb") as fin:
                digest.update(fin.read())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_ast_dir):
    """One epoch of the ESC-50 recipe on synthetic data (1 s clips, cut to
    max_frames=50)."""
    from synthetic import generate

    root = tmp_path_factory.mktemp("bad_input")
    data = generate(
        "esc50", str(root / "data"), num_classes=3, clips_per_class_per_fold=1
    )
    train(root / "exp", data, tiny_ast_dir)
    return {"root": root, "data": data, "exp": root / "exp", "backbone": tiny_ast_dir}


@pytest.fixture
def experiment(trained, tmp_path):
    """A private copy of the trained experiment, and its checkpoint hash."""
    exp = tmp_path / "exp"
    shutil.copytree(trained["exp"], exp)
    save = exp / "save"
    assert any(p.name.startswith("CKPT+") for p in save.iterdir())
    checkpoints = {p.name: folder_hash(p) for p in save.glob("CKPT+*")}
    return {
        **trained,
        "exp": exp,
        "save": save,
        "hash": folder_hash(save),
        "checkpoints": checkpoints,
    }


def test_cut_clips_are_named_in_the_log(trained):
    log = (trained["exp"] / "log.txt").read_text()
    with open(trained["exp"] / "train.csv", newline="") as fin:
        names = [row["wav"] for row in csv.DictReader(fin)]
    # 1 s clips, max_frames=50: every clip is cut, with a warning naming it
    assert log.count("is longer than the backbone's maximum of 0.52 s; cut.") >= 9
    assert all(name in log for name in names)


@pytest.mark.parametrize(
    "args, error, message",
    [
        (["--petl_method=soft_mao"], ValueError, "Unknown PETL method 'soft_mao'"),
        (["--petl_overrides={num_experts: 0}"], ValueError, "num_experts"),
        (
            ["--petl_method=moe_adapter", "--petl_overrides={num_experts: 0}"],
            ValueError,
            "num_experts",
        ),
        (["--petl_overrides={slots_per_expert: 0}"], ValueError, "slots_per_expert"),
        (
            [
                "--petl_method=moe_adapter",
                "--petl_overrides={num_experts: 2, top_k: 3}",
            ],
            ValueError,
            "top_k",
        ),
        (
            ["--petl_method=adapter", "--petl_overrides={bottleneck: 0}"],
            ValueError,
            "bottleneck",
        ),
        (
            ["--petl_method=dense_moa", "--petl_overrides={bottleneck: 0}"],
            ValueError,
            "bottleneck",
        ),
    ],
    ids=[
        "unknown-method",
        "0-experts",
        "moe-0-experts",
        "0-slots",
        "topk>experts",
        "bottleneck-0",
        "dense-bottleneck-0",
    ],
)
def test_bad_hyper_parameters_on_the_command_line(experiment, args, error, message):
    with pytest.raises(error, match=message):
        train(experiment["exp"], experiment["data"], experiment["backbone"], *args)
    assert folder_hash(experiment["save"]) == experiment["hash"]


@pytest.mark.parametrize("kind", ["missing", "empty"])
def test_missing_or_empty_data_folder(experiment, tmp_path, kind):
    folder = tmp_path / "no_data"
    if kind == "empty":
        folder.mkdir()
    with pytest.raises(
        FileNotFoundError, match="ESC-50 not found in .*missing meta/esc50.csv"
    ) as info:
        # a new output folder: into the finished one, the other data_folder
        # is refused first (speechbrain_moe/experiment.py)
        train(tmp_path / "fresh", folder, experiment["backbone"])
    assert "--data_folder" in str(info.value)
    assert folder_hash(experiment["save"]) == experiment["hash"]


def test_manifest_pointing_to_missing_files(experiment):
    manifest = experiment["exp"] / "train.csv"
    rows = list(csv.DictReader(open(manifest, newline="")))
    rows[0]["wav"] = "/nonexistent/clip.wav"
    with open(manifest, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(
        FileNotFoundError, match="1 of the 9 audio files listed in"
    ) as info:
        train(
            experiment["exp"],
            experiment["data"],
            experiment["backbone"],
            "--skip_prep=True",
        )
    assert "/nonexistent/clip.wav" in str(info.value)
    assert "re-run the data" in str(info.value)
    assert folder_hash(experiment["save"]) == experiment["hash"]


def test_non_finite_loss_stops_and_keeps_the_checkpoint(experiment, tmp_path):
    nan_wav = str(tmp_path / "nan.wav")
    sf.write(nan_wav, np.full(16000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    manifest = experiment["exp"] / "train.csv"
    rows = list(csv.DictReader(open(manifest, newline="")))
    for row in rows:
        row["wav"] = nan_wav
    with open(manifest, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(ValueError, match="not finite") as info:
        resume(experiment, "--nonfinite_patience=1", "--ckpt_interval_steps=1")
    assert "patience is exhausted" in str(info.value)
    # The checkpoints that existed are untouched; the intra-epoch checkpoint
    # written after the first (skipped) batch holds the same, finite weights.
    after = {p.name: folder_hash(p) for p in experiment["save"].glob("CKPT+*")}
    for name, digest in experiment["checkpoints"].items():
        assert after[name] == digest
    log = (experiment["exp"] / "log.txt").read_text()
    assert "have NaN/inf samples; they take no part in the loss" in log
    assert "Non-finite loss at epoch 2, step 1 (1 of --nonfinite_patience=1" in log


def test_preparation_reports_and_skips_bad_audio(trained, tmp_path, caplog):
    """Missing, corrupt, empty, silent and NaN files are skipped by name."""
    from esc50_prepare import prepare_esc50

    data = tmp_path / "data"
    shutil.copytree(trained["data"], data)
    audio = sorted((data / "audio").iterdir())
    bad = {
        "missing": audio[0],
        "corrupt": audio[1],
        "empty": audio[2],
        "silent": audio[3],
        "NaN": audio[4],
    }
    bad["missing"].unlink()
    bad["corrupt"].write_bytes(b"RIFF....WAVEfmt garbage")
    bad["empty"].write_bytes(b"")
    sf.write(bad["silent"], np.zeros(16000, dtype=np.float32), 16000)
    noisy = np.random.default_rng(0).standard_normal(16000).astype(np.float32)
    noisy[100] = np.nan
    sf.write(bad["NaN"], noisy, 16000, subtype="FLOAT")
    with caplog.at_level(logging.WARNING):
        files = prepare_esc50(str(data), str(tmp_path / "out"), test_fold=2)
    report = caplog.text
    assert "skipped 5 audio file(s)" in report
    for problem in ("missing", "unreadable", "empty", "silent", "NaN"):
        assert problem in report
    listed = "".join(open(p).read() for p in files.values())
    for path in bad.values():
        assert path.name not in listed
        assert path.name in report


def test_wrong_sample_rate_is_resampled(tmp_path):
    from speechbrain_moe.dataio import read_clip

    path = str(tmp_path / "8k.wav")
    sf.write(path, np.ones((8000, 2), dtype=np.float32) * 0.1, 8000)
    sig = read_clip(path, 16000)
    assert sig.shape == (16000,)
    assert abs(float(sig[4000:12000].mean()) - 0.1) < 1e-3


# ---------------------------------------------------------------- checkpoints


def damage(save, kind):
    """Damages the experiment's checkpoint; returns the file named in errors."""
    ckpt = next(save.glob("CKPT+*"))
    if kind == "truncated backbone":
        data = (ckpt / "backbone.ckpt").read_bytes()
        (ckpt / "backbone.ckpt").write_bytes(data[: len(data) // 2])
        return "backbone.ckpt has"
    if kind == "deleted backbone":
        (ckpt / "backbone.ckpt").unlink()
        return "backbone.ckpt is missing"
    if kind == "empty meta":
        (ckpt / "CKPT.yaml").write_text("")
        return "CKPT.yaml has 0 bytes"
    if kind == "empty optimizer":
        (ckpt / "optimizer.ckpt").write_bytes(b"")
        return "optimizer.ckpt has 0 bytes"
    raise ValueError(kind)


@pytest.mark.parametrize(
    "kind", ["truncated backbone", "deleted backbone", "empty meta", "empty optimizer"]
)
def test_damaged_checkpoint_is_named_and_kept(experiment, kind):
    named = damage(experiment["save"], kind)
    before = folder_hash(experiment["save"])
    with pytest.raises(RuntimeError, match="No intact checkpoint") as info:
        resume(experiment)
    assert named in str(info.value) and "CKPT+" in str(info.value)
    assert "Restore the named file" in str(info.value)
    assert folder_hash(experiment["save"]) == before  # nothing moved or deleted


def test_checkpoint_without_meta_file_is_set_aside_not_deleted(experiment):
    ckpt = next(experiment["save"].glob("CKPT+*"))
    (ckpt / "CKPT.yaml").unlink()
    weights = (ckpt / "backbone.ckpt").read_bytes()
    train(
        experiment["exp"],
        experiment["data"],
        experiment["backbone"],
        "--skip_prep=True",
        "--number_of_epochs=1",
    )
    kept = experiment["save"] / "set_aside" / ckpt.name / "backbone.ckpt"
    assert kept.read_bytes() == weights
    log = (experiment["exp"] / "log.txt").read_text()
    assert "is unusable (interrupted while saving or deleting" in log


def test_test_only_without_checkpoint_refuses(experiment):
    for ckpt in experiment["save"].glob("CKPT+*"):
        shutil.rmtree(ckpt)
    log = experiment["exp"] / "train_log.txt"
    before = log.read_text()
    with pytest.raises(RuntimeError, match="untrained") as info:
        evaluate_only(experiment)
    assert "--test_only" in str(info.value)
    assert log.read_text() == before  # no test accuracy of an untrained model


@pytest.mark.parametrize(
    "args, message",
    [
        (["--petl_overrides=8"], "must be a mapping of settings"),
        (["--petl_overrides={num_expert: 4}"], "has no setting(s) ['num_expert']"),
        (["--petl_method=my_method.yaml"], "my_method.yaml does not exist"),
    ],
)
def test_bad_method_arguments(experiment, args, message):
    with pytest.raises((ValueError, FileNotFoundError)) as info:
        train(experiment["exp"], experiment["data"], experiment["backbone"], *args)
    assert message in str(info.value)
    assert folder_hash(experiment["save"]) == experiment["hash"]


def test_header_only_manifest(experiment):
    manifest = experiment["exp"] / "valid.csv"
    manifest.write_text("ID,wav,duration,class_name,fold\n")
    with pytest.raises(ValueError, match="valid.csv has no rows") as info:
        train(
            experiment["exp"],
            experiment["data"],
            experiment["backbone"],
            "--skip_prep=True",
        )
    assert "re-run the data preparation" in str(info.value)


def test_nan_clip_in_test_stage_is_excluded(experiment, tmp_path):
    manifest = experiment["exp"] / "test.csv"
    rows = list(csv.DictReader(open(manifest, newline="")))
    nan_wav = str(tmp_path / "nan.wav")
    sf.write(nan_wav, np.full(8000, np.nan, dtype=np.float32), 16000, subtype="FLOAT")
    rows[0]["wav"] = nan_wav
    with open(manifest, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    evaluate_only(experiment, "--test_batch_size=8")
    from speechbrain_moe.inference import PETLAudioClassifier

    log = (experiment["exp"] / "train_log.txt").read_text().splitlines()[-1]
    logged = float(log.split("test accuracy: ")[1].split(",")[0])
    model = PETLAudioClassifier.from_hparams(source=str(experiment["exp"]))
    finite = rows[1:]
    correct = [model.classify_file(r["wav"])[3][0] == r["class_name"] for r in finite]
    assert logged == pytest.approx(sum(correct) / len(finite), abs=1e-3)
    assert "have NaN/inf samples" in (experiment["exp"] / "log.txt").read_text()
