"""Upcycling (issue 23 item 4): ``--petl_init_from=<run>`` starts a mixture
from a finished single-adapter (or LoRA) run.

One tiny ESC-50 run per source method (adapter, lora) is trained through the
recipe; then:

* the mixtures built as the recipes build them and initialised by
  :func:`speechbrain_moe.upcycling.plan_upcycling` give the source model's
  logits at step 0 (to 1e-5) for every construction that should be exact,
  and differ from a mixture started from scratch; Soft-MoA's copies are not
  exact (slots average tokens) but its experts are the adapter;
* the refusals name the reason and the fix;
* through the recipe: an upcycled run trained at lr 1e-30 (its weights
  cannot move in float32, so its checkpoint holds the step-0 model) packages
  into an inference folder that classifies as the source does; another source
  into the same folder is refused; a rerun with the same source resumes its
  own checkpoint (bit-equal to an uninterrupted run, and no second
  initialisation); a debug run of every other recipe with
  ``--petl_init_from`` ends with a working inference folder.
"""

import json
import os
import shutil
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO

from speechbrain_moe.experiment import experiment_identity
from speechbrain_moe.upcycling import UpcyclingError, plan_upcycling

RECIPE = os.path.join(REPO, "recipes", "ESC50", "PETL")
HPARAMS = os.path.join(RECIPE, "hparams", "ast.yaml")
TINY = [
    "--max_frames=100",
    "--batch_size=2",
    "--test_batch_size=4",
    "--device=cpu",
    "--noprogressbar",
]
ONE_EPOCH = ["--number_of_epochs=1"]


def run_recipe(out_dir, methods, args, recipe_dir=RECIPE, hparams=HPARAMS, ok=True):
    """``tests/recipe_runner.py`` for ``methods``; returns the output."""
    cmd = [
        PYTHON,
        os.path.join(REPO, "tests", "recipe_runner.py"),
        recipe_dir,
        hparams,
        str(out_dir),
        ",".join(methods),
        *args,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=900, cwd=str(out_dir)
    )
    output = proc.stdout + proc.stderr
    if ok:
        assert proc.returncode == 0, output[-6000:]
    return proc.returncode, output


@pytest.fixture(scope="module")
def esc50_data(tmp_path_factory):
    """A tiny ESC-50 (3 classes, 2 clips per class and fold, 0.5 s)."""
    from synthetic import generate

    return generate(
        "esc50",
        str(tmp_path_factory.mktemp("esc50")),
        num_classes=3,
        clips_per_class_per_fold=2,
        seconds=0.5,
    )


@pytest.fixture(scope="module")
def sources(tmp_path_factory, tiny_ast_dir, esc50_data):
    """Finished one-epoch ESC-50 runs of ``adapter`` (bottleneck 24) and
    ``lora`` (rank 8), at a learning rate that moves their weights."""
    out = tmp_path_factory.mktemp("sources")
    args = [f"--data_folder={esc50_data}", f"--backbone_source={tiny_ast_dir}"]
    run_recipe(out, ["adapter", "lora"], args + TINY + ONE_EPOCH + ["--lr=0.05"])
    return {"adapter": str(out / "adapter"), "lora": str(out / "lora"), "args": args}


def source_model(folder):
    """The source run as its inference interface loads it."""
    from speechbrain_moe.inference import PETLAudioClassifier

    model = PETLAudioClassifier.from_hparams(source=folder)
    model.mods.eval()
    return model


def labels_of(model):
    """The classes of a loaded classifier, in the order of its head."""
    encoder = model.hparams.label_encoder
    return [encoder.ind2lab[i] for i in range(len(encoder))]


def build_target(tiny_ast_dir, method, overrides, classes=3):
    """A backbone adapted with ``method`` and a fresh head, as the recipe's
    YAML builds them."""
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.petl import apply_method

    backbone = apply_method(AST(tiny_ast_dir, max_frames=100), method, overrides)
    head = torch.nn.Sequential(torch.nn.LayerNorm(32), torch.nn.Linear(32, classes))
    return backbone, head


def logits(backbone, head, wavs):
    """The head's logits of ``wavs`` (eval mode)."""
    backbone.eval()
    head.eval()
    with torch.no_grad():
        return head(backbone(wavs, torch.ones(wavs.shape[0])))


@pytest.fixture(scope="module")
def wavs():
    """Three random 1.05 s clips: longer than max_frames=100 (cut, no
    padded token; the top-k mixtures give padded tokens no update, while
    the adapter adapts them and AST's attention reads them)."""
    return torch.randn(3, 16800, generator=torch.Generator().manual_seed(3)) * 0.1


def exact_moe_file(folder):
    """A user's method file: the MoE-Adapter without its LayerNorm and with
    GELU experts, so that its experts compute what the adapter computes."""
    from importlib import resources

    text = (
        resources.files("speechbrain_moe") / "hparams" / "petl" / "moe_adapter.yaml"
    ).read_text()
    text = text.replace(
        "        implementation: !ref <implementation>\n    placement",
        "        implementation: !ref <implementation>\n"
        "        norm: False\n"
        "        activation: !name:torch.nn.GELU\n    placement",
    )
    assert "norm: False" in text
    path = os.path.join(folder, "moe_gelu.yaml")
    with open(path, "w") as fout:
        fout.write(text)
    return path


EXACT = [
    ("adapter", "dense_moa", {"num_experts": 3, "bottleneck": 24}, None),
    ("adapter", "dense_moa", {"num_experts": 2, "bottleneck": 30}, None),
    ("adapter", "dense_moa", {"num_experts": 4, "bottleneck": 6}, "slice"),
    ("adapter", "moe_gelu", {"num_experts": 3, "top_k": 2, "hidden_size": 24}, None),
    ("adapter", "moe_gelu", {"num_experts": 4, "top_k": 4, "hidden_size": 6}, "slice"),
    ("lora", "dense_lora", {"num_experts": 3, "rank": 8, "alpha": 8.0}, None),
    ("lora", "dense_lora", {"num_experts": 2, "rank": 8, "alpha": 2.0}, None),
    ("lora", "moe_lora", {"num_experts": 3, "top_k": 2, "rank": 8, "alpha": 8.0}, None),
    ("lora", "dense_lora", {"num_experts": 4, "rank": 2, "alpha": 2.0}, "slice"),
]


@pytest.mark.slow
@pytest.mark.parametrize("source,method,overrides,construction", EXACT)
def test_upcycled_mixture_equals_source_at_step_0(
    source, method, overrides, construction, sources, tiny_ast_dir, wavs, tmp_path
):
    model = source_model(sources[source])
    expected = logits(model.mods.backbone, model.mods.classifier, wavs)
    if method == "moe_gelu":
        method = exact_moe_file(str(tmp_path))
    options = {"construction": construction} if construction else {}
    scratch = logits(*build_target(tiny_ast_dir, method, overrides), wavs)
    backbone, head = build_target(tiny_ast_dir, method, overrides)
    plan = plan_upcycling(sources[source], backbone, head, labels_of(model), options)
    plan.apply(backbone, head)
    got = logits(backbone, head, wavs)
    assert plan.exact, plan.summary
    assert (got - expected).abs().max() < 1e-5, (got, expected)
    # the source's adapters matter: a mixture from scratch is far from it
    assert (scratch - expected).abs().max() > 1e-3
    # the logits are not a trivial constant
    assert (expected[0] - expected[1]).abs().max() > 1e-4


@pytest.mark.slow
def test_soft_moa_copies_are_the_adapter_but_not_exact(sources, tiny_ast_dir, wavs):
    from speechbrain_moe.adapters import SoftMoA

    model = source_model(sources["adapter"])
    expected = logits(model.mods.backbone, model.mods.classifier, wavs)
    overrides = {"num_experts": 3, "bottleneck": 24}
    backbone, head = build_target(tiny_ast_dir, "soft_moa", overrides)
    plan = plan_upcycling(sources["adapter"], backbone, head, labels_of(model))
    plan.apply(backbone, head)
    assert not plan.exact and "slots" in " ".join(plan.summary)
    got = logits(backbone, head, wavs)
    assert (got - expected).abs().max() > 1e-6  # tokens are averaged into slots
    # ... yet every expert is the source adapter, and a one-token sequence
    # (every slot is that token) gives the adapter's output exactly
    source_modules = dict(model.mods.backbone.named_modules())
    for name, mixture in backbone.named_modules():
        if not isinstance(mixture, SoftMoA):
            continue
        adapter = source_modules[name]
        x = torch.randn(1, 1, 32)
        with torch.no_grad():
            for i in range(3):
                assert torch.allclose(
                    mixture.experts.expert(i, x), adapter(x), atol=1e-6
                )
            assert torch.allclose(mixture(x), adapter(x), atol=1e-6)
    # the head and the trained norms are the source's
    for key, value in model.mods.classifier.state_dict().items():
        assert torch.equal(head.state_dict()[key], value)


@pytest.mark.slow
def test_packaged_moe_adapter_is_upcycled_with_a_warning(sources, tiny_ast_dir, caplog):
    model = source_model(sources["adapter"])
    overrides = {"num_experts": 3, "top_k": 2, "hidden_size": 24}
    backbone, head = build_target(tiny_ast_dir, "moe_adapter", overrides)
    plan = plan_upcycling(sources["adapter"], backbone, head, labels_of(model))
    summary = " ".join(plan.summary)
    assert not plan.exact
    assert "LayerNorm" in summary and "SiLU" in summary


@pytest.mark.slow
def test_head_rows_follow_the_target_class_order(sources, tiny_ast_dir, wavs):
    model = source_model(sources["adapter"])
    labels = labels_of(model)
    expected = logits(model.mods.backbone, model.mods.classifier, wavs)
    backbone, head = build_target(
        tiny_ast_dir, "dense_moa", {"num_experts": 2, "bottleneck": 24}
    )
    reordered = labels[::-1]
    plan_upcycling(sources["adapter"], backbone, head, reordered).apply(backbone, head)
    got = logits(backbone, head, wavs)
    assert (got - expected.flip(-1)).abs().max() < 1e-5


REFUSALS = [
    # (source, method, overrides, options, what the message must say)
    ("adapter", "adapter", {}, {}, "--petl_method=dense_moa, soft_moa or moe_adapter"),
    ("adapter", "dense_lora", {}, {}, "--petl_method=dense_moa"),
    ("lora", "dense_moa", {}, {}, "--petl_method=dense_lora"),
    (
        "adapter",
        "dense_moa",
        {"placement": "houlsby", "bottleneck": 24},
        {},
        "placement: pfeiffer_attention",
    ),
    (
        "adapter",
        "dense_moa",
        {"mode": "sequential", "bottleneck": 24},
        {},
        "mode: parallel",
    ),
    (
        "adapter",
        "dense_moa",
        {"train_norms": False, "bottleneck": 24},
        {},
        "train_norms: True",
    ),
    ("adapter", "dense_moa", {"bottleneck": 8}, {}, "bottleneck: 24"),
    (
        "adapter",
        "dense_moa",
        {"num_experts": 5, "bottleneck": 4},
        {"construction": "slice"},
        "product is 24",
    ),
    ("adapter", "soft_moa", {"bottleneck": 24}, {"construction": "slice"}, "slices"),
    (
        "adapter",
        "moe_adapter",
        {"num_experts": 4, "top_k": 2, "hidden_size": 6},
        {"construction": "slice"},
        "top_k: 4",
    ),
    (
        "lora",
        "dense_lora",
        {"rank": 8, "target_layers": ["*q_proj"]},
        {},
        "target_layers",
    ),
    ("adapter", "dense_moa", {"bottleneck": 24}, {"noise": -1}, "noise"),
]


@pytest.mark.slow
@pytest.mark.parametrize("source,method,overrides,options,fix", REFUSALS)
def test_refusals_name_the_reason_and_the_fix(
    source, method, overrides, options, fix, sources, tiny_ast_dir
):
    model = source_model(sources[source])
    backbone, head = build_target(tiny_ast_dir, method, overrides)
    with pytest.raises(UpcyclingError) as err:
        plan_upcycling(sources[source], backbone, head, labels_of(model), options)
    assert fix in str(err.value), str(err.value)


@pytest.mark.slow
def test_refuses_other_classes_and_other_backbones(sources, tiny_ast_dir, tmp_path):
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.petl import apply_method
    from synthetic.models import make_tiny_ast

    overrides = {"bottleneck": 24}
    backbone, head = build_target(tiny_ast_dir, "dense_moa", overrides)
    with pytest.raises(UpcyclingError, match="same classes"):
        plan_upcycling(sources["adapter"], backbone, head, ["a", "b", "c"])
    model = source_model(sources["adapter"])
    # another ESC-50 fold: the source trained on this run's test clips
    identity = {"fold": 3, "valid_fold": None}
    with pytest.raises(UpcyclingError, match=r"another data split \(fold: 1 -> 3"):
        plan_upcycling(
            sources["adapter"], backbone, head, labels_of(model), identity=identity
        )
    identity["fold"] = 1
    assert plan_upcycling(
        sources["adapter"], backbone, head, labels_of(model), identity=identity
    ).exact
    other = make_tiny_ast(str(tmp_path / "other"), intermediate_size=48)
    backbone = apply_method(AST(other, max_frames=100), "dense_moa", overrides)
    with pytest.raises(UpcyclingError, match="another backbone.*intermediate_size"):
        plan_upcycling(sources["adapter"], backbone, head, labels_of(model))
    backbone = apply_method(AST(tiny_ast_dir, max_frames=60), "dense_moa", overrides)
    with pytest.raises(UpcyclingError, match="max_frames: 100 -> 60"):
        plan_upcycling(sources["adapter"], backbone, head, labels_of(model))


@pytest.mark.slow
def test_refuses_unfinished_damaged_and_unsuitable_sources(
    sources, tiny_ast_dir, tmp_path
):
    model = source_model(sources["adapter"])
    labels = labels_of(model)
    backbone, head = build_target(tiny_ast_dir, "dense_moa", {"bottleneck": 24})

    def refused(folder, match):
        with pytest.raises(UpcyclingError, match=match):
            plan_upcycling(str(folder), backbone, head, labels)

    refused(tmp_path / "missing", "does not exist")
    refused(tmp_path, "no inference.yaml")
    # a run without a finished checkpoint (e.g. interrupted, or --debug)
    run = tmp_path / "unfinished"
    shutil.copytree(sources["adapter"], run)
    for name in os.listdir(run / "save"):
        if name.startswith("CKPT+"):
            shutil.rmtree(run / "save" / name)
    refused(run, "not a finished, intact run.*No complete checkpoint")
    # a checkpoint changed after training (its MANIFEST.json says so)
    run = tmp_path / "damaged"
    shutil.copytree(sources["adapter"], run)
    ckpt = next(p for p in (run / "save").iterdir() if p.name.startswith("CKPT+"))
    data = bytearray((ckpt / "backbone.ckpt").read_bytes())
    data[-10] ^= 0xFF
    (ckpt / "backbone.ckpt").write_bytes(bytes(data))
    refused(run, "not a finished, intact run.*Damaged")
    # a packaged folder that fails its manifest check, or has none
    packaged = tmp_path / "packaged"
    shutil.copytree(os.path.join(sources["adapter"], "inference_model"), packaged)
    assert plan_upcycling(str(packaged), backbone, head, labels).exact
    (packaged / "classifier.ckpt").write_bytes(b"x")
    refused(packaged, "Damaged")
    (packaged / "MANIFEST.json").unlink()
    refused(packaged, "has no MANIFEST.json")


@pytest.mark.slow
def test_refuses_methods_that_cannot_seed_experts(tmp_path, tiny_ast_dir, esc50_data):
    """bitfit (no adapter), convpass (a convolution inside) and a mixture."""
    args = [f"--data_folder={esc50_data}", f"--backbone_source={tiny_ast_dir}"]
    methods = ["bitfit", "convpass", "dense_moa"]
    run_recipe(tmp_path, methods, args + TINY + ONE_EPOCH)
    backbone, head = build_target(tiny_ast_dir, "dense_moa", {"bottleneck": 24})
    labels = labels_of(source_model(str(tmp_path / "bitfit")))
    for method, why in zip(methods, ["no single", "convolution", "already a mixture"]):
        with pytest.raises(UpcyclingError, match=f"cannot seed.*{why}"):
            plan_upcycling(str(tmp_path / method), backbone, head, labels)


@pytest.mark.slow
def test_identity_holds_the_source_folder_and_weights(sources, tmp_path):
    def identity(source):
        overrides = f"data_folder: /data\npetl_init_from: {source}\n"
        return experiment_identity(HPARAMS, overrides)[0]

    first = identity(sources["adapter"])
    assert first["petl_init_from"] == sources["adapter"]
    assert len(first["petl_init_from_sha256"]) == 64
    assert identity(sources["adapter"]) == first
    copy = tmp_path / "copy"
    shutil.copytree(sources["adapter"], copy)
    moved = identity(str(copy))
    assert moved["petl_init_from"] != first["petl_init_from"]
    assert moved["petl_init_from_sha256"] == first["petl_init_from_sha256"]
    # the same folder trained further (another best checkpoint): other weights
    ckpt = next(p for p in (copy / "save").iterdir() if p.name.startswith("CKPT+"))
    state = torch.load(ckpt / "classifier.ckpt", weights_only=True)
    state = {k: v + 1 for k, v in state.items()}
    torch.save(state, ckpt / "classifier.ckpt")
    from speechbrain_moe.inference.verify import write_manifest

    write_manifest(str(ckpt), [p.name for p in ckpt.iterdir() if p.suffix == ".ckpt"])
    assert (
        identity(str(copy))["petl_init_from_sha256"] != first["petl_init_from_sha256"]
    )
    assert (
        "petl_init_from_sha256"
        not in experiment_identity(HPARAMS, "data_folder: /data\n")[0]
    )


def newest_weights(save_folder):
    """backbone and classifier tensors of the newest checkpoint."""
    folders = sorted(p for p in os.listdir(save_folder) if p.startswith("CKPT+"))
    newest = os.path.join(save_folder, folders[-1])
    return {
        part: torch.load(os.path.join(newest, f"{part}.ckpt"), weights_only=True)
        for part in ("backbone", "classifier")
    }


@pytest.mark.slow
def test_recipe_upcycles_resumes_and_refuses_another_source(sources, tmp_path, wavs):
    up = [f"--petl_init_from={sources['adapter']}"]
    mixture = ["--petl_overrides={num_experts: 3, bottleneck: 24}"]
    base = sources["args"] + TINY + mixture + up
    # step 0 through the recipe: at lr 1e-30 no weight can move in float32
    (tmp_path / "frozen").mkdir()
    _, output = run_recipe(
        tmp_path / "frozen", ["dense_moa"], base + ONE_EPOCH + ["--lr=1e-30"]
    )
    assert "Upcycled from" in output
    upcycled = source_model(str(tmp_path / "frozen" / "dense_moa"))
    source = source_model(sources["adapter"])
    got = logits(upcycled.mods.backbone, upcycled.mods.classifier, wavs)
    expected = logits(source.mods.backbone, source.mods.classifier, wavs)
    assert (got - expected).abs().max() < 1e-5
    assert upcycled.classify_batch(wavs)[3] == source.classify_batch(wavs)[3]

    # resume: 1 epoch, then the same command for 2 epochs == 2 epochs at once
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    run_recipe(tmp_path / "a", ["dense_moa"], base + ONE_EPOCH)
    _, output = run_recipe(
        tmp_path / "a", ["dense_moa"], base + ["--number_of_epochs=2"]
    )
    assert "Upcycled from" not in output  # resumed: no second initialisation
    run_recipe(tmp_path / "b", ["dense_moa"], base + ["--number_of_epochs=2"])
    resumed = newest_weights(tmp_path / "a" / "dense_moa" / "save")
    straight = newest_weights(tmp_path / "b" / "dense_moa" / "save")
    for part in resumed:
        for key, value in straight[part].items():
            if isinstance(value, torch.Tensor):
                assert torch.equal(resumed[part][key], value), (part, key)
    log = (tmp_path / "a" / "dense_moa" / "log.txt").read_text()
    assert log.count("Upcycled from") == 1

    # another source into the same folder: refused, naming the field
    code, output = run_recipe(
        tmp_path / "a",
        ["dense_moa"],
        sources["args"]
        + TINY
        + ONE_EPOCH
        + mixture
        + [f"--petl_init_from={sources['lora']}"],
        ok=False,
    )
    assert code != 0
    assert "holds another experiment" in output and "petl_init_from" in output
    record = json.loads((tmp_path / "a" / "dense_moa" / "experiment.json").read_text())
    assert record["identity"]["petl_init_from"] == sources["adapter"]


RECIPES = {
    "ESC50": "esc50",
    "UrbanSound8k": "us8k",
    "Google-speech-commands": "gsc",
    "fluent-speech-commands": "fsc",
}
DEBUG = ["--debug", "--debug_batches=1", "--debug_epochs=1", "--debug_persistently"]


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(set(RECIPES) - {"ESC50"}))
def test_debug_run_of_every_recipe_upcycles(
    recipe, tmp_path, tiny_ast_dir, synthetic_dataset, wavs
):
    """A debug source run (kept with --debug_persistently), then a debug run
    of dense_moa upcycled from it: its folder loads for inference. (ESC-50:
    test_recipe_upcycles_resumes_and_refuses_another_source.)"""
    recipe_dir = os.path.join(REPO, "recipes", recipe, "PETL")
    hparams = os.path.join(recipe_dir, "hparams", "ast.yaml")
    args = [
        f"--data_folder={synthetic_dataset(RECIPES[recipe])}",
        f"--backbone_source={tiny_ast_dir}",
        *TINY,
        *ONE_EPOCH,
        *DEBUG,
    ]
    run_recipe(tmp_path, ["adapter"], args, recipe_dir, hparams)
    source = str(tmp_path / "adapter")
    _, output = run_recipe(
        tmp_path,
        ["dense_moa"],
        args
        + [
            "--petl_overrides={num_experts: 2, bottleneck: 24}",
            f"--petl_init_from={source}",
        ],
        recipe_dir,
        hparams,
    )
    assert "Upcycled from" in output
    model = source_model(str(tmp_path / "dense_moa"))
    assert len(model.classify_batch(wavs)[3]) == 3
