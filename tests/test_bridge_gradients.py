"""``python -m analysis GRADIENTS`` on an LLM-bridge run (tiny random models):
task gradients at several points of training, their cosines and the
per-expert routing by task; the compact data of the real-weights runs."""

import glob
import json
import os

import numpy as np
import pytest
import soundfile as sf
import torch

from analysis.bridge_gradients import (
    bridge_loss,
    gradient_point,
    load_bridge_model,
    point_step,
    run_settings,
    task_batches,
)
from analysis.cli import main
from analysis.gradients import cosine_matrix, mean_group_gradients
from tests.test_recipe_llm_bridge import (
    base_args,
    bridge_args,
    bridge_data,  # noqa: F401  (a fixture)
    run_recipe,
)
from tools.real_assets.bridge_tasks import librispeech_subset, sound_manifests


@pytest.fixture(scope="module")
def bridge_run(bridge_data, tmp_path_factory):  # noqa: F811
    """One short moe_adapter run with the ASR + classification mixture and
    an intra-epoch checkpoint every step."""
    out = str(tmp_path_factory.mktemp("bridge_run"))
    csv_path = bridge_data["cls_csv"]
    args = base_args(bridge_data) + bridge_args("moe_adapter")
    args += [
        f"--cls_train_csv={csv_path}",
        f"--cls_valid_csv={csv_path}",
        f"--cls_test_csv={csv_path}",
        "--valid_decode=False",
        "--number_of_epochs=1",
        "--batch_size=4",
        "--ckpt_interval_steps=1",
    ]
    run_recipe(args, out)
    return out


@pytest.mark.slow
def test_gradients_cli_on_bridge_run(bridge_run, tmp_path):
    checkpoints = sorted(glob.glob(os.path.join(bridge_run, "save", "CKPT+*")))
    assert checkpoints
    main(
        [
            "GRADIENTS",
            "--experiment",
            bridge_run,
            "--out",
            str(tmp_path),
            "--split",
            "train",
            "--batches",
            "2",
            "--batch_size",
            "2",
            "--checkpoints",
            "init",
            checkpoints[-1],
        ]
    )
    result = json.loads((tmp_path / "bridge_gradients.json").read_text())
    assert result["bridge"] == "moe_adapter"
    assert [p["point"] for p in result["points"]] == [
        "init",
        os.path.basename(checkpoints[-1]),
    ]
    init, trained = result["points"]
    assert init["step"] == 0
    for entry in result["points"]:
        assert set(entry["cosine"]) == {"asr|esc50"}
        assert -1.0 <= entry["cosine"]["asr|esc50"] <= 1.0
        assert set(entry["within"]) == {"asr", "esc50"}
        assert entry["samples"] == {"asr": 4, "esc50": 4}
        assert set(entry["components"]) >= {
            "fuse",
            "moe.experts",
            "moe.router",
            "aggregate",
        }
        # the routing of each task: per expert, sums to one over experts
        (router,) = entry["routing"]
        for task in ("asr", "esc50"):
            assert sum(entry["routing"][router][task]) == pytest.approx(1.0, abs=1e-4)
    # the checkpoint's trained bridge is loaded: the gradients differ
    assert init["grad_norm"] != trained["grad_norm"]


@pytest.mark.slow
def test_gradient_point_matches_mean_group_gradients(bridge_run):
    """The task cosine equals the one of the generic per-group path."""
    model, tokenizer = load_bridge_model(bridge_run)
    data = task_batches(bridge_run, run_settings(bridge_run), tokenizer, "train", 2, 2)
    with torch.no_grad():  # a bridge that is not at its zero-ish start
        for p in model.bridge.parameters():
            p.add_(0.05 * torch.randn_like(p))
    point = gradient_point(model, data)
    grads = mean_group_gradients(
        list(model.bridge.parameters()),
        data,
        lambda batch: bridge_loss(model, batch),
    )
    names, matrix = cosine_matrix(grads)
    assert names == ["asr", "esc50"]
    assert point["cosine"]["asr|esc50"] == pytest.approx(matrix[0][1], abs=1e-4)
    # the components tile the bridge's parameters
    total = sum(p.numel() for p in model.bridge.parameters())
    assert sum(point["component_sizes"].values()) == total


def _librispeech(root, speakers=2, utterances=3):
    chapter_of = {}
    for s in range(speakers):
        chapter = os.path.join(root, "train-clean-100", str(s + 1), "10")
        os.makedirs(chapter)
        lines = []
        for u in range(utterances):
            utt = f"{s + 1}-10-{u:04d}"
            sf.write(os.path.join(chapter, f"{utt}.flac"), np.zeros(1600), 16000)
            lines.append(f"{utt} WORD {u}")
        with open(os.path.join(chapter, f"{s + 1}-10.trans.txt"), "w") as f:
            f.write("\n".join(lines) + "\n")
        chapter_of[s + 1] = chapter
    return chapter_of


def test_librispeech_subset_keeps_every_voice(tmp_path):
    _librispeech(str(tmp_path / "src"))
    counts = librispeech_subset(
        str(tmp_path / "src"), str(tmp_path / "out"), {"train-clean-100": 2}
    )
    assert counts == {"train-clean-100": 4}
    for speaker in ("1", "2"):
        folder = tmp_path / "out" / "train-clean-100" / speaker / "10"
        text = (folder / f"{speaker}-10.trans.txt").read_text().split("\n")
        assert text[:2] == [f"{speaker}-10-0000 WORD 0", f"{speaker}-10-0001 WORD 1"]
        assert sf.read(str(folder / f"{speaker}-10-0001.flac"))[0].shape == (1600,)
        assert not (folder / f"{speaker}-10-0002.flac").exists()


def test_sound_manifests_limit_per_class_and_refuse_shared_folds(tmp_path):
    os.makedirs(tmp_path / "meta")
    os.makedirs(tmp_path / "audio")
    rows = ["filename,fold,target,category"]
    for i in range(6):
        name = f"1-{i:03d}-A-0.wav"
        sf.write(str(tmp_path / "audio" / name), np.zeros(800), 16000)
        rows.append(f"{name},1,{i % 2},{'dog' if i % 2 else 'cat'}")
    (tmp_path / "meta" / "esc50.csv").write_text("\n".join(rows) + "\n")
    paths = sound_manifests(
        str(tmp_path), str(tmp_path / "m"), {"train": [1]}, per_class={"train": 2}
    )
    lines = open(paths["train"]).read().splitlines()
    assert len(lines) == 1 + 4  # two cats, two dogs
    with pytest.raises(ValueError, match="a fold is in two splits"):
        sound_manifests(str(tmp_path), str(tmp_path / "m"), {"a": [1], "b": [1]})


def test_point_step_counts_optimizer_steps_across_epochs(tmp_path):
    """A checkpoint of the end of epoch 2 (36 steps per epoch) is step 72:
    the training loader's recovery file counts steps into the epoch only
    (every epoch-end checkpoint read 36, so the gradient driver measured
    none after the first epoch)."""
    param = torch.nn.Parameter(torch.zeros(3))
    optimizer = torch.optim.AdamW([param], lr=0.1)
    for _ in range(72):
        param.grad = torch.ones(3)
        optimizer.step()
    torch.save(optimizer.state_dict(), tmp_path / "optimizer.ckpt")
    (tmp_path / "dataloader-TRAIN.ckpt").write_text("36")
    (tmp_path / "counter.ckpt").write_text("2")
    assert point_step(str(tmp_path)) == {"step": 72, "epoch": 2, "epoch_step": 36}


@pytest.mark.slow
def test_init_point_is_the_same_draw_in_every_analysis(bridge_run):
    """The untrained bridge of ``--checkpoints init`` is seeded with the run's
    seed: two analyses of one run measured different initialisations before
    (two draws of the real dense bridge gave a task cosine of +0.173 and +0.260)."""
    seed = int(run_settings(bridge_run)["seed"])
    first, _ = load_bridge_model(bridge_run, seed=seed)
    torch.randn(100)  # whatever ran in between
    second, _ = load_bridge_model(bridge_run, seed=seed)
    a, b = first.trainable_state_dict(), second.trainable_state_dict()
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
