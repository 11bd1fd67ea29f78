"""The real-asset tools on tiny inputs (no network): the CTranslate2 reader,
the Whisper name mapping, stamps, settings, missing-package messages, and the
synthetic data sets in the recipes' layouts (when espeak-ng and sox exist)."""

import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
import torch

from tools.real_assets import build, fetch
from tools.real_assets.__main__ import apply_setting
from tools.real_assets.ct2 import CT2Model, read_model_bin, write_model_bin
from tools.real_assets.layout import RealAssets
from tools.real_assets.whisper import (
    fake_whisper_arrays,
    whisper_config_dict,
    whisper_state_dict,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HAVE_SPEECH = bool(shutil.which("espeak-ng") and shutil.which("sox"))


def test_model_bin_round_trip_and_aliases(tmp_path):
    arrays = {
        "a/weight": np.arange(12, dtype=np.float16).reshape(3, 4),
        "b/flag": np.array(1, np.int8),
        "c/ids": np.array([5, 7], np.int32),
    }
    path = str(tmp_path / "model.bin")
    write_model_bin(path, "WhisperSpec", 3, arrays, {"d/weight": "a/weight"})
    model = read_model_bin(path)
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    for name, array in arrays.items():
        assert model[name].dtype == array.dtype
        np.testing.assert_array_equal(model[name], array)
    np.testing.assert_array_equal(model["d/weight"], arrays["a/weight"])


def test_model_bin_rejects_other_versions(tmp_path):
    path = str(tmp_path / "model.bin")
    write_model_bin(path, "S", 1, {})
    raw = bytearray(open(path, "rb").read())
    raw[0] = 5
    open(path, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match="binary version 5"):
        read_model_bin(path)


def test_whisper_mapping_fills_every_parameter():
    """Every transformers parameter comes from model.bin, with the fused
    projections split in the right order."""
    from transformers import WhisperConfig, WhisperForConditionalGeneration

    arrays = fake_whisper_arrays(d=8, layers=2, vocab=51864, heads=2, ffn=16)
    model = CT2Model("WhisperSpec", 3, arrays, {})
    fields = whisper_config_dict(model, {"suppress_ids": [1]})
    hf = WhisperForConditionalGeneration(WhisperConfig(**fields))
    state = {k: torch.from_numpy(v) for k, v in whisper_state_dict(model).items()}
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert missing == ["proj_out.weight"] and unexpected == []
    fused = arrays["encoder/layer_1/self_attention/linear_0/weight"].astype(np.float32)
    attn = hf.model.encoder.layers[1].self_attn
    for i, proj in enumerate([attn.q_proj, attn.k_proj, attn.v_proj]):
        np.testing.assert_array_equal(
            proj.weight.detach().numpy(), fused[8 * i : 8 * (i + 1)]
        )
    cross = arrays["decoder/layer_0/attention/linear_1/weight"].astype(np.float32)
    enc_attn = hf.model.decoder.layers[0].encoder_attn
    np.testing.assert_array_equal(enc_attn.v_proj.weight.detach().numpy(), cross[8:])
    hf.tie_weights()
    assert (
        hf.proj_out.weight.data_ptr() == hf.model.decoder.embed_tokens.weight.data_ptr()
    )


def test_whisper_mapping_refuses_a_key_bias():
    arrays = fake_whisper_arrays(d=8, layers=1)
    arrays["encoder/layer_0/self_attention/linear_0/bias"][9] = 1.0
    with pytest.raises(ValueError, match="k_proj has no bias"):
        whisper_state_dict(CT2Model("WhisperSpec", 3, arrays, {}))


def test_steps_are_stamped_and_skipped(tmp_path, monkeypatch):
    calls = []

    def fake_build(assets, out, params):
        calls.append(dict(params))
        open(os.path.join(out, "file"), "w").close()
        return {"n": params["n"]}

    monkeypatch.setitem(build.BUILDERS, "whisper", (lambda a: a.whisper, fake_build))
    assets = RealAssets(str(tmp_path))
    first = build.run_step(assets, "whisper", {"n": 1})
    again = build.run_step(assets, "whisper", {"n": 1})
    changed = build.run_step(assets, "whisper", {"n": 2})
    assert (first["skipped"], again["skipped"], changed["skipped"]) == (
        False,
        True,
        False,
    )
    assert calls == [{"n": 1}, {"n": 2}]
    assert os.path.isfile(os.path.join(assets.whisper, "file"))
    assert not os.path.exists(assets.whisper + ".partial")
    manifest = build.write_manifest(assets)
    assert manifest["steps"]["whisper"]["params"] == {"n": 2}


def test_settings_override_parameters():
    params = build.default_params()
    apply_setting(params, 'speech_commands.words=["yes","no"]')
    apply_setting(params, "librispeech.voices.test-clean=9")
    assert params["speech_commands"]["words"] == ["yes", "no"]
    assert params["librispeech"]["voices"]["test-clean"] == 9
    with pytest.raises(ValueError, match="unknown key 'vocies'"):
        apply_setting(params, "librispeech.vocies=3")


def test_missing_program_names_package_and_command(monkeypatch):
    monkeypatch.setattr(fetch.os, "geteuid", lambda: 1000)
    with pytest.raises(fetch.MissingPackageError) as err:
        fetch.require_programs({"no-such-program-xyz": "no-such-pkg"})
    assert "no-such-program-xyz" in str(err.value)
    assert "apt-get install no-such-pkg" in str(err.value)


def test_missing_module_names_pip_command():
    with pytest.raises(fetch.MissingPackageError, match=r"speechbrain-moe\[real\]"):
        fetch.require_modules({"no_such_module_xyz": "no-such-module-xyz"})


def _recipe_module(folder, name):
    sys.path.insert(0, os.path.join(REPO, "recipes", *folder.split("/")))
    try:
        return __import__(name)
    finally:
        sys.path.pop(0)


def _rows(path):
    with open(path, newline="") as fin:
        return list(csv.DictReader(fin))


@pytest.mark.skipif(
    not HAVE_SPEECH, reason="needs espeak-ng and sox (apt-get install espeak-ng sox)"
)
def test_speech_commands_layout_with_unseen_test_voices(tmp_path):
    from tools.real_assets.datasets import build_speech_commands

    params = {
        "words": ["yes", "no"],
        "voices": {"train": 2, "valid": 1, "test": 1},
        "repeats": 1,
        "snr_db": 20.0,
        "real_speaker_split": "test",
        "rate": [100, 110],
        "pitch": [30, 30],
        "seed": 0,
    }
    out = str(tmp_path / "gsc")
    summary = build_speech_commands(out, params)
    gsc = _recipe_module("Google-speech-commands/PETL", "prepare_GSC")
    csvs = gsc.prepare_GSC(out, str(tmp_path / "manifests"))
    rows = {split: _rows(path) for split, path in csvs.items()}
    assert {s: len(r) for s, r in rows.items()} == {"train": 4, "valid": 2, "test": 2}
    speakers = {s: {row["speaker"] for row in r} for s, r in rows.items()}
    assert not speakers["test"] & (speakers["train"] | speakers["valid"])
    for name in (v for vs in summary["voices"].values() for v in vs):
        rate, pitch = name.rsplit("-s", 1)[1].split("-p")
        assert 100 <= int(rate) <= 110 and pitch == "30", name
    variants = {s: set(v) for s, v in summary["variants"].items()}
    assert not variants["test"] & variants["train"]
    assert all(float(row["duration"]) >= 1.0 for r in rows.values() for row in r)


@pytest.mark.skipif(
    not HAVE_SPEECH, reason="needs espeak-ng and sox (apt-get install espeak-ng sox)"
)
def test_librispeech_layout_disjoint_voices_and_sentences(tmp_path):
    from tools.real_assets.datasets import build_librispeech

    params = {
        "voices": {"train-clean-100": 2, "test-clean": 1},
        "utterances_per_voice": {"train-clean-100": 2, "test-clean": 2},
        "snr_db": None,
        "seed": 0,
    }
    out = str(tmp_path / "LibriSpeech")
    build_librispeech(out, params)
    prep = _recipe_module("LibriSpeech/LLM_bridge", "librispeech_prepare")
    csvs = prep.prepare_librispeech(out, str(tmp_path / "m"), list(params["voices"]))
    train, test = _rows(csvs["train-clean-100"]), _rows(csvs["test-clean"])
    assert (len(train), len(test)) == (4, 2)
    assert not {r["spk_id"] for r in train} & {r["spk_id"] for r in test}
    assert not {r["wrd"] for r in train} & {r["wrd"] for r in test}
    assert all(
        r["wrd"] == r["wrd"].upper() and float(r["duration"]) > 0.5 for r in test
    )
    voices = json.load(open(os.path.join(out, "voices.json")))
    assert voices["utterances"] == {"train-clean-100": 4, "test-clean": 2}
