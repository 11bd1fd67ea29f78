"""End-to-end runs of recipes/LibriSpeech/LLM_bridge on synthetic data."""

import csv
import importlib.util
import os
import re
import subprocess
import sys

import pytest
import soundfile as sf

from speechbrain_moe.synthetic.librispeech import (
    SAMPLE_RATE,
    make_librispeech,
    utterance,
)
from speechbrain_moe.synthetic.llm import make_tiny_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "LLM_bridge")
PYTHON = sys.executable
SMALL = [
    "--encoder_type=frame",
    "--fused_size=64",
    "--expert_hidden=32",
    "--aggregation_hidden=128",
    "--num_experts=4",
    "--top_k=2",
    "--dense_hidden=64",
    "--soft_num_experts=4",
    "--soft_bottleneck=8",
    "--max_new_tokens=8",
    "--device=cpu",
]


@pytest.fixture(scope="module")
def bridge_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("llm_bridge")
    libri = make_librispeech(str(root / "LibriSpeech"))
    llm = make_tiny_llm(str(root / "llm"))
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
    return {"libri": libri, "llm": llm, "cls_csv": str(cls_csv), "root": root}


def run_recipe(args, out, launcher=None, timeout=300):
    cmd = (launcher or [PYTHON]) + [
        "train.py",
        "hparams/bridge.yaml",
        f"--output_folder={out}",
    ]
    result = subprocess.run(
        cmd + args, cwd=RECIPE, capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-5000:]
    with open(os.path.join(out, "train_log.txt")) as f:
        return f.read()


def base_args(data):
    return [f"--data_folder={data['libri']}", f"--llm_source={data['llm']}"] + SMALL


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
        base_args(bridge_data) + [f"--bridge={bridge}", "--debug"] + extra,
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
    args = base_args(bridge_data) + [
        "--bridge=moe_adapter",
        "--select_n_sentences=6",
        "--dev_splits=[train-clean-100]",
        "--test_splits=[train-clean-100]",
        "--valid_decode=False",
        "--number_of_epochs=40",
        "--lr=0.003",
        "--batch_size=3",
        "--lora_rank=8",
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
    args = base_args(bridge_data) + [
        "--bridge=moe_adapter",
        "--distributed_backend=gloo",
        "--number_of_epochs=1",
        "--select_n_sentences=4",
        "--batch_size=2",
        "--lora_rank=2",
    ]
    log = run_recipe(args, str(tmp_path), launcher=launcher)
    assert log.count("epoch: 1") == 1 and "test WER" in log


@pytest.mark.slow
@pytest.mark.skipif(
    importlib.util.find_spec("speechbrain_moe.lobes.whisper") is None,
    reason="Whisper lobe not available",
)
def test_debug_run_with_tiny_whisper(bridge_data, tmp_path):
    from speechbrain_moe.synthetic import GENERATORS

    if "tiny-whisper" not in GENERATORS:
        pytest.skip("tiny-whisper generator not available")
    whisper = GENERATORS["tiny-whisper"](str(bridge_data["root"] / "whisper"))
    args = [a for a in base_args(bridge_data) if not a.startswith("--encoder_type")]
    args += [
        "--encoder_type=whisper",
        f"--backbone_source={whisper}",
        "--bridge=moe_adapter",
        "--debug",
    ]
    assert "test WER" in run_recipe(args, str(tmp_path))
