"""End-to-end runs of recipes/LibriSpeech/LLM_bridge on synthetic data."""

import csv
import os
import re
import subprocess
import sys

import pytest
import soundfile as sf

from synthetic.librispeech import (
    SAMPLE_RATE,
    make_librispeech,
    utterance,
)
from synthetic.llm import make_tiny_llm
from synthetic.models import make_tiny_whisper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "LLM_bridge")
PYTHON = sys.executable
SMALL = ["--max_new_tokens=8", "--device=cpu", "--noprogressbar"]
BRIDGE_SETTINGS = {
    "dense": "{hidden_size: 64}",
    "moe_adapter": "{fused_size: 64, expert_hidden: 32, aggregation_hidden: 128, "
    "num_experts: 4, top_k: 2}",
    "soft_moa": "{num_experts: 4, bottleneck: 8}",
}
LORA = ['--llm_lora_layers=["*_proj"]']
# A frame-wise fbank encoder (tests/speech_llm_helpers.py) in place of the
# YAML's Whisper: a random tiny Whisper carries too little of the audio to
# overfit six utterances quickly.
FRAMES = ["--encoder=!new:speech_llm_helpers.FrameEncoder [32]"]


def bridge_args(bridge):
    """Selects a bridge, shrunk to the tiny LLM."""
    return [f"--bridge={bridge}", f"--bridge_overrides={BRIDGE_SETTINGS[bridge]}"]


@pytest.fixture(scope="module")
def bridge_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_bridge")
    libri = make_librispeech(str(root / "LibriSpeech"))
    llm = make_tiny_llm(str(root / "llm"))
    whisper = make_tiny_whisper(str(root / "whisper"))
    # a classification manifest as the ESC-50 recipe writes it
    cls_csv = root / "sounds.csv"
    os.makedirs(root / "sounds")
    with open(cls_csv, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["ID", "wav", "duration", "class_name"])
        for i, word in enumerate(["DOG", "CAT", "DOG", "CAT"]):
            wav = str(root / "sounds" / f"{i}.wav")
            audio = utterance([word])
            sf.write(wav, audio, SAMPLE_RATE)
            writer.writerow([f"s{i}", wav, len(audio) / SAMPLE_RATE, word.lower()])
    return {
        "libri": libri,
        "llm": llm,
        "whisper": whisper,
        "cls_csv": str(cls_csv),
        "root": root,
    }


def run_recipe(args, out, launcher=None, timeout=300):
    cmd = (launcher or [PYTHON]) + [
        "train.py",
        "hparams/bridge.yaml",
        f"--output_folder={out}",
    ]
    env = dict(os.environ, PYTHONPATH=os.path.join(ROOT, "tests"))
    result = subprocess.run(
        cmd + args, cwd=RECIPE, capture_output=True, text=True, timeout=timeout, env=env
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    with open(os.path.join(out, "train_log.txt")) as f:
        return f.read()


def base_args(data):
    return [
        f"--data_folder={data['libri']}",
        f"--llm_source={data['llm']}",
        f"--backbone_source={data['whisper']}",
    ] + SMALL


@pytest.mark.slow
@pytest.mark.parametrize("bridge", ["dense", "moe_adapter", "soft_moa"])
def test_debug_run_each_bridge(bridge_data, tmp_path, bridge):
    extra = []
    if bridge == "soft_moa":  # + the task mixture with a classification set
        csv_path = bridge_data["cls_csv"]
        extra = [
            f"--cls_train_csv={csv_path}",
            f"--cls_valid_csv={csv_path}",
            f"--cls_test_csv={csv_path}",
        ]
    log = run_recipe(
        base_args(bridge_data) + bridge_args(bridge) + ["--debug"] + extra,
        str(tmp_path),
    )
    assert "test WER" in log
    assert os.path.isfile(tmp_path / "wer" / "wer_test-clean.txt")
    if extra:
        assert "valid accuracy_esc50" in log and "test accuracy_esc50" in log
        assert os.path.isfile(tmp_path / "wer" / "answers_esc50.csv")


@pytest.mark.slow
def test_short_run_overfits_and_decodes_exactly(bridge_data, tmp_path):
    """Six utterances, 40 short epochs: the loss falls far and decoding is exact.

    The tiny LLM is random, so it has none of the copying skill of a
    pretrained LLM: rank-8 LoRA on its linears lets it learn that quickly.
    """
    args = base_args(bridge_data) + bridge_args("moe_adapter") + LORA + FRAMES
    args += [
        "--select_n_sentences=6",
        "--dev_splits=[train-clean-100]",
        "--test_splits=[train-clean-100]",
        "--valid_decode=False",
        "--number_of_epochs=40",
        "--lr=0.003",
        "--batch_size=3",
    ]
    log = run_recipe(args, str(tmp_path))
    losses = [float(x) for x in re.findall(r"train loss: ([0-9.e+-]+)", log)]
    assert losses[-1] < 0.1 * losses[0], losses
    assert re.search(r"test WER: 0\.00", log), log
    with open(tmp_path / "wer" / "wer_train-clean-100.txt") as f:
        assert "%WER 0.00" in f.read()


@pytest.mark.slow
def test_ddp_two_processes_moe_adapter(bridge_data, tmp_path):
    launcher = [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    args = base_args(bridge_data) + bridge_args("moe_adapter") + LORA
    args += [
        "--lora_rank=2",
        "--distributed_backend=gloo",
        "--number_of_epochs=1",
        "--select_n_sentences=4",
        "--batch_size=2",
    ]
    log = run_recipe(args, str(tmp_path), launcher=launcher)
    assert log.count("epoch: 1") == 1 and "test WER" in log
