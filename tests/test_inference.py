"""End-to-end inference on models the recipes trained on synthetic data:
``PETLAudioClassifier`` (ESC-50 recipe) and ``SpeechLLMTranscriber``
(LibriSpeech LLM bridge), loaded from the experiment folder and from a
packaged copy of it."""

import csv
import os
import re
import shlex
import shutil
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO
from speech_llm_helpers import bridge_recipe_command

from speechbrain_moe.inference import (
    PETLAudioClassifier,
    SpeechLLMTranscriber,
    package_experiment,
)

ENV = dict(os.environ, OMP_NUM_THREADS="1")
ESC50_RUN = {}  # the command line of the esc50_experiment fixture


def run(cmd, cwd):
    """Runs a recipe; fails the test with its output on error."""
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=ENV)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]


@pytest.fixture(scope="module")
def esc50_experiment(tmp_path_factory, tiny_ast_dir):
    """A 2-epoch Soft-MoA run of the ESC-50 recipe on synthetic data."""
    from synthetic import generate

    root = tmp_path_factory.mktemp("inference_esc50")
    data = generate("esc50", str(root / "data"), num_classes=3)
    recipe = os.path.join(REPO, "recipes", "ESC50", "PETL")
    out = root / "exp"
    ESC50_RUN["args"] = [
        "train.py",
        "hparams/ast.yaml",
        f"--data_folder={data}",
        f"--backbone_source={tiny_ast_dir}",
        f"--output_folder={out}",
        "--petl_overrides={num_experts: 4}",
        "--n_classes=3",
        "--number_of_epochs=2",
        "--lr=0.01",
        "--batch_size=4",
        "--max_frames=100",
        "--device=cpu",
        "--noprogressbar",
    ]
    ESC50_RUN["backbone_source"] = tiny_ast_dir
    run([PYTHON, *ESC50_RUN["args"]], recipe)
    return out


@pytest.mark.slow
def test_classifier_from_experiment_and_package(esc50_experiment, tmp_path):
    exp = esc50_experiment
    model = PETLAudioClassifier.from_hparams(
        source=str(exp), hparams_file="inference.yaml", savedir=str(tmp_path / "a")
    )
    # adapter-only package: no frozen backbone weight in it
    package = exp / "inference_model"
    assert sorted(os.listdir(package)) == [
        "MANIFEST.json",
        "README.md",
        "backbone.ckpt",
        "classifier.ckpt",
        "inference.yaml",
        "label_encoder.ckpt",
        "soft_moa.yaml",  # the method file it was trained with
    ]
    saved = torch.load(package / "backbone.ckpt", weights_only=True)
    assert not any("attention.q_proj.weight" in k for k in saved)

    with open(exp / "test.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    correct = 0
    wavs = []
    for row in rows:
        log_probs, score, index, label = model.classify_file(row["wav"])
        assert log_probs.shape == (1, 3)
        assert torch.allclose(log_probs.exp().sum(-1), torch.ones(1))
        assert score.item() == log_probs.max().item()
        assert label[0] == model.hparams.label_encoder.decode_ndim(index.item())
        correct += label[0] == row["class_name"]
        wavs.append(row["wav"])
    # the recipe's own test accuracy (best checkpoint) is reproduced
    log = (exp / "train_log.txt").read_text()
    recipe_acc = float(re.findall(r"test accuracy: ([0-9.e+-]+)", log)[-1])
    assert correct / len(rows) == pytest.approx(recipe_acc, abs=1e-3)  # log: 3 digits

    # a packaged copy elsewhere gives exactly the same outputs
    moved = tmp_path / "card"
    shutil.copytree(package, moved, ignore=shutil.ignore_patterns("collected"))
    card = PETLAudioClassifier.from_hparams(
        source=str(moved), hparams_file="inference.yaml", savedir=str(tmp_path / "b")
    )
    from speechbrain_moe.dataio import read_clip

    for wav in wavs[:3]:
        assert torch.equal(card.classify_file(wav)[0], model.classify_file(wav)[0])
    batch = torch.stack([read_clip(w) for w in wavs[:3]])
    one = torch.cat([model.classify_file(w)[0] for w in wavs[:3]])
    assert torch.allclose(card.classify_batch(batch)[0], one, atol=1e-5)


def card_table(card, header):
    """Rows of the markdown table following ``header`` in a model card."""
    lines = card.split(header, 1)[1].splitlines()[1:]
    rows = []
    for line in lines:
        if not line.startswith("|"):
            if rows:
                break
            continue
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_model_card_numbers_equal_the_log(esc50_experiment, tmp_path):
    """The packaged model's README.md: its numbers are those of train_log.txt
    (validation at the packaged epoch, the best one, and the test of that
    epoch) and log.txt (trainable parameters); the command is the run's."""
    exp = esc50_experiment
    PETLAudioClassifier.from_hparams(source=str(exp), savedir=str(tmp_path / "s"))
    card = (exp / "inference_model" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: speechbrain\n")
    log = (exp / "train_log.txt").read_text().splitlines()

    def stats(line, stage):
        found = re.findall(rf"{stage} (\w+): ([-0-9.e+]+)", line)
        return {k: float(v) for k, v in found}

    header, _, *rows = card_table(card, "## Metrics of this checkpoint")
    table = {r[0]: {k: float(v) for k, v in zip(header[1:], r[1:])} for r in rows}
    epoch = int(re.search(r"epoch (\d+)\)", card).group(1))
    valid = [stats(line, "valid") for line in log if line.startswith("epoch:")]
    assert table["valid"] == valid[epoch - 1]
    assert table["valid"]["accuracy"] == max(v["accuracy"] for v in valid)
    tests = [line for line in log if line.startswith(f"Epoch loaded: {epoch} ")]
    assert table["test"] == stats(tests[-1], "test")
    assert set(table["test"]) >= {"loss", "accuracy", "load_cv", "aux_loss"}

    about = dict(card_table(card, "# soft_moa on ESC-50 (speechbrain-moe)")[2:])
    counts = re.findall(
        r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) .*without head: "
        r"([\d,]+)",
        (exp / "log.txt").read_text(),
    )[-1]
    assert about["trainable parameters"] == (
        f"{counts[0]} of {counts[1]} ({counts[2]} without the head)"
    )
    assert about["petl_method"] == "`soft_moa`"
    assert "'num_experts': 4" in about["petl_settings"]  # the run's override
    assert about["task"] == "audio-classification"
    assert about["data set"] == "ESC-50"
    source = about["pretrained `speechbrain_moe.lobes.ast.AST`"]
    assert source == f"`{ESC50_RUN['backbone_source']}`"
    command = card.split("```bash\n", 1)[1].split("\n```", 1)[0]
    recipe = os.path.join(REPO, "recipes", "ESC50", "PETL")
    assert command == f"cd {recipe} && python {shlex.join(ESC50_RUN['args'])}"
    usage = card.split("```python\n", 1)[1].split("\n```", 1)[0].splitlines()
    assert len(usage) == 3 and "PETLAudioClassifier.from_hparams(" in usage[1]


@pytest.mark.slow
def test_merge_true_refuses_a_mixture(esc50_experiment, tmp_path):
    with pytest.raises(ValueError, match="'soft_moa' cannot be merged .*a mixture"):
        PETLAudioClassifier.from_hparams(
            source=str(esc50_experiment), savedir=str(tmp_path / "m"), merge=True
        )


def test_package_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "save").mkdir()
    (tmp_path / "inference.yaml").write_text("{}\n")
    with pytest.raises(FileNotFoundError, match="train the model"):
        package_experiment(str(tmp_path), ["backbone"], max_key="accuracy")
    with pytest.raises(FileNotFoundError, match="inference.yaml"):
        package_experiment(str(tmp_path / "save"), ["backbone"], max_key="accuracy")


def wer_hypotheses(path):
    """utterance id -> hypothesis words, from SpeechBrain's WER alignment file."""
    lines = open(path).read().splitlines()
    hyps = {}
    for i, line in enumerate(lines):
        match = re.match(r"^(\S+), %WER", line)
        if match:
            words = [w.strip() for w in lines[i + 3].split(";")]
            hyps[match.group(1)] = [w for w in words if w and w != "<eps>"]
    return hyps


@pytest.mark.slow
def test_transcriber_reproduces_the_recipe_decoding(tmp_path):
    from synthetic.librispeech import make_librispeech
    from synthetic.llm import make_tiny_llm
    from synthetic.models import make_tiny_whisper

    libri = make_librispeech(str(tmp_path / "LibriSpeech"))
    llm = make_tiny_llm(str(tmp_path / "llm"))
    whisper = make_tiny_whisper(str(tmp_path / "whisper"))
    out = tmp_path / "exp"
    recipe = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
    run(
        [PYTHON]
        + bridge_recipe_command(
            out,
            libri,
            llm,
            whisper,
            "{fused_size: 64, expert_hidden: 32, aggregation_hidden: 128, "
            "num_experts: 4, top_k: 2}",
        )
        + [
            "--max_new_tokens=8",
            "--number_of_epochs=1",
            "--select_n_sentences=4",
            "--valid_decode=False",
            "--batch_size=2",
            "--test_batch_size=1",
            "--device=cpu",
            "--noprogressbar",
        ],
        recipe,
    )
    asr = SpeechLLMTranscriber.from_hparams(
        source=str(out), hparams_file="inference.yaml", savedir=str(tmp_path / "s")
    )
    hyps = wer_hypotheses(out / "wer" / "wer_test-clean.txt")
    with open(out / "test-clean.csv", newline="") as fin:
        rows = list(csv.DictReader(fin))
    assert rows
    for row in rows:
        text = asr.transcribe_file(row["wav"])
        assert isinstance(text, str)
        assert text.upper().split() == hyps[f"asr/{row['ID']}"], row["ID"]
    with pytest.raises(ValueError, match="NaN/inf"):
        asr.transcribe_batch(torch.full((1, 16000), float("nan")))


BACKBONES = ("ast", "whisper", "wavlm")


@pytest.mark.slow
@pytest.mark.parametrize(
    "recipe, data", [("ESC50", "esc50"), ("Google-speech-commands", "gsc")]
)
def test_every_backbone_trains_then_classifies(
    recipe, data, tmp_path, synthetic_dataset
):
    """One epoch per backbone, then ``from_hparams`` on the output folder
    classifies a file (the inference YAML is the run's own backbone node)."""
    from synthetic import generate

    folder = os.path.join(REPO, "recipes", recipe, "PETL")
    for backbone in BACKBONES:
        source = generate(f"tiny-{backbone}", str(tmp_path / backbone))
        out = tmp_path / f"exp_{backbone}"
        run(
            [
                PYTHON,
                "train.py",
                f"hparams/{backbone}.yaml",
                f"--data_folder={synthetic_dataset(data)}",
                f"--backbone_source={source}",
                f"--output_folder={out}",
                "--petl_overrides={num_experts: 2}",
                "--number_of_epochs=1",
                "--batch_size=4",
                "--device=cpu",
                "--noprogressbar",
                *(["--max_frames=100"] if backbone == "ast" else []),
            ],
            folder,
        )
        model = PETLAudioClassifier.from_hparams(source=str(out))
        with open(out / "test.csv", newline="") as fin:
            row = next(csv.DictReader(fin))
        log_probs, _, _, label = model.classify_file(row["wav"])
        assert (
            log_probs.shape[0] == 1 and label[0] in model.hparams.label_encoder.lab2ind
        )
        assert type(model.mods.backbone).__name__ in ("AST", "Whisper", "SSLEncoder")
