"""Data preparation of the four classification recipes: manifests in the
official splits, written once, unusable audio reported by name and skipped."""

import csv
import importlib.util
import logging
import os

import pytest
from conftest import REPO

from synthetic import generate

PREPARE = {
    "esc50": ("ESC50", "esc50_prepare.py", "prepare_esc50"),
    "us8k": ("UrbanSound8k", "urbansound8k_prepare.py", "prepare_urbansound8k"),
    "gsc": ("Google-speech-commands", "prepare_GSC.py", "prepare_GSC"),
    "fsc": ("fluent-speech-commands", "prepare.py", "prepare_FSC"),
}


def load_prepare(kind):
    """The preparation function of a recipe."""
    recipe, filename, function = PREPARE[kind]
    path = os.path.join(REPO, "recipes", recipe, "PETL", filename)
    spec = importlib.util.spec_from_file_location(f"prepare_{kind}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return getattr(module, function)


def read(path):
    """Rows of a manifest."""
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


def wav_files(folder):
    """All wav files under ``folder``."""
    return sorted(
        os.path.join(root, f)
        for root, _, files in os.walk(folder)
        for f in files
        if f.endswith(".wav")
    )


@pytest.mark.parametrize("kind", sorted(PREPARE))
def test_manifests_and_skip(kind, tmp_path):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    prepare = load_prepare(kind)
    save = tmp_path / "manifests"
    files = prepare(data, str(save))
    rows = {split: read(path) for split, path in files.items()}
    assert all(rows[split] for split in ("train", "valid", "test"))
    for split_rows in rows.values():
        for row in split_rows:
            assert {"ID", "wav", "duration", "class_name"} <= set(row)
            assert os.path.isfile(row["wav"]) and float(row["duration"]) > 0
    ids = [row["ID"] for split_rows in rows.values() for row in split_rows]
    assert len(ids) == len(set(ids)), "IDs must be unique across splits"
    if kind == "gsc":
        names = {
            row["class_name"] for split_rows in rows.values() for row in split_rows
        }
        assert "_background_noise_" not in names
        total = len(wav_files(data)) - 1  # the background noise file
    else:
        total = len(wav_files(data))
    assert len(ids) == total
    if kind == "fsc":
        assert all(row["class_name"].count("_") == 2 for row in rows["train"])
    # Written once: a second call leaves the manifests untouched.
    stamps = {p: os.path.getmtime(p) for p in files.values()}
    os.utime(files["train"], (1, 1))
    prepare(data, str(save))
    assert os.path.getmtime(files["train"]) == 1
    assert all(
        os.path.getmtime(p) == stamps[p] for p in files.values() if p != files["train"]
    )


@pytest.mark.parametrize("kind", ["esc50", "us8k"])
def test_folds(kind, tmp_path):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    prepare = load_prepare(kind)
    files = prepare(data, str(tmp_path / "f3"), test_fold=3)
    assert {r["fold"] for r in read(files["test"])} == {"3"}
    assert {r["fold"] for r in read(files["valid"])} == {"4"}
    assert not {"3", "4"} & {r["fold"] for r in read(files["train"])}
    # Another fold in the same folder is not skipped: the options differ.
    last = 5 if kind == "esc50" else 10
    files = prepare(data, str(tmp_path / "f3"), test_fold=last)
    assert {r["fold"] for r in read(files["test"])} == {str(last)}
    assert {r["fold"] for r in read(files["valid"])} == {"1"}
    with pytest.raises(ValueError, match="between 1 and"):
        prepare(data, str(tmp_path / "bad"), test_fold=11)


@pytest.mark.parametrize("kind", sorted(PREPARE))
def test_corrupt_and_empty_audio_reported_and_skipped(kind, tmp_path, caplog):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    wavs = [w for w in wav_files(data) if "_background_noise_" not in w]
    corrupt, empty = wavs[0], wavs[-1]
    with open(corrupt, "wb") as fout:
        fout.write(b"this is not audio" * 10)
    open(empty, "wb").close()
    prepare = load_prepare(kind)
    with caplog.at_level(logging.WARNING):
        files = prepare(data, str(tmp_path / "manifests"))
    listed = {row["wav"] for path in files.values() for row in read(path)}
    assert os.path.abspath(corrupt) not in listed
    assert os.path.abspath(empty) not in listed
    assert len(listed) == len(wavs) - 2
    assert corrupt in caplog.text and empty in caplog.text
    assert "skipped 2 audio file(s)" in caplog.text


def test_missing_data_folder_message(tmp_path):
    prepare = load_prepare("esc50")
    with pytest.raises(FileNotFoundError, match="ESC-50 not found .* --data_folder"):
        prepare(str(tmp_path / "nowhere"), str(tmp_path / "m"))
