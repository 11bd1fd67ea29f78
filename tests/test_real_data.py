"""The built real-asset data sets (``real`` marker) load in the recipes'
own data preparations, with the counts the build recorded and no test voice
heard in training. Skipped, with the command, when the assets are absent."""

import csv
import json
import os
import sys

import pytest

from tests.real_assets_fixture import real_assets_or_skip

pytestmark = pytest.mark.real
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DATA_STEPS = [
    "speech_commands",
    "fluent_speech_commands",
    "librispeech",
    "animal_sounds",
]


@pytest.fixture(scope="module")
def assets():
    return real_assets_or_skip(DATA_STEPS)


def _recipe(folder, module):
    sys.path.insert(0, os.path.join(REPO, "recipes", *folder.split("/")))
    try:
        return __import__(module)
    finally:
        sys.path.pop(0)


def _rows(path):
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


def _summary(folder):
    with open(os.path.join(folder, "voices.json")) as fin:
        return json.load(fin)


def test_speech_commands_in_the_gsc_recipe(assets, tmp_path):
    prep = _recipe("Google-speech-commands/PETL", "prepare_GSC")
    csvs = prep.prepare_GSC(assets.speech_commands, str(tmp_path))
    rows = {split: _rows(path) for split, path in csvs.items()}
    assert {s: len(r) for s, r in rows.items()} == _summary(assets.speech_commands)[
        "clips"
    ]
    speakers = {s: {row["speaker"] for row in r} for s, r in rows.items()}
    assert not speakers["test"] & (speakers["train"] | speakers["valid"])


def test_fluent_speech_commands_in_the_fsc_recipe(assets, tmp_path):
    prep = _recipe("fluent-speech-commands/PETL", "prepare")
    csvs = prep.prepare_FSC(assets.fluent_speech_commands, str(tmp_path))
    rows = {split: _rows(path) for split, path in csvs.items()}
    summary = _summary(assets.fluent_speech_commands)
    assert {s: len(r) for s, r in rows.items()} == summary["utterances"]
    assert len({row["class_name"] for row in rows["test"]}) == summary["intents"] == 31
    speakers = {s: {row["speaker"] for row in r} for s, r in rows.items()}
    assert not speakers["test"] & speakers["train"]


def test_librispeech_in_the_bridge_recipe(assets, tmp_path):
    prep = _recipe("LibriSpeech/LLM_bridge", "librispeech_prepare")
    summary = _summary(assets.librispeech)
    splits = list(summary["utterances"])
    csvs = prep.prepare_librispeech(assets.librispeech, str(tmp_path), splits)
    rows = {split: _rows(csvs[split]) for split in splits}
    assert {s: len(r) for s, r in rows.items()} == summary["utterances"]
    train, test = rows["train-clean-100"], rows["test-clean"]
    assert not {r["spk_id"] for r in train} & {r["spk_id"] for r in test}
    assert not {r["wrd"] for r in train} & {r["wrd"] for r in test}


def test_animal_sounds_in_the_esc50_recipe(assets, tmp_path):
    prep = _recipe("ESC50/PETL", "esc50_prepare")
    csvs = prep.prepare_esc50(assets.animal_sounds, str(tmp_path), test_fold=1)
    rows = {split: _rows(path) for split, path in csvs.items()}
    assert sum(len(r) for r in rows.values()) == 400
    assert {row["class_name"] for row in rows["test"]} == {
        "cat", "cow", "dog", "duck", "frog", "horse", "owl", "pig", "rooster", "sheep"
    }  # fmt: skip
