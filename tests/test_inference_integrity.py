"""Issue 20, inference: a run's inference folder is self-contained and
verified, it loads only with its own class and call, and the inference
classes validate their input at the boundary. Models are trained by the
recipes on synthetic data (tiny AST with a user's own method file; tiny
Whisper + LLM bridge)."""

import csv
import os
import shutil
import subprocess

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import PYTHON, REPO
from speech_llm_helpers import bridge_recipe_command

from speechbrain_moe.inference import PETLAudioClassifier, SpeechLLMTranscriber

ENV = dict(os.environ, OMP_NUM_THREADS="1")
ESC50 = os.path.join(REPO, "recipes", "ESC50", "PETL")
BRIDGE = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")


def run(cmd, cwd):
    """Runs a recipe; fails the test with its output on error."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def user_run(tmp_path_factory, tiny_ast_dir):
    """A 2-epoch ESC-50 run with a user's own method file (a copy of
    soft_moa.yaml, 4 experts) outside the output folder."""
    from synthetic import generate

    root = tmp_path_factory.mktemp("integrity_esc50")
    data = generate("esc50", str(root / "data"), num_classes=3)
    method = root / "mine" / "my_soft_moa.yaml"
    method.parent.mkdir()
    packaged = os.path.join(REPO, "speechbrain_moe", "hparams", "petl", "soft_moa.yaml")
    text = open(packaged, encoding="utf-8").read()
    method.write_text(text.replace("num_experts: 14", "num_experts: 4"))
    out = root / "exp"
    run(
        [
            PYTHON,
            "train.py",
            "hparams/ast.yaml",
            f"--data_folder={data}",
            f"--backbone_source={tiny_ast_dir}",
            f"--output_folder={out}",
            f"--petl_method={method}",
            "--n_classes=3",
            "--number_of_epochs=2",
            "--lr=0.01",
            "--batch_size=4",
            "--max_frames=100",
            "--device=cpu",
            "--noprogressbar",
        ],
        ESC50,
    )
    with open(out / "test.csv", newline="") as fin:
        wavs = [row["wav"] for row in csv.DictReader(fin)][:3]
    model = PETLAudioClassifier.from_hparams(source=str(out))
    reference = [model.classify_file(w)[0] for w in wavs]
    return {"out": out, "method": method, "wavs": wavs, "reference": reference}


@pytest.fixture(scope="module")
def bridge_run(tmp_path_factory):
    """A 1-epoch LLM-bridge run (tiny Whisper, tiny LLM, MoE-Adapter)."""
    from synthetic.librispeech import make_librispeech
    from synthetic.llm import make_tiny_llm
    from synthetic.models import make_tiny_whisper

    root = tmp_path_factory.mktemp("integrity_bridge")
    libri = make_librispeech(str(root / "LibriSpeech"))
    llm = make_tiny_llm(str(root / "llm"))
    whisper = make_tiny_whisper(str(root / "whisper"))
    out = root / "exp"
    overrides = (
        "{fused_size: 64, expert_hidden: 32, aggregation_hidden: 128, "
        "num_experts: 4, top_k: 2}"
    )
    run(
        [PYTHON, *bridge_recipe_command(out, libri, llm, whisper, overrides)]
        + [
            "--max_new_tokens=4",
            "--number_of_epochs=1",
            "--select_n_sentences=2",
            "--valid_decode=False",
            "--batch_size=2",
            "--test_batch_size=1",
            "--device=cpu",
            "--noprogressbar",
        ],
        BRIDGE,
    )
    return out


def copy_run(out, target):
    """A copy of a run's output folder (without its packaged model)."""
    shutil.copytree(out, target, ignore=shutil.ignore_patterns("inference_model"))
    return target


def load(source, **kwargs):
    """The classifier of ``source`` (a run or packaged folder)."""
    return PETLAudioClassifier.from_hparams(source=str(source), **kwargs)


def assert_same_predictions(model, user_run):
    """``model`` gives the log-posteriors the run gave right after training."""
    for wav, expected in zip(user_run["wavs"], user_run["reference"]):
        assert torch.equal(model.classify_file(wav)[0], expected), wav


@pytest.mark.slow
@pytest.mark.parametrize(
    "change", ["edit_user_method", "delete_user_method", "move_run", "move_package"]
)
def test_inference_folder_is_self_contained(user_run, tmp_path, change):
    """The folder holds a copy of the user's method file: editing (a shape-
    preserving setting) or deleting that file after training changes nothing,
    and the run folder, or its packaged model alone, loads after a move with
    the original gone."""
    exp = copy_run(user_run["out"], tmp_path / "exp")
    method = tmp_path / "my_soft_moa.yaml"
    shutil.copyfile(user_run["method"], method)
    # the copy of the run still names the original method file: point it at
    # this test's own copy of it (what a run with --petl_method=<method>
    # would have written), so the original stays untouched
    for name in ("inference.yaml", "hyperparams.yaml"):
        path = exp / name
        path.write_text(path.read_text().replace(str(user_run["method"]), str(method)))
    source = exp
    if change == "edit_user_method":
        text = method.read_text()
        assert "mode: parallel" in text
        method.write_text(text.replace("mode: parallel", "mode: sequential"))
    elif change == "delete_user_method":
        method.unlink()
    elif change == "move_run":
        source = shutil.move(str(exp), str(tmp_path / "moved"))
        method.unlink()
    else:
        load(exp, savedir=str(tmp_path / "first"))
        source = shutil.copytree(exp / "inference_model", tmp_path / "package")
        shutil.rmtree(exp)
        method.unlink()
    model = load(source, savedir=str(tmp_path / "collected"))
    assert_same_predictions(model, user_run)
    # built from the folder's own copy of the method file
    folders = (str(source), os.path.join(str(source), "inference_model"))
    assert os.path.dirname(model.mods.backbone.petl_method) in folders
    copy = open(model.mods.backbone.petl_method, encoding="utf-8").read()
    assert copy == open(user_run["method"], encoding="utf-8").read()


def flip_byte(path, offset=None):
    """Flips one byte in the middle of ``path`` (size unchanged)."""
    data = bytearray(open(path, "rb").read())
    offset = len(data) // 2 if offset is None else offset
    data[offset] ^= 0xFF
    open(path, "wb").write(bytes(data))


def only_checkpoint(exp):
    """The single checkpoint folder of a run."""
    (folder,) = [p for p in (exp / "save").iterdir() if p.name.startswith("CKPT+")]
    return folder


def add_worse_checkpoint(exp):
    """An intact second checkpoint with a lower validation accuracy."""
    import json

    import yaml

    best = only_checkpoint(exp)
    worse = best.parent / (best.name + "+worse")
    shutil.copytree(best, worse)
    meta = yaml.safe_load((worse / "CKPT.yaml").read_text())
    meta["accuracy"] = -1.0
    (worse / "CKPT.yaml").write_text(yaml.safe_dump(meta))
    manifest = json.loads((worse / "MANIFEST.json").read_text())
    import hashlib

    data = (worse / "CKPT.yaml").read_bytes()
    manifest["files"]["CKPT.yaml"] = {
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
    }
    (worse / "MANIFEST.json").write_text(json.dumps(manifest))
    return best, worse


@pytest.mark.slow
@pytest.mark.parametrize(
    "damage",
    [
        "flip_run_checkpoint",
        "flip_package",
        "truncate_best_of_two",
        "truncate_only",
    ],
)
def test_damaged_checkpoint_is_refused(user_run, tmp_path, damage):
    """Flipped bytes (same size) in the run's checkpoint or in the packaged
    copy, and a truncated best checkpoint, are refused naming the file and
    the fix; another checkpoint is never packaged silently."""
    exp = copy_run(user_run["out"], tmp_path / "exp")
    source = exp
    if damage == "flip_run_checkpoint":
        damaged = only_checkpoint(exp) / "backbone.ckpt"
        flip_byte(damaged)
        match = "SHA-256 mismatch"
    elif damage == "flip_package":
        load(exp, savedir=str(tmp_path / "first"))
        source = exp / "inference_model"
        damaged = source / "classifier.ckpt"
        flip_byte(damaged)
        match = "SHA-256 mismatch"
    elif damage == "truncate_best_of_two":
        best, _ = add_worse_checkpoint(exp)
        damaged = best / "backbone.ckpt"
        damaged.write_bytes(damaged.read_bytes()[:100])
        match = "truncated"
    else:
        damaged = only_checkpoint(exp) / "backbone.ckpt"
        damaged.write_bytes(damaged.read_bytes()[:100])
        match = "truncated"
    with pytest.raises(RuntimeError) as err:
        load(source, savedir=str(tmp_path / "s"))
    message = str(err.value)
    assert str(damaged) in message and match in message, message
    assert "Restore" in message, message
    assert "train the model" not in message


@pytest.mark.slow
@pytest.mark.parametrize("folder", ["run", "package"])
@pytest.mark.parametrize("wrong", ["transcriber_on_classifier", "classifier_on_bridge"])
def test_wrong_inference_class_is_refused(
    user_run, bridge_run, tmp_path, wrong, folder
):
    """The folder records which class loads it; the other one refuses,
    naming the right one, before building anything."""
    if wrong == "transcriber_on_classifier":
        exp, cls, right = user_run["out"], SpeechLLMTranscriber, "PETLAudioClassifier"
        right_cls = PETLAudioClassifier
    else:
        exp, cls, right = bridge_run, PETLAudioClassifier, "SpeechLLMTranscriber"
        right_cls = SpeechLLMTranscriber
    source = exp
    if folder == "package":
        right_cls.from_hparams(source=str(exp), savedir=str(tmp_path / "ok"))
        source = exp / "inference_model"
    with pytest.raises(TypeError) as err:
        cls.from_hparams(source=str(source), savedir=str(tmp_path / "s"))
    message = str(err.value)
    assert f"{right}.from_hparams(source=" in message, message
    assert f"not for {cls.__name__}" in message, message


@pytest.mark.slow
@pytest.mark.parametrize("call", ["training_yaml", "save_folder", "missing_folder"])
def test_from_hparams_wrong_arguments_name_the_right_call(user_run, tmp_path, call):
    exp = user_run["out"]
    if call == "training_yaml":
        kwargs = {"source": str(exp), "hparams_file": "hyperparams.yaml"}
        error, expected = (
            ValueError,
            f"PETLAudioClassifier.from_hparams(source='{exp}')",
        )
    elif call == "save_folder":
        kwargs = {"source": str(exp / "save")}
        error, expected = FileNotFoundError, f"from_hparams(source='{exp}')"
    else:
        kwargs = {"source": str(tmp_path / "nothing_here")}
        error, expected = FileNotFoundError, "output_folder of a recipe run"
    with pytest.raises(error) as err:
        PETLAudioClassifier.from_hparams(savedir=str(tmp_path / "s"), **kwargs)
    assert expected in str(err.value), str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("labels", [["a", "b"], ["a", "b", "c", "d", "e"]])
def test_stale_label_encoder_is_refused(user_run, tmp_path, labels):
    """save/label_encoder.txt rewritten after training (another number of
    classes than the head has) is refused with the fix, not decoded into a
    wrong label or a KeyError."""
    from speechbrain.dataio.encoder import CategoricalEncoder

    exp = copy_run(user_run["out"], tmp_path / "exp")
    encoder = CategoricalEncoder()
    encoder.update_from_iterable(labels)
    encoder.save(str(exp / "save" / "label_encoder.txt"))
    with pytest.raises(ValueError) as err:
        load(exp, savedir=str(tmp_path / "s"))
    message = str(err.value)
    assert f"head has 3 outputs but the label encoder has {len(labels)}" in message
    assert "save/label_encoder.txt" in message and "--output_folder" in message


@pytest.fixture(scope="module")
def classifier(user_run):
    """The classifier of the user run, and one of its test clips."""
    from speechbrain_moe.dataio import read_clip

    model = PETLAudioClassifier.from_hparams(source=str(user_run["out"]))
    return model, read_clip(user_run["wavs"][0])


def pcm(wav, dtype):
    """``wav`` (float in [-1, 1)) quantised as integer PCM of ``dtype``, and
    the float waveform that PCM stands for (as soundfile reads it)."""
    bits = {np.int16: 15, np.int32: 31, np.int8: 7, np.uint8: 7}[dtype]
    offset = 128 if dtype is np.uint8 else 0
    ints = np.clip(np.round(wav.numpy() * 2.0**bits), -(2**bits), 2**bits - 1)
    as_float = torch.from_numpy(ints / 2.0**bits).float()
    return (ints + offset).astype(dtype), as_float


@pytest.mark.slow
@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.uint8])
@pytest.mark.parametrize("container", ["numpy", "torch"])
def test_integer_pcm_equals_float_input(classifier, dtype, container):
    model, wav = classifier
    ints, as_float = pcm(wav, dtype)
    if container == "torch":
        ints = torch.from_numpy(ints)
    expected = model.classify_batch(as_float)
    got = model.classify_batch(ints)
    assert torch.allclose(got[0], expected[0], atol=1e-5)
    assert got[3] == expected[3]


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["samples_channels", "batch_samples_channels"])
def test_multichannel_input_is_mixed_down(classifier, tmp_path, layout):
    """``[samples, channels]`` (what ``soundfile.read`` gives for stereo) is
    one clip mixed down, as ``classify_file`` mixes a stereo file down."""
    model, wav = classifier
    stereo = torch.stack([wav, 0.5 * wav], dim=1)  # [samples, 2]
    path = tmp_path / "stereo.wav"
    sf.write(str(path), stereo.numpy(), 16000, subtype="FLOAT")
    expected = model.classify_file(str(path))[0]
    data = sf.read(str(path), dtype="float32")[0]
    data = data if layout == "samples_channels" else data[None]
    got = model.classify_batch(data)[0]
    assert got.shape == expected.shape == (1, 3)
    assert torch.allclose(got, expected, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "wav_lens, hint",
    [
        ([16000.0], "lengths in samples"),
        ([1.5], "lengths in samples"),
        ([8000], "lengths in samples"),
        ([0.0], "relative lengths in (0, 1]"),
        ([1.0, 1.0], "for a batch of 1 clip"),
        ([[1.0]], "for a batch of 1 clip"),
        ([float("nan")], "relative lengths in (0, 1]"),
    ],
)
def test_wav_lens_are_checked(classifier, wav_lens, hint):
    model, wav = classifier
    with pytest.raises(ValueError) as err:
        model.classify_batch(wav[None], torch.tensor(wav_lens))
    assert "relative lengths in (0, 1], one per clip" in str(err.value)
    assert hint in str(err.value)


@pytest.mark.slow
@pytest.mark.parametrize("shape", [(0, 16000), (0, 16000, 2)])
def test_empty_batch_is_a_clear_error(classifier, shape):
    model, _ = classifier
    with pytest.raises(ValueError, match="empty"):
        model.classify_batch(torch.zeros(shape))


@pytest.mark.slow
def test_batch_equals_single_clips(classifier, user_run):
    """A padded int16 NumPy batch with relative lengths gives each clip the
    prediction it gets alone (float tensor)."""
    from speechbrain_moe.dataio import read_clip

    model, _ = classifier
    clips = [read_clip(w) for w in user_run["wavs"]]
    clips = [clips[0], clips[1][:12000], clips[2][:9000]]
    floats = [pcm(c, np.int16)[1] for c in clips]
    width = max(c.shape[0] for c in clips)
    batch = np.zeros((len(clips), width), dtype=np.int16)
    for i, clip in enumerate(clips):
        batch[i, : clip.shape[0]] = pcm(clip, np.int16)[0]
    lens = [c.shape[0] / width for c in clips]
    together = model.classify_batch(batch, lens)[0]
    alone = torch.cat([model.classify_batch(f)[0] for f in floats])
    assert torch.allclose(together, alone, atol=1e-4)


@pytest.fixture(scope="module")
def transcriber(bridge_run):
    return SpeechLLMTranscriber.from_hparams(source=str(bridge_run))


@pytest.mark.slow
@pytest.mark.parametrize("samples", [1, 320, 640, 960, 961])
def test_short_clip_is_transcribed(transcriber, tmp_path, samples):
    """Clips too short for one bridge frame (<= 960 samples with Whisper and a
    downsampling factor of 4, which crashed with
    "cannot reshape tensor of 0 elements") are padded, in transcribe_file
    and in transcribe_batch."""
    assert transcriber.min_samples == 961  # 4 frames of 320 samples, rounded
    path = tmp_path / "short.wav"
    wav = 0.1 * torch.sin(torch.arange(samples) / 5.0)
    sf.write(str(path), wav.numpy(), 16000)
    assert isinstance(transcriber.transcribe_file(str(path)), str)
    texts = transcriber.transcribe_batch(torch.stack([wav, wav]), [1.0, 1.0])
    assert len(texts) == 2


@pytest.mark.slow
@pytest.mark.parametrize("key", ["num_beams", "max_new_tokens"])
def test_decoding_options_below_one_are_refused(bridge_run, tmp_path, key):
    with pytest.raises(ValueError, match=f"{key} must be an integer >= 1"):
        SpeechLLMTranscriber.from_hparams(
            source=str(bridge_run), savedir=str(tmp_path / "s"), overrides={key: 0}
        )


@pytest.mark.slow
@pytest.mark.parametrize("which", ["classifier", "transcriber"])
def test_loading_draws_no_progress_bar(user_run, bridge_run, tmp_path, capfd, which):
    """transformers' "Loading weights" bar is off while a folder loads, and
    back on afterwards (the user's setting)."""
    from transformers.utils import logging as hf_logging

    # The user's setting: bars on (other tests, e.g. the benchmarks' model
    # builders, may have turned them off for the whole process).
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
    capfd.readouterr()
    if which == "classifier":
        load(user_run["out"], savedir=str(tmp_path / "s"))
    else:
        SpeechLLMTranscriber.from_hparams(
            source=str(bridge_run), savedir=str(tmp_path / "s")
        )
    captured = capfd.readouterr()
    assert "Loading weights" not in captured.err + captured.out
    assert hf_logging.is_progress_bar_enabled()
    if not was_on:
        hf_logging.disable_progress_bar()


@pytest.mark.slow
def test_changed_packaged_method_file_is_refused(bridge_run, tmp_path, monkeypatch):
    """A packaged bridge (moe_adapter) keeps its name in inference.yaml and
    its text in a copy: an installed speechbrain_moe whose file differs
    (other defaults) is refused, naming the copy and the fix."""
    import speechbrain_moe.inference.export as export

    SpeechLLMTranscriber.from_hparams(source=str(bridge_run), savedir=str(tmp_path))
    package = bridge_run / "inference_model"
    copy = package / "moe_adapter.yaml"
    assert copy.is_file()
    installed = tmp_path / "installed"
    (installed / "hparams" / "bridges").mkdir(parents=True)
    changed = copy.read_text().replace("top_k: 4", "top_k: 3")
    assert changed != copy.read_text()
    (installed / "hparams" / "bridges" / "moe_adapter.yaml").write_text(changed)

    class Resources:
        """``importlib.resources`` of a package whose moe_adapter.yaml differs."""

        @staticmethod
        def files(package):
            return installed

    monkeypatch.setattr(export, "resources", Resources)
    with pytest.raises(RuntimeError) as err:
        SpeechLLMTranscriber.from_hparams(
            source=str(package), savedir=str(tmp_path / "s")
        )
    message = str(err.value)
    assert "bridges/moe_adapter.yaml differs" in message and str(copy) in message
    assert "!ref <inference_folder>/moe_adapter.yaml" in message
