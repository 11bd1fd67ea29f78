"""One frozen backbone, many tasks (issue 23 item 1): a batch whose clips
belong to different tasks gives each clip what its own single-task model
gives; the frozen tensors are held once; tasks of another backbone and
methods that cannot share a forward are refused, naming why."""

import os
import shutil

import pytest
import torch

from benchmarks.multitask import make_task_folder
from speechbrain_moe.inference import MultiTaskClassifier, PETLAudioClassifier
from speechbrain_moe.inference.multitask import build_shared_backbone
from speechbrain_moe.petl.task_switch import TaskMismatch, TaskSwitch, attach_task

AST_TASKS = {
    "esc": ("soft_moa", {"num_experts": 3}),
    "kws": ("lora", {"rank": 4}),
    "houlsby": ("adapter", {"placement": "houlsby", "mode": "sequential"}),
    "topk": ("moe_adapter", {"num_experts": 4, "top_k": 2}),
    "probe": ("linear", {}),
    "lora_moe": ("moe_lora", {}),
}
WHISPER_TASKS = {
    "lora": ("lora", {"rank": 4}),
    "soft": ("soft_moa", {"num_experts": 3, "mode": "sequential"}),
    "topk": ("moe_adapter", {"num_experts": 4, "top_k": 1}),
}

WAVLM_TASKS = {
    "lora": ("lora", {"rank": 4}),
    "adapter": ("adapter", {"bottleneck": 4}),
    "probe": ("linear", {}),
}


def folders(root, lobe, lobe_args, tasks):
    """Packaged task folders with random trained tensors."""
    return {
        name: make_task_folder(
            os.path.join(root, name), lobe, lobe_args, method, overrides, 3 + k, k
        )
        for k, (name, (method, overrides)) in enumerate(tasks.items())
    }


@pytest.fixture(scope="module")
def ast_tasks(tmp_path_factory, tiny_ast_folder):
    root = str(tmp_path_factory.mktemp("multitask_ast"))
    lobe_args = {"source": tiny_ast_folder, "max_frames": 100}
    return folders(root, "ast", lobe_args, AST_TASKS)


@pytest.fixture(scope="module")
def whisper_tasks(tmp_path_factory):
    from synthetic.models import make_tiny_whisper

    root = str(tmp_path_factory.mktemp("multitask_whisper"))
    source = make_tiny_whisper(os.path.join(root, "whisper"))
    return folders(root, "whisper", {"source": source}, WHISPER_TASKS)


@pytest.fixture(scope="module")
def wavlm_tasks(tmp_path_factory):
    from synthetic.models import make_tiny_wavlm

    root = str(tmp_path_factory.mktemp("multitask_wavlm"))
    source = make_tiny_wavlm(os.path.join(root, "wavlm"))
    return folders(root, "wavlm", {"source": source}, WAVLM_TASKS)


@pytest.fixture(scope="module")
def ast_model(ast_tasks, tmp_path_factory):
    savedir = str(tmp_path_factory.mktemp("multitask_ast_saved"))
    return MultiTaskClassifier.from_hparams(sources=ast_tasks, savedir=savedir)


def batch(size, seed=0):
    """Clips of different lengths (relative lengths down to 0.3)."""
    torch.manual_seed(seed)
    wavs = 0.1 * torch.randn(size, 16000)
    lens = torch.linspace(1.0, 0.3, size)
    return wavs, lens


def single_outputs(folder, wavs, lens, savedir):
    """Log-posteriors and labels of a task's own single-task model."""
    model = PETLAudioClassifier.from_hparams(source=folder, savedir=savedir)
    out_prob, _, index, labels = model.classify_batch(wavs, lens)
    return out_prob, index, labels


def assert_per_clip(model, task_folders, wavs, lens, tasks, tmp_path):
    """Every clip of the mixed batch gets its own model's prediction."""
    out_prob, score, index, labels = model.classify_batch(wavs, lens, tasks=tasks)
    assert len(out_prob) == len(tasks) == len(labels) == score.shape[0]
    for name, folder in task_folders.items():
        rows = [i for i, t in enumerate(tasks) if t == name]
        if not rows:
            continue
        expected, expected_index, expected_labels = single_outputs(
            folder, wavs, lens, str(tmp_path / f"single_{name}")
        )
        for row in rows:
            assert out_prob[row].shape == expected[row].shape
            assert torch.allclose(out_prob[row], expected[row], atol=1e-5), name
            assert int(index[row]) == int(expected_index[row])
            assert labels[row] == expected_labels[row]
            assert torch.isclose(score[row], expected[row].max(), atol=1e-5)


def test_mixed_ast_batch_equals_each_single_task_model(ast_model, ast_tasks, tmp_path):
    wavs, lens = batch(7)
    tasks = ["esc", "kws", "houlsby", "topk", "probe", "lora_moe", "kws"]
    assert_per_clip(ast_model, ast_tasks, wavs, lens, tasks, tmp_path)
    # a task with no clips in the batch (houlsby, probe), and one task only
    assert_per_clip(
        ast_model, ast_tasks, wavs, lens, ["topk", "esc"] * 3 + ["kws"], tmp_path
    )
    assert_per_clip(ast_model, ast_tasks, wavs, lens, ["houlsby"] * 7, tmp_path)
    expected, _, labels = single_outputs(
        ast_tasks["kws"], wavs, lens, str(tmp_path / "kws_all")
    )
    out_prob, _, _, got = ast_model.classify_batch(wavs, lens, task="kws")
    assert out_prob.shape == expected.shape
    assert torch.allclose(out_prob, expected, atol=1e-5) and got == labels


def test_mixed_whisper_batch_equals_each_single_task_model(whisper_tasks, tmp_path):
    model = MultiTaskClassifier.from_hparams(
        sources=whisper_tasks, savedir=str(tmp_path / "saved")
    )
    wavs, lens = batch(5, seed=1)
    assert_per_clip(
        model,
        whisper_tasks,
        wavs,
        lens,
        ["lora", "soft", "topk", "soft", "lora"],
        tmp_path,
    )
    assert_per_clip(model, whisper_tasks, wavs, lens, ["topk"] * 4 + ["soft"], tmp_path)


def test_mixed_wavlm_batch_equals_each_single_task_model(wavlm_tasks, tmp_path):
    """WavLM: each clip padded to the batch's longest (masked front end and
    attention), the tasks' adapters on their rows only."""
    model = MultiTaskClassifier.from_hparams(
        sources=wavlm_tasks, savedir=str(tmp_path / "saved")
    )
    wavs, lens = batch(5, seed=4)
    tasks = ["adapter", "lora", "probe", "adapter", "lora"]
    assert_per_clip(model, wavlm_tasks, wavs, lens, tasks, tmp_path)
    clip = wavs[3:4, : int(round(float(lens[3]) * wavs.shape[1]))]
    alone = model.classify_batch(clip, tasks=["adapter"])[0][0]
    mixed = model.classify_batch(wavs, lens, tasks=tasks)[0][3]
    assert torch.allclose(alone, mixed, atol=1e-5)


def test_a_clip_does_not_depend_on_the_other_clips(ast_model):
    wavs, lens = batch(6, seed=2)
    alone = ast_model.classify_batch(wavs[:1], lens[:1] / lens[:1], tasks=["topk"])
    for tasks in (["topk"] * 6, ["topk", "esc", "topk", "kws", "probe", "houlsby"]):
        # the clip padded to the batch's longest clip, among others
        mixed = ast_model.classify_batch(wavs, lens, tasks=tasks)
        clip = wavs[:1, : int(round(float(lens[0]) * wavs.shape[1]))]
        alone = ast_model.classify_batch(clip, tasks=["topk"])
        assert torch.allclose(mixed[0][0], alone[0][0], atol=1e-5)
    # the other clips changed: clip 0 (topk) keeps its output
    other = wavs.clone()
    other[1:] = 0.5 * torch.randn_like(other[1:])
    tasks = ["topk", "topk", "esc", "topk", "kws", "topk"]
    first = ast_model.classify_batch(wavs, lens, tasks=tasks)[0][0]
    second = ast_model.classify_batch(other, lens, tasks=tasks)[0][0]
    assert torch.allclose(first, second, atol=1e-5)


def test_the_frozen_backbone_is_held_once(ast_model, ast_tasks):
    plain = build_shared_backbone(ast_tasks["esc"])
    frozen = sum(p.numel() for p in plain.parameters())
    held = {}
    for param in ast_model.mods.parameters():
        held[param.data_ptr()] = param.numel()
    trained = 0
    for folder in ast_tasks.values():
        saved = torch.load(os.path.join(folder, "backbone.ckpt"), weights_only=True)
        trained += sum(v.numel() for v in saved.values() if torch.is_tensor(v))
        head = torch.load(os.path.join(folder, "classifier.ckpt"), weights_only=True)
        trained += sum(v.numel() for v in head.values())
    assert sum(held.values()) == frozen + trained
    switches = [
        m for m in ast_model.mods.backbone.modules() if isinstance(m, TaskSwitch)
    ]
    assert switches and all(m.kinds for m in switches)


def test_load_and_unload_tasks(ast_tasks, tmp_path):
    model = MultiTaskClassifier.from_hparams(
        sources={"esc": ast_tasks["esc"], "kws": ast_tasks["kws"]},
        savedir=str(tmp_path / "saved"),
    )
    assert model.tasks == ["esc", "kws"]
    wavs, lens = batch(4, seed=3)
    before = model.classify_batch(wavs, lens, tasks=["esc", "kws", "esc", "kws"])[0]
    model.load_task("topk", ast_tasks["topk"], savedir=str(tmp_path / "saved"))
    assert model.tasks == ["esc", "kws", "topk"]
    with pytest.raises(ValueError, match="already loaded.*unload_task"):
        model.load_task("topk", ast_tasks["topk"])
    model.unload_task("kws")
    assert model.tasks == ["esc", "topk"]
    after = model.classify_batch(wavs, lens, tasks=["esc", "topk", "esc", "topk"])[0]
    assert torch.allclose(after[0], before[0], atol=1e-6)
    assert torch.allclose(after[2], before[2], atol=1e-6)
    with pytest.raises(ValueError, match=r"Unknown task\(s\) \['kws'\].*load_task"):
        model.classify_batch(wavs, lens, tasks=["esc", "kws", "esc", "kws"])
    model.unload_task("esc")
    model.unload_task("topk")
    backbone = model.mods.backbone
    assert not any(isinstance(m, TaskSwitch) for m in backbone.modules())
    plain = build_shared_backbone(ast_tasks["esc"]).eval()
    with torch.no_grad():
        assert torch.allclose(backbone(wavs, lens), plain(wavs, lens), atol=1e-6)
    model.load_task("kws", ast_tasks["kws"], savedir=str(tmp_path / "again"))
    assert_per_clip(model, {"kws": ast_tasks["kws"]}, wavs, lens, ["kws"] * 4, tmp_path)


def test_the_backbone_needs_the_task_of_each_clip(ast_model):
    wavs, lens = batch(2)
    with pytest.raises(RuntimeError, match="without saying which clip"):
        with torch.no_grad():
            ast_model.mods.backbone(wavs, lens)
    with pytest.raises(ValueError, match="either task=.*not neither"):
        ast_model.classify_batch(wavs, lens)
    with pytest.raises(ValueError, match="one task per clip"):
        ast_model.classify_batch(wavs, lens, tasks=["esc"])


def test_refuses_tasks_of_another_backbone(ast_tasks, tiny_ast_folder, tmp_path):
    from transformers import ASTConfig, ASTModel

    from synthetic.models import TINY_AST

    other = str(tmp_path / "other_ast")
    ASTModel(ASTConfig(**{**TINY_AST, "intermediate_size": 48})).save_pretrained(other)
    wider = make_task_folder(
        str(tmp_path / "wider"), "ast", {"source": other, "max_frames": 100}, "lora"
    )
    shorter = make_task_folder(
        str(tmp_path / "shorter"),
        "ast",
        {"source": tiny_ast_folder, "max_frames": 60},
        "lora",
    )
    sources = {"esc": ast_tasks["esc"], "wider": wider}
    with pytest.raises(TaskMismatch, match="another backbone") as err:
        MultiTaskClassifier.from_hparams(sources=sources, savedir=str(tmp_path / "s"))
    assert "config intermediate_size: 48 -> 64" in str(err.value)
    assert other in str(err.value) and "own PETLAudioClassifier" in str(err.value)
    sources = {"esc": ast_tasks["esc"], "shorter": shorter}
    with pytest.raises(TaskMismatch, match="max_frames: 60 -> 100"):
        MultiTaskClassifier.from_hparams(sources=sources, savedir=str(tmp_path / "s"))


def test_refuses_other_feature_extractor_settings(whisper_tasks, tmp_path):
    import json

    from speechbrain_moe.inference.adapters import recorded_backbone

    source = recorded_backbone(whisper_tasks["lora"])[1]["source"]
    copy = str(tmp_path / "whisper_copy")
    shutil.copytree(source, copy)
    path = os.path.join(copy, "preprocessor_config.json")
    with open(path) as fin:
        settings = json.load(fin)
    settings["n_fft"] = 2 * settings["n_fft"]
    with open(path, "w") as out:
        json.dump(settings, out)
    task = make_task_folder(str(tmp_path / "task"), "whisper", {"source": copy}, "lora")
    sources = {"lora": whisper_tasks["lora"], "copy": task}
    with pytest.raises(TaskMismatch, match="preprocessor_config.json"):
        MultiTaskClassifier.from_hparams(
            sources=sources, savedir=str(tmp_path / "s"), check_source=False
        )


@pytest.mark.parametrize(
    "method, why",
    [
        ("prompt", "DeepPromptLayer: deep prompt tuning prepends learned tokens"),
        ("prefix", "PrefixAttention: prefix tuning adds learned keys and values"),
        ("bitfit", "BitFit trains the frozen biases"),
        ("full_ft", "full fine-tuning every weight"),
    ],
)
def test_refuses_methods_that_cannot_share_a_forward(
    ast_model, tiny_ast_folder, tmp_path, method, why
):
    folder = make_task_folder(
        str(tmp_path / method),
        "ast",
        {"source": tiny_ast_folder, "max_frames": 100},
        method,
    )
    tasks, switches = list(ast_model.tasks), ast_model.mods.backbone.modules()
    before = sum(isinstance(m, TaskSwitch) for m in switches)
    with pytest.raises(TaskMismatch, match="cannot share the backbone") as err:
        ast_model.load_task(method, folder, savedir=str(tmp_path / "s"))
    assert why in str(err.value) and "PETLAudioClassifier.from_hparams" in str(
        err.value
    )
    assert ast_model.tasks == tasks
    after = sum(isinstance(m, TaskSwitch) for m in ast_model.mods.backbone.modules())
    assert after == before


def test_refuses_a_merged_lora(ast_tasks, tmp_path):
    merged = PETLAudioClassifier.from_hparams(
        source=ast_tasks["kws"], savedir=str(tmp_path / "s"), merge=True
    )
    shared = build_shared_backbone(ast_tasks["kws"])
    with pytest.raises(TaskMismatch, match="merged LoRA folds its update") as err:
        attach_task(shared, "kws", merged.mods.backbone)
    assert "q_proj" in str(err.value) and "merge=False" in str(err.value)
    assert not any(isinstance(m, TaskSwitch) for m in shared.modules())


def test_committed_multitask_table_is_rendered_from_its_json():
    """The README table is what ``benchmarks.multitask --table`` makes of
    ``benchmarks/results/multitask.json``, which holds every configuration."""
    import json

    from benchmarks.multitask import END, START, table

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    with open(os.path.join(root, "benchmarks", "results", "multitask.json")) as fin:
        report = json.load(fin)
    configurations = {(r["tasks"], r["mode"]) for r in report["rows"]}
    assert configurations == {(n, m) for n in (1, 2, 4) for m in ("shared", "separate")}
    with open(os.path.join(root, "README.md")) as fin:
        block = fin.read().split(START, 1)[1].split(END, 1)[0]
    assert block.strip() == table(report).strip(), (
        "README.md is stale: python -m benchmarks.multitask --json "
        "benchmarks/results/multitask.json --table"
    )
