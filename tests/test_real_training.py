"""Short trainings on real weights (``real`` marker): a linear probe on the
converted Whisper tiny.en's pooled encoder features learns the built Speech
Commands task far above chance, on test voices never heard in training; a
clip gives the same embedding alone and in a batch. Skipped, with the
command, when the assets are absent."""

import csv
import os
import sys

import pytest
import soundfile as sf
import torch

from tests.real_assets_fixture import real_assets_or_skip

pytestmark = pytest.mark.real
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DIGITS = "zero one two three four five six seven eight nine".split()


@pytest.fixture(scope="module")
def assets():
    return real_assets_or_skip(["whisper", "speech_commands"])


@pytest.fixture(scope="module")
def backbone(assets):
    from speechbrain_moe.lobes.whisper import Whisper

    return Whisper(assets.whisper).eval()


def _manifests(assets, tmp_path_factory):
    sys.path.insert(0, os.path.join(REPO, "recipes", "Google-speech-commands", "PETL"))
    try:
        from prepare_GSC import prepare_GSC
    finally:
        sys.path.pop(0)
    csvs = prepare_GSC(assets.speech_commands, str(tmp_path_factory.mktemp("gsc")))
    out = {}
    for split in ("train", "test"):
        with open(csvs[split], newline="") as fin:
            out[split] = list(csv.DictReader(fin))
    return out


def _embed(backbone, rows, batch=32):
    feats = []
    for start in range(0, len(rows), batch):
        wavs = [
            torch.from_numpy(sf.read(r["wav"], dtype="float32")[0])
            for r in rows[start : start + batch]
        ]
        longest = max(len(w) for w in wavs)
        padded = torch.stack(
            [torch.nn.functional.pad(w, (0, longest - len(w))) for w in wavs]
        )
        lens = torch.tensor([len(w) / longest for w in wavs])
        with torch.no_grad():
            feats.append(backbone(padded, lens))
    return torch.cat(feats)


def test_linear_probe_on_real_whisper_beats_chance(assets, backbone, tmp_path_factory):
    """The ten digit words (chance 0.1; the test split holds unseen espeak-ng
    voices and the real Asterisk speaker), trained on twelve voices: the probe
    must reach at least 0.55."""
    rows = {
        split: [r for r in split_rows if r["class_name"] in DIGITS]
        for split, split_rows in _manifests(assets, tmp_path_factory).items()
    }
    # Twelve training voices are plenty for a probe (and keep the test short).
    keep = sorted({r["speaker"] for r in rows["train"]})[:12]
    rows["train"] = [r for r in rows["train"] if r["speaker"] in keep]
    classes = sorted({r["class_name"] for r in rows["train"]})
    feats = {s: _embed(backbone, r) for s, r in rows.items()}
    labels = {
        s: torch.tensor([classes.index(r["class_name"]) for r in rows[s]]) for s in rows
    }
    mean, std = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    torch.manual_seed(0)
    probe = torch.nn.Linear(feats["train"].shape[1], len(classes))
    optimizer = torch.optim.Adam(probe.parameters(), lr=1e-2)
    for _ in range(300):
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(
            probe((feats["train"] - mean) / std), labels["train"]
        )
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        predicted = probe((feats["test"] - mean) / std).argmax(1)
    accuracy = (predicted == labels["test"]).float().mean().item()
    chance = 1 / len(classes)
    print(f"linear probe, {len(classes)} words: test accuracy {accuracy:.3f}")
    assert accuracy >= chance + 0.45, (
        f"test accuracy {accuracy:.3f} (chance {chance:.3f})"
    )


def test_real_whisper_clip_alone_equals_clip_in_batch(assets, backbone):
    folder = os.path.join(assets.speech_commands, "yes")
    names = sorted(os.listdir(folder))[:2]
    short = torch.from_numpy(
        sf.read(os.path.join(folder, names[0]), dtype="float32")[0]
    )
    other = torch.from_numpy(
        sf.read(os.path.join(folder, names[1]), dtype="float32")[0]
    )
    longer = torch.cat([other, other, other])
    batch = torch.zeros(2, len(longer))
    batch[0, : len(short)], batch[1] = short, longer
    with torch.no_grad():
        alone = backbone(short[None])
        together = backbone(batch, torch.tensor([len(short) / len(longer), 1.0]))
    torch.testing.assert_close(together[0], alone[0], atol=1e-4, rtol=1e-4)
