"""Honest data preparation (issue 20, item 6; item 3's unseen labels; item 4's
too-short clips): manifests are rebuilt when an input or an option changes
(the bridge recipe's LibriSpeech preparation included), every skipped file
or line is counted and named, too-short clips are skipped by name, metadata
CSVs accept a UTF-8 byte-order mark and name the file and the expected
columns, duplicate ids are errors, and a validation/test label the training
data lacks is refused before training, naming the manifest and the clips."""

import csv
import importlib.util
import logging
import os

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO
from speechbrain.dataio.encoder import CategoricalEncoder
from test_prepare import load_prepare, read, wav_files

from speechbrain_moe.dataio import classification_datasets, read_clip
from speechbrain_moe.manifests import MIN_SECONDS
from synthetic import generate
from synthetic.librispeech import make_librispeech

METADATA = {  # the metadata file a user may edit, and its columns
    "esc50": ("meta/esc50.csv", "category"),
    "us8k": ("metadata/UrbanSound8K.csv", "class"),
    "fsc": ("data/train_data.csv", "action"),
}


def load_librispeech_prepare():
    """The bridge recipe's preparation function."""
    path = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
    spec = importlib.util.spec_from_file_location(
        "librispeech_prepare", os.path.join(path, "librispeech_prepare.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.prepare_librispeech


def rewrite_csv(path, edit, encoding="utf-8"):
    """Rewrites a CSV: ``edit(header, rows) -> (header, rows)``."""
    with open(path, newline="", encoding="utf-8-sig") as fin:
        lines = list(csv.reader(fin))
    header, rows = edit(lines[0], lines[1:])
    with open(path, "w", newline="", encoding=encoding) as fout:
        writer = csv.writer(fout)
        writer.writerow(header)
        writer.writerows(rows)


def total_rows(files):
    """Clips listed in all manifests."""
    return sum(len(read(path)) for path in files.values())


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_edited_metadata_rebuilds_the_manifests(kind, tmp_path, caplog):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    prepare = load_prepare(kind)
    files = prepare(data, str(tmp_path / "m"))
    before = total_rows(files)
    meta = os.path.join(data, METADATA[kind][0])
    rewrite_csv(meta, lambda header, rows: (header, rows[:-1]))  # one line less
    with caplog.at_level(logging.INFO):
        files = prepare(data, str(tmp_path / "m"))
    assert total_rows(files) == before - 1
    assert "rebuilt" in caplog.text and meta in caplog.text


def test_gsc_new_audio_file_rebuilds_the_manifests(tmp_path):
    data = generate("gsc", str(tmp_path / "data"), seconds=0.2)
    prepare = load_prepare("gsc")
    files = prepare(data, str(tmp_path / "m"))
    before = len(read(files["train"]))
    word = sorted(d for d in os.listdir(data) if not d.startswith("_"))[0]
    sf.write(os.path.join(data, word, "new_nohash_0.wav"), np.full(3200, 0.1), 16000)
    files = prepare(data, str(tmp_path / "m"))
    assert len(read(files["train"])) == before + 1


@pytest.mark.parametrize("kind", ["esc50", "us8k", "gsc", "fsc"])
def test_too_short_clip_is_skipped_by_name(kind, tmp_path, caplog):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    wavs = [w for w in wav_files(data) if "_background_noise_" not in w]
    short = wavs[0]
    with open(short, "wb") as fout:  # a 100-byte WAV: 28 samples (under 2 ms)
        sf.write(fout, np.full(28, 0.3, dtype=np.int16), 16000, format="WAV")
    assert os.path.getsize(short) == 100
    with caplog.at_level(logging.WARNING):
        files = load_prepare(kind)(data, str(tmp_path / "m"))
    listed = {row["wav"] for path in files.values() for row in read(path)}
    assert os.path.abspath(short) not in listed
    assert f"{short}: too short" in caplog.text
    assert f"the minimum is {MIN_SECONDS} s" in caplog.text


@pytest.mark.parametrize("kind", ["esc50", "us8k"])  # FSC's first column has no name
def test_metadata_with_a_byte_order_mark_is_read(kind, tmp_path):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    meta = os.path.join(data, METADATA[kind][0])
    rewrite_csv(meta, lambda header, rows: (header, rows), encoding="utf-8-sig")
    with open(meta, "rb") as fin:
        assert fin.read(3) == b"\xef\xbb\xbf"
    files = load_prepare(kind)(data, str(tmp_path / "m"))
    assert total_rows(files) > 0


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_renamed_column_names_the_file_and_the_expected_columns(kind, tmp_path):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    meta, column = METADATA[kind]
    meta = os.path.join(data, meta)
    rewrite_csv(
        meta,
        lambda header, rows: ([c if c != column else "label" for c in header], rows),
    )
    with pytest.raises(ValueError) as info:
        load_prepare(kind)(data, str(tmp_path / "m"))
    message = str(info.value)
    assert meta in message and repr(column) in message and "'label'" in message
    assert not os.path.exists(tmp_path / "m" / "train.csv")


@pytest.mark.parametrize("kind", sorted(METADATA))
def test_duplicate_ids_name_the_ids_and_the_file(kind, tmp_path):
    data = generate(kind, str(tmp_path / "data"), seconds=0.2)
    meta = os.path.join(data, METADATA[kind][0])
    rewrite_csv(meta, lambda header, rows: (header, rows + rows[:1]))
    with pytest.raises(ValueError, match="more than once") as info:
        load_prepare(kind)(data, str(tmp_path / "m"))
    assert meta in str(info.value)
    assert not os.path.exists(tmp_path / "m" / "train.csv")


def test_metadata_line_with_an_empty_value_is_counted_and_named(tmp_path, caplog):
    data = generate("esc50", str(tmp_path / "data"), seconds=0.2)
    meta = os.path.join(data, "meta", "esc50.csv")

    def blank_category(header, rows):
        rows[2][header.index("category")] = ""
        return header, rows

    rewrite_csv(meta, blank_category)
    with caplog.at_level(logging.WARNING):
        files = load_prepare("esc50")(data, str(tmp_path / "m"))
    assert f"{meta}:4: empty category" in caplog.text
    assert "skipped 1 line(s)" in caplog.text
    assert total_rows(files) == len(wav_files(data)) - 1


# ---------------------------------------------------------------- LibriSpeech


def transcript_files(root):
    """Every ``*.trans.txt`` under ``root``."""
    return sorted(
        os.path.join(r, f)
        for r, _, fs in os.walk(root)
        for f in fs
        if f.endswith(".trans.txt")
    )


@pytest.fixture
def libri(tmp_path):
    """A tiny LibriSpeech with one split of 6 utterances."""
    return make_librispeech(str(tmp_path / "LibriSpeech"), splits={"dev-clean": 6})


def test_librispeech_rebuilt_when_select_n_sentences_changes(libri, tmp_path):
    prepare = load_librispeech_prepare()
    out = str(tmp_path / "csv")
    csvs = prepare(libri, out, ["dev-clean"], select_n_sentences=2)  # smoke run
    assert len(read(csvs["dev-clean"])) == 2
    csvs = prepare(libri, out, ["dev-clean"])  # the full run
    assert len(read(csvs["dev-clean"])) == 6
    assert os.path.isfile(os.path.join(out, "prepare_options.json"))


def test_librispeech_rebuilt_when_data_folder_changes(libri, tmp_path):
    prepare = load_librispeech_prepare()
    out = str(tmp_path / "csv")
    prepare(libri, out, ["dev-clean"])
    other = make_librispeech(str(tmp_path / "Other"), seed=3, splits={"dev-clean": 3})
    csvs = prepare(other, out, ["dev-clean"])
    rows = read(csvs["dev-clean"])
    assert len(rows) == 3 and all(row["wav"].startswith(other) for row in rows)


def test_librispeech_fixed_transcript_rebuilds_and_every_skip_is_named(
    libri, tmp_path, caplog
):
    prepare = load_librispeech_prepare()
    out = str(tmp_path / "csv")
    trans = transcript_files(libri)[0]
    with open(trans) as fin:
        lines = fin.read().splitlines()
    utt = lines[0].split(" ", 1)[0]
    with open(trans, "w") as fout:  # the first utterance loses its words
        fout.write("\n".join([utt] + lines[1:]) + "\n")
    with caplog.at_level(logging.INFO):
        csvs = prepare(libri, out, ["dev-clean"])
    assert len(read(csvs["dev-clean"])) == 5
    assert f"{trans}:1: no words for {utt}" in caplog.text
    assert "kept 5 utterances, skipped 1" in caplog.text
    with open(trans, "w") as fout:  # fixed: the rerun is not skipped
        fout.write("\n".join(lines) + "\n")
    csvs = prepare(libri, out, ["dev-clean"])
    assert len(read(csvs["dev-clean"])) == 6


def test_librispeech_short_missing_and_untranscribed_audio_are_named(
    libri, tmp_path, caplog
):
    prepare = load_librispeech_prepare()
    flacs = sorted(
        os.path.join(r, f)
        for r, _, fs in os.walk(libri)
        for f in fs
        if f.endswith(".flac")
    )
    sf.write(flacs[0], np.full(16, 0.2), 16000, format="FLAC")  # 1 ms
    os.remove(flacs[1])
    extra = os.path.join(os.path.dirname(flacs[2]), "9-9-9.flac")
    sf.write(extra, np.full(16000, 0.2), 16000, format="FLAC")
    with caplog.at_level(logging.INFO):
        csvs = prepare(libri, str(tmp_path / "csv"), ["dev-clean"])
    assert len(read(csvs["dev-clean"])) == 4
    assert f"{flacs[0]}: too short" in caplog.text
    assert f"{flacs[1]}: missing" in caplog.text
    assert f"{extra}: no transcript line" in caplog.text
    assert "skipped 3" in caplog.text


# ---------------------------------------------------------------- manifests


def write_manifests(folder, labels, header=("ID", "wav", "duration", "class_name")):
    """Tiny train/valid/test manifests: split -> list of labels."""
    csvs = {}
    for split, split_labels in labels.items():
        path = os.path.join(folder, f"{split}.csv")
        with open(path, "w", newline="", encoding="utf-8") as fout:
            writer = csv.writer(fout)
            writer.writerow(header)
            for i, label in enumerate(split_labels):
                wav = os.path.join(folder, f"{split}{i}.wav")
                sf.write(wav, np.full(1600, 0.1), 16000)
                writer.writerow([f"{split}{i}", wav, 0.1, label])
        csvs[split] = path
    return csvs


def test_label_unseen_in_training_is_refused_before_training(tmp_path):
    csvs = write_manifests(
        str(tmp_path),
        {"train": ["dog", "cat"], "valid": ["dog"], "test": ["cat", "owl", "owl"]},
    )
    with pytest.raises(ValueError) as info:
        classification_datasets(
            csvs, CategoricalEncoder(), str(tmp_path / "label_encoder.txt")
        )
    message = str(info.value)
    assert csvs["test"] in message and "['owl']" in message
    assert "['test1', 'test2']" in message  # the clips


def test_user_manifest_with_another_label_column_names_file_and_columns(tmp_path):
    csvs = write_manifests(
        str(tmp_path),
        {"train": ["dog"], "valid": ["dog"], "test": ["dog"]},
        header=("ID", "wav", "duration", "label"),
    )
    with pytest.raises(KeyError) as info:
        classification_datasets(csvs, CategoricalEncoder(), str(tmp_path / "le.txt"))
    message = str(info.value)
    assert csvs["train"] in message and "class_name" in message
    assert "label_column" in message
    datasets = classification_datasets(
        csvs, CategoricalEncoder(), str(tmp_path / "le.txt"), label_column="label"
    )
    assert datasets["train"][0]["label"] == "dog"


def test_user_manifest_with_a_byte_order_mark_and_duplicate_ids(tmp_path):
    csvs = write_manifests(
        str(tmp_path), {"train": ["dog", "cat"], "valid": ["dog"], "test": ["cat"]}
    )
    for path in csvs.values():
        with open(path, encoding="utf-8") as fin:
            text = fin.read()
        with open(path, "w", encoding="utf-8-sig") as fout:
            fout.write(text)
    datasets = classification_datasets(
        csvs, CategoricalEncoder(), str(tmp_path / "le.txt")
    )
    assert datasets["train"][1]["id"] == "train1"
    with open(csvs["valid"], "a") as fout:
        fout.write(f"valid0,{tmp_path}/valid0.wav,0.1,dog\n")
    with pytest.raises(ValueError, match="more than once") as info:
        classification_datasets(csvs, CategoricalEncoder(), str(tmp_path / "le.txt"))
    assert csvs["valid"] in str(info.value) and "valid0" in str(info.value)


def test_cut_is_reported_once_per_clip(tmp_path, caplog):
    path = str(tmp_path / "long.wav")
    sf.write(path, np.full(16000, 0.1), 16000)
    with caplog.at_level(logging.WARNING):
        for _ in range(3):  # three epochs
            assert read_clip(path, max_seconds=0.5).shape == torch.Size([8000])
    assert caplog.text.count("is longer than the backbone's maximum") == 1
