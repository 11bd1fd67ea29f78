"""The packaged model's README.md in the hub's format: YAML front matter with
SpeechBrain's keys, results equal to train_log.txt's test line (or a sentence
saying there is none), usage on CPU and GPU, limitations, citations and the
size of the trainable-weights unit."""

import os
import re

import pytest
import torch
import yaml
from speechbrain.utils.checkpoints import Checkpoint

from speechbrain_moe.inference import PETLAudioClassifier
from speechbrain_moe.inference.model_card import model_card, record_run
from speechbrain_moe.recoverables import DESCRIPTION_KEY

INFERENCE_YAML = """backbone: !new:speechbrain_moe.lobes.ast.AST
    source: /models/tiny_ast
"""
VALID = "epoch: {e}, lr: 1.00e-03 - train loss: 1.20 - valid loss: 1.30, valid accuracy: {a}"
TEST = (
    "Epoch loaded: 2 - test loss: 1.31, test accuracy: 6.25e-01, test error: 3.75e-01"
)


def packaged_run(tmp_path, log_lines, method="lora", dataset="Speech Commands v2"):
    """An experiment folder and its packaged folder, as the recipes leave
    them; returns the card's text."""
    exp = tmp_path / "exp"
    package = exp / "inference_model"
    ckpt = exp / "save" / "CKPT+1"
    for folder in (package, ckpt):
        folder.mkdir(parents=True)
    record_run(str(exp), task="audio-classification", dataset=dataset)
    (exp / "train_log.txt").write_text("\n".join(log_lines) + "\n")
    (ckpt / "counter.ckpt").write_text("2")
    (package / "inference.yaml").write_text(INFERENCE_YAML)
    state = {"w": torch.zeros(100), DESCRIPTION_KEY: {"petl_method": method}}
    torch.save(state, package / "backbone.ckpt")
    torch.save({"weight": torch.zeros(3, 4)}, package / "classifier.ckpt")
    checkpoint = Checkpoint(str(ckpt), {"accuracy": 0.5}, {})
    path = model_card(str(exp), str(package), checkpoint, PETLAudioClassifier)
    return open(path, encoding="utf-8").read(), package


def parsed_front_matter(card):
    """yaml.safe_load of the text between the leading ``---`` lines."""
    assert card.startswith("---\n")
    head, _ = card[4:].split("\n---\n", 1)
    return yaml.safe_load(head)


def results(card):
    """(split, metric) -> value of the card's results table."""
    section = card.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| data set")
    ]
    return {(r[1], r[2]): r[3] for r in rows}


def test_front_matter_parses_with_speechbrain_keys(tmp_path):
    lines = [VALID.format(e=1, a="0.4"), VALID.format(e=2, a="0.5"), TEST]
    card, _ = packaged_run(tmp_path, lines)
    meta = parsed_front_matter(card)
    assert meta["library_name"] == "speechbrain"
    assert meta["language"] == "en"
    assert meta["license"] == "apache-2.0"
    assert meta["datasets"] == ["Speech Commands v2"]
    assert meta["metrics"] == ["accuracy", "error"]
    assert {"speechbrain", "audio-classification", "lora"} <= set(meta["tags"])


def test_results_equal_the_test_line_of_train_log(tmp_path):
    lines = [VALID.format(e=1, a="0.4"), VALID.format(e=2, a="0.5"), TEST]
    card, _ = packaged_run(tmp_path, lines)
    table = results(card)
    logged = dict(re.findall(r"test (\w+): ([-0-9.e+]+)", TEST))
    assert set(table) == {("test", "accuracy"), ("test", "error")}
    for (_, metric), value in table.items():
        assert float(value) == float(logged[metric])


def test_run_without_test_line_says_so(tmp_path):
    lines = [VALID.format(e=1, a="0.4"), VALID.format(e=2, a="0.5")]
    card, _ = packaged_run(tmp_path, lines)
    section = card.split("## Results\n", 1)[1].split("\n## ", 1)[0]
    assert "No test result in train_log.txt" in section
    assert not re.search(r"\d", section.replace("train_log", ""))
    assert parsed_front_matter(card)["metrics"] == ["accuracy"]  # valid's only


def test_card_has_usage_limitations_citations_and_unit_size(tmp_path):
    card, package = packaged_run(tmp_path, [TEST], method="soft_moa", dataset="ESC-50")
    assert "language" not in parsed_front_matter(card)  # environmental sound
    assert 'run_opts={"device": "cuda"}' in card
    assert "pip install speechbrain-moe" in card
    assert "## Limitations" in card and "trained on ESC-50 only" in card
    bibtex = card.split("```bibtex\n", 1)[1].split("\n```", 1)[0]
    assert "Soft Mixture of Adapters" in bibtex and "SpeechBrain" in bibtex
    assert bibtex.count("@") == 2
    unit = card.split("## Trainable-weights unit\n", 1)[1].split("\n## ", 1)[0]
    sizes = {
        n: os.path.getsize(package / n) for n in os.listdir(package) if n != "README.md"
    }
    assert f"({sum(sizes.values())} bytes)" in unit
    assert f"{len(sizes)} files" in unit and "`backbone.ckpt`" in unit
    assert "load_adapters(" in unit


def test_transcriber_card_has_no_backbone_snippet(tmp_path):
    from speechbrain_moe.inference import SpeechLLMTranscriber

    exp, package = tmp_path / "exp", tmp_path / "exp" / "inference_model"
    (exp / "save" / "CKPT").mkdir(parents=True)
    package.mkdir()
    (package / "inference.yaml").write_text("speech_llm: 1\n")
    record_run(str(exp), task="automatic-speech-recognition", dataset="LibriSpeech")
    (exp / "train_log.txt").write_text(
        "Epoch loaded: 1 - test loss: 2.0, test WER: 12.5, test CER: 6.25\n"
    )
    (exp / "save" / "CKPT" / "counter.ckpt").write_text("1")
    checkpoint = Checkpoint(str(exp / "save" / "CKPT"), {}, {})
    path = model_card(str(exp), str(package), checkpoint, SpeechLLMTranscriber)
    card = open(path, encoding="utf-8").read()
    meta = parsed_front_matter(card)
    assert meta["metrics"] == ["wer", "cer"] and meta["language"] == "en"
    assert results(card) == {("test", "WER"): "12.5", ("test", "CER"): "6.25"}
    assert "load_adapters" not in card


@pytest.mark.parametrize("method", ["linear", "lora"])
def test_citations_follow_the_method(tmp_path, method):
    card, _ = packaged_run(tmp_path, [TEST], method=method)
    bibtex = card.split("```bibtex\n", 1)[1].split("\n```", 1)[0]
    assert ("Low-Rank Adaptation" in bibtex) == (method == "lora")


RECIPES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "recipes"
)
READMES = sorted(
    os.path.join(RECIPES, data, task, "README.md")
    for data in os.listdir(RECIPES)
    if os.path.isdir(os.path.join(RECIPES, data))
    for task in os.listdir(os.path.join(RECIPES, data))
    if os.path.isfile(os.path.join(RECIPES, data, task, "README.md"))
)


@pytest.mark.parametrize("readme", READMES, ids=lambda p: p.split("recipes/")[1])
def test_recipe_readmes_follow_upstream_sections(readme):
    """Upstream's sections, in order; the results table has a row for every
    hyperparameter file, with numbers only where measured."""
    text = open(readme, encoding="utf-8").read()
    sections = [
        "## Dataset",
        "## Installing Extra Dependencies",
        "## How to run",
        "## Results",
        "# **About SpeechBrain**",
        "# **Citing SpeechBrain**",
    ]
    found = [text.find(f"\n{s}\n") for s in sections]
    assert -1 not in found, [s for s, i in zip(sections, found) if i == -1]
    assert found == sorted(found)
    assert "pip install -r extra_requirements.txt" in text
    results = text.split("\n## Results\n", 1)[1]
    header = next(line for line in results.splitlines() if line.startswith("|"))
    cells = [c.strip() for c in header.strip("|").split("|")]
    assert cells[0] == "hyperparameter file" and cells[2:] == ["training time", "GPUs"]
    rows = []
    for line in results.split(header, 1)[1].splitlines()[2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])
    hparams = os.path.join(os.path.dirname(readme), "hparams")
    files = sorted(f for f in os.listdir(hparams) if f.endswith(".yaml"))
    assert sorted(re.search(r"`hparams/(.+?)`", r[0]).group(1) for r in rows) == files
    for row in rows:
        for cell in row[1:]:
            assert cell == "not measured yet" or re.fullmatch(r"[\d.,:±% hmsx]+", cell)
    assert "@misc{speechbrain," in text
