"""Training on real weights through a recipe (``real`` marker): Whisper tiny.en
through the Speech Commands recipe, then inference from the run's output folder.

One short run (a bottleneck adapter, four epochs, four keywords said by
espeak-ng voices, the test voices never heard in training) is shared by
the tests: it must beat chance by a stated margin, the packaged model must
load from the output folder with the real encoder and reproduce the
recipe's test accuracy, and a clip classified alone must get the same
prediction as inside a padded batch of longer clips.

Skipped, with the reason and the command, when the assets (``make
real-assets``) or espeak-ng / sox are missing.
"""

import os
import shutil
import subprocess
import sys

import pytest
import soundfile as sf
import torch

from tests.real_assets_fixture import real_assets_or_skip

pytestmark = pytest.mark.real

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "Google-speech-commands", "PETL")
WORDS = ["yes", "no", "left", "right"]
CHANCE = 1 / len(WORDS)
# A bottleneck adapter on Whisper tiny.en reaches 1.0 here; the margin
# leaves room for an unlucky clip or two (a broken encoder, conversion or
# training stays at chance).
MARGIN = 0.4


def _build_task(folder):
    from tools.real_assets.tasks import LETTERS_DEFAULTS, build_spoken_letters

    params = dict(
        LETTERS_DEFAULTS,
        letters=WORDS,  # any words: each class folder's name is what is said
        voices={"train": 6, "valid": 1, "test": 4},
        snr_db=None,
        seed=5,
    )
    return build_spoken_letters(folder, params)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A four-epoch adapter run of the Speech Commands recipe on real weights."""
    assets = real_assets_or_skip(["whisper"])
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng/sox are not installed: apt-get install espeak-ng sox")
    root = tmp_path_factory.mktemp("real_training")
    data = root / "keywords"
    summary = _build_task(str(data))
    out = root / "run"
    cmd = [
        sys.executable,
        os.path.join(RECIPE, "train.py"),
        os.path.join(RECIPE, "hparams", "whisper.yaml"),
        f"--data_folder={data}",
        f"--backbone_source={assets.whisper}",
        f"--output_folder={out}",
        "--petl_method=adapter",
        "--number_of_epochs=4",
        "--batch_size=4",
        "--test_batch_size=8",
        "--lr=0.005",
        "--device=cpu",
        "--noprogressbar",
    ]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        cmd, cwd=str(root), env=env, capture_output=True, text=True, timeout=1200
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "data": data, "summary": summary, "whisper": assets.whisper}


def _test_clips(data):
    with open(os.path.join(data, "testing_list.txt")) as fin:
        return [line.strip() for line in fin if line.strip()]


def test_short_real_training_beats_chance(trained):
    """The recipe's test accuracy (voices unseen in training) is at least
    chance + MARGIN."""
    from speechbrain_moe.crossval import read_test_accuracy

    accuracy = read_test_accuracy(str(trained["out"] / "train_log.txt"))
    assert accuracy >= CHANCE + MARGIN, (
        f"test accuracy {accuracy:.3f} < chance {CHANCE:.3f} + {MARGIN}"
    )


def test_inference_from_output_folder_with_real_model(trained):
    """PETLAudioClassifier.from_hparams(output folder) loads the real encoder
    with the trained adapter and reproduces the recipe's test accuracy."""
    from speechbrain_moe.crossval import read_test_accuracy
    from speechbrain_moe.inference import PETLAudioClassifier

    model = PETLAudioClassifier.from_hparams(
        source=str(trained["out"]), run_opts={"device": "cpu"}
    )
    backbone = model.mods.backbone
    config = backbone.model.config
    assert (config.d_model, config.encoder_layers) == (384, 4)  # Whisper tiny.en
    assert backbone.petl_method == "adapter"
    clips = _test_clips(trained["data"])
    correct = 0
    for rel in clips:
        _, _, _, label = model.classify_file(os.path.join(trained["data"], rel))
        correct += label[0] == rel.split("/")[0]
    accuracy = correct / len(clips)
    logged = read_test_accuracy(str(trained["out"] / "train_log.txt"))
    assert accuracy >= CHANCE + MARGIN
    # Batched (recipe) and one-by-one (here) predictions may differ by at
    # most one borderline clip.
    assert abs(accuracy - logged) <= 1 / len(clips) + 1e-9, (accuracy, logged)


def test_clip_alone_and_in_batch_same_prediction(trained):
    """A short clip padded inside a batch of longer clips gets the same
    prediction (and log-posteriors) as on its own."""
    from speechbrain_moe.inference import PETLAudioClassifier

    model = PETLAudioClassifier.from_hparams(
        source=str(trained["out"]), run_opts={"device": "cpu"}
    )
    clips = []
    for rel in _test_clips(trained["data"])[:6]:
        audio, _ = sf.read(os.path.join(trained["data"], rel), dtype="float32")
        clips.append(torch.from_numpy(audio))
    clips.sort(key=len)
    short, longer = clips[0], clips[1:]
    # Longer partners: the others, and one of them doubled (twice as long).
    longer = longer + [torch.cat([longer[-1], longer[-1]])]
    alone, _, index_alone, _ = model.classify_batch(short[None])
    length = max(len(c) for c in longer)
    batch = torch.zeros(1 + len(longer), length)
    lens = torch.zeros(1 + len(longer))
    for i, clip in enumerate([short, *longer]):
        batch[i, : len(clip)] = clip
        lens[i] = len(clip) / length
    assert lens[0] < 0.6  # the clip really is padded in the batch
    batched, _, index_batched, _ = model.classify_batch(batch, lens)
    assert int(index_batched[0]) == int(index_alone[0])
    torch.testing.assert_close(batched[0], alone[0], atol=1e-4, rtol=1e-4)
