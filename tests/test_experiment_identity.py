"""A run folder is one experiment (speechbrain_moe/experiment.py).

* The resume matrix: a finished run of a classification recipe (ESC-50) and
  of the LLM bridge, then reruns into its folder that change the method, one
  shape-preserving setting, the backbone source (another folder of the same
  shapes), the fold / data subset: each is refused naming the field, exits
  non-zero, and leaves every file of the finished run byte-identical
  (SHA-256). The same experiment resumes (more epochs, other loader workers
  and test batch size); ``--overwrite_experiment=True`` moves the old run
  aside, intact, and starts afresh.
* The head is sized from the training data (``n_classes: null``); a number
  that differs from the data is refused; a run on 3 classes classifies
  through the inference interface with labels the data has.
* Checkpoints: the trained tensors' description and the experiment record in
  each checkpoint refuse another method, setting or experiment.
* Cross-validation results accumulate across invocations; ``--fold`` and its
  abbreviations are refused.
"""

import glob
import hashlib
import json
import os
import shutil
import subprocess
import textwrap

import pytest
import torch
from conftest import PYTHON, REPO

from speechbrain_moe.experiment import Experiment, ExperimentMismatch

ESC50 = os.path.join(REPO, "recipes", "ESC50", "PETL")
BRIDGE = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
ENV = dict(
    os.environ,
    OMP_NUM_THREADS="1",
    PYTHONPATH=os.pathsep.join([os.path.join(REPO, "tests"), REPO]),
)
TINY = ["--max_frames=100", "--batch_size=4", "--device=cpu", "--noprogressbar"]


def tree_hashes(folder):
    """SHA-256 of every file under ``folder``, by relative path."""
    hashes = {}
    for root, _, files in os.walk(folder):
        for name in files:
            path = os.path.join(root, name)
            with open(path, "rb") as fin:
                digest = hashlib.sha256(fin.read()).hexdigest()
            hashes[os.path.relpath(path, folder)] = digest
    return hashes


def run_script(script, args, cwd, timeout=900):
    """Runs ``script`` with ``args`` in a subprocess."""
    return subprocess.run(
        [PYTHON, script, *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=timeout,
    )


def run_many(script, runs, tmp_path, timeout=900):
    """Runs ``script`` once per argument list in one process
    (tests/argv_runner.py); returns the outcomes."""
    argv_file, result_file = tmp_path / "argv.json", tmp_path / "result.json"
    argv_file.write_text(json.dumps(runs))
    proc = run_script(
        os.path.join(REPO, "tests", "argv_runner.py"),
        [script, str(result_file), str(argv_file)],
        cwd=os.path.dirname(script),
        timeout=timeout,
    )
    assert result_file.is_file(), (proc.stdout + proc.stderr)[-5000:]
    return json.loads(result_file.read_text())


# ---------------------------------------------------------------- ESC-50


@pytest.fixture(scope="module")
def esc50_run(tmp_path_factory, tiny_ast_dir):
    """A finished 1-epoch adapter run of the ESC-50 recipe (3 classes, no
    ``--n_classes``: the head is sized from the data)."""
    from synthetic import generate

    root = tmp_path_factory.mktemp("identity_esc50")
    data = generate("esc50", str(root / "data"), num_classes=3, seconds=0.5)
    other_data = shutil.copytree(data, root / "data_copy")
    other_ast = shutil.copytree(tiny_ast_dir, root / "ast_copy")
    out = root / "run"
    base = [
        os.path.join(ESC50, "hparams", "ast.yaml"),
        f"--data_folder={data}",
        f"--backbone_source={tiny_ast_dir}",
        f"--output_folder={out}",
        "--petl_method=adapter",
        *TINY,
    ]
    proc = run_script(
        os.path.join(ESC50, "train.py"), [*base, "--number_of_epochs=1"], root
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return {
        "root": root,
        "out": out,
        "base": base,
        "data": str(data),
        "other_data": str(other_data),
        "other_ast": str(other_ast),
    }


ESC50_CHANGES = {
    "method": (["--petl_method=bitfit"], "petl_method"),
    "setting": (
        ["--petl_overrides={{mode: sequential}}"],
        "petl_method_settings",
    ),
    "backbone source": (["--backbone_source={other_ast}"], "backbone_source"),
    "fold": (["--fold=3"], "fold"),
    "valid fold": (["--valid_fold=4"], "valid_fold"),
    "data folder": (["--data_folder={other_data}"], "data_folder"),
}


def replace_args(base, changes, run):
    """``base`` with the ``--key=`` arguments of ``changes`` replaced (or added)."""
    changes = [c.format(**run) for c in changes]
    keys = {c.split("=", 1)[0] for c in changes}
    return [a for a in base if a.split("=", 1)[0] not in keys] + changes


@pytest.mark.slow
def test_classification_resume_matrix(esc50_run, tmp_path):
    run = esc50_run
    out, script = run["out"], os.path.join(ESC50, "train.py")
    before = tree_hashes(out)
    recorded = json.loads((out / "experiment.json").read_text())["identity"]
    assert len(recorded["labels"]) == 3  # the head has one output per class

    # one refusal in its own process: the exit status
    proc = run_script(
        script, replace_args(run["base"], ["--petl_method=bitfit"], run), tmp_path
    )
    assert proc.returncode != 0
    assert "holds another experiment" in proc.stderr and "petl_method" in proc.stderr
    assert "--overwrite_experiment=True" in proc.stderr
    assert tree_hashes(out) == before

    cases = list(ESC50_CHANGES.items())
    outcomes = run_many(
        script,
        [replace_args(run["base"], args, run) for _, (args, _) in cases],
        tmp_path,
    )
    for (case, (_, field)), outcome in zip(cases, outcomes):
        assert outcome["exit"] != 0, case
        assert outcome["error"] == "ExperimentMismatch", (case, outcome)
        assert f"\n  {field}: " in outcome["message"], (case, outcome["message"])
    assert tree_hashes(out) == before  # no file of the finished run changed

    # the same experiment resumes: more epochs, other workers / test batches
    more = ["--number_of_epochs=2", "--num_workers=1", "--test_batch_size=2"]
    proc = run_script(script, replace_args(run["base"], more, run), tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    log = (out / "train_log.txt").read_text()
    assert "epoch: 1," in log and "epoch: 2," in log and log.count("epoch: 1,") == 1
    assert "Loading a checkpoint" in (out / "log.txt").read_text()

    # starting over: the old run is moved aside, intact; the new one is fresh
    finished = tree_hashes(out)
    args = [
        "--petl_method=bitfit",
        "--overwrite_experiment=True",
        "--number_of_epochs=1",
    ]
    proc = run_script(script, replace_args(run["base"], args, run), tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    (old,) = glob.glob(f"{out}.old-*")
    assert tree_hashes(old) == finished
    identity = json.loads((out / "experiment.json").read_text())["identity"]
    assert identity["petl_method"] == "bitfit"
    assert (out / "train_log.txt").read_text().count("epoch: 1,") == 1
    assert (
        "Loading a checkpoint from"
        not in (out / "log.txt").read_text().split("Going into epoch 1")[0]
    )


@pytest.mark.slow
def test_head_is_sized_from_the_data_and_classifies(esc50_run, tmp_path):
    """3 classes, no --n_classes: a head of 3 outputs; inference never meets
    an output without a label (the old default of 50 crashed with KeyError)."""
    from speechbrain_moe.inference import PETLAudioClassifier

    out = esc50_run["out"]
    if not (out / "train_log.txt").is_file():
        pytest.skip("the fixture's run was moved by another test")
    model = PETLAudioClassifier.from_hparams(
        source=str(out), hparams_file="inference.yaml", savedir=str(tmp_path / "m")
    )
    labels = set(
        json.loads((out / "experiment.json").read_text())["identity"]["labels"]
    )
    assert model.mods.classifier[-1].out_features == 3
    torch.manual_seed(0)
    for _ in range(4):
        log_probs, _, _, predicted = model.classify_batch(torch.randn(8, 8000))
        assert log_probs.shape == (8, 3)
        assert set(predicted) <= labels

    # an explicit n_classes that differs from the data is refused with the fix
    args = replace_args(
        esc50_run["base"],
        ["--n_classes=50", f"--output_folder={tmp_path / 'n50'}"],
        esc50_run,
    )
    proc = run_script(os.path.join(ESC50, "train.py"), args, tmp_path)
    assert proc.returncode != 0
    output = proc.stdout + proc.stderr  # SpeechBrain logs the error by now
    assert "n_classes=50, but the training data" in output
    assert "--n_classes=3" in output
    assert not glob.glob(str(tmp_path / "n50" / "save" / "CKPT+*"))


@pytest.mark.slow
def test_ddp_refusal_ends_every_rank(esc50_run, tmp_path):
    """Under torchrun the main process decides and broadcasts: both ranks
    stop with the refusal, none waits in a collective (the timeout would)."""
    out = esc50_run["out"]
    before = tree_hashes(out)
    args = replace_args(
        esc50_run["base"], ["--seed=7", "--distributed_backend=gloo"], esc50_run
    )
    proc = subprocess.run(
        [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
        + [os.path.join(ESC50, "train.py"), *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode != 0
    assert proc.stderr.count("holds another experiment") >= 2  # both ranks
    assert "seed: 1986 -> 7" in proc.stderr
    assert tree_hashes(out) == before


# ---------------------------------------------------------------- LLM bridge


@pytest.fixture(scope="module")
def bridge_run(tmp_path_factory):
    """A finished 1-epoch MoE-Adapter bridge run on 2 synthetic utterances."""
    from synthetic.librispeech import make_librispeech
    from synthetic.llm import make_tiny_llm
    from synthetic.models import make_tiny_whisper

    root = tmp_path_factory.mktemp("identity_bridge")
    libri = make_librispeech(str(root / "LibriSpeech"))
    other_libri = shutil.copytree(libri, root / "LibriSpeech_copy")
    llm = make_tiny_llm(str(root / "llm"))
    whisper = make_tiny_whisper(str(root / "whisper"))
    other_whisper = make_tiny_whisper(str(root / "whisper_copy"))
    out = root / "run"
    settings = (
        "{fused_size: 64, expert_hidden: 32, aggregation_hidden: 128, num_experts: 4"
    )
    base = [
        os.path.join(BRIDGE, "hparams", "bridge.yaml"),
        f"--data_folder={libri}",
        f"--llm_source={llm}",
        f"--backbone_source={whisper}",
        f"--output_folder={out}",
        "--bridge=moe_adapter",
        f"--bridge_overrides={settings}, top_k: 2}}",
        "--select_n_sentences=2",
        "--batch_size=2",
        "--valid_decode=False",
        "--max_new_tokens=4",
        "--device=cpu",
        "--noprogressbar",
    ]
    proc = run_script(
        os.path.join(BRIDGE, "train.py"), [*base, "--number_of_epochs=1"], root
    )
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-5000:]
    return {
        "out": out,
        "base": base,
        "settings": settings,
        "other_libri": str(other_libri),
        "other_whisper": str(other_whisper),
    }


BRIDGE_CHANGES = {
    "bridge": (["--bridge=dense", "--bridge_overrides={{hidden_size: 64}}"], "bridge"),
    "setting": (["--bridge_overrides={settings}, top_k: 1}}"], "bridge_settings"),
    "backbone source": (["--backbone_source={other_whisper}"], "backbone_source"),
    "data subset": (["--select_n_sentences=3"], "select_n_sentences"),
    "data folder": (["--data_folder={other_libri}"], "data_folder"),
}


@pytest.mark.slow
def test_bridge_resume_matrix(bridge_run, tmp_path):
    run = bridge_run
    out, script = run["out"], os.path.join(BRIDGE, "train.py")
    before = tree_hashes(out)
    cases = list(BRIDGE_CHANGES.items())
    outcomes = run_many(
        script,
        [replace_args(run["base"], args, run) for _, (args, _) in cases],
        tmp_path,
    )
    for (case, (_, field)), outcome in zip(cases, outcomes):
        assert outcome["exit"] != 0, case
        assert outcome["error"] == "ExperimentMismatch", (case, outcome)
        assert f"\n  {field}: " in outcome["message"], (case, outcome["message"])
    assert tree_hashes(out) == before

    proc = run_script(
        script, replace_args(run["base"], ["--select_n_sentences=3"], run), tmp_path
    )
    assert proc.returncode != 0 and "select_n_sentences: 2 -> 3" in proc.stderr
    assert tree_hashes(out) == before

    # the same experiment resumes with more epochs and other decoding
    more = ["--number_of_epochs=2", "--num_beams=2"]
    proc = run_script(script, replace_args(run["base"], more, run), tmp_path)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    log = (out / "train_log.txt").read_text()
    assert log.count("epoch: 1,") == 1 and "epoch: 2," in log


def test_bridge_default_output_folder_names_the_data_subset():
    from speechbrain_moe.experiment import resolved_settings

    hparams = os.path.join(BRIDGE, "hparams", "bridge.yaml")
    smoke = resolved_settings(hparams, "data_folder: d\nselect_n_sentences: 100")
    full = resolved_settings(hparams, "data_folder: d")
    assert smoke["output_folder"].endswith("n_sentences_100")
    assert smoke["output_folder"] != full["output_folder"]


# ---------------------------------------------------------------- in-process


def test_identity_ignores_what_does_not_define_the_experiment(tmp_path):
    hparams = os.path.join(ESC50, "hparams", "ast.yaml")
    base = f"data_folder: {tmp_path}\noutput_folder: {tmp_path / 'out'}\n"
    reference = Experiment(hparams, base).identity
    same = base + (
        "number_of_epochs: 7\nnum_workers: 3\ntest_batch_size: 1\n"
        "use_tensorboard: True\nskip_prep: True\noverwrite_experiment: True\n"
    )
    assert Experiment(hparams, same).identity == reference
    assert Experiment(hparams, base, {"device": "cuda:1", "debug": True}).identity == (
        reference
    )
    for change, field in [
        ("lr: 0.1", "lr"),
        ("seed: 3", "seed"),
        ("petl_overrides: {num_experts: 4}", "petl_method_settings"),
        ("max_frames: 200", "max_frames"),
    ]:
        other = Experiment(hparams, base + change + "\n").identity
        assert other[field] != reference[field], change
    other = Experiment(hparams, base, {"grad_accumulation_factor": 2}).identity
    assert other != reference


def test_user_method_file_content_is_part_of_the_identity(tmp_path):
    from importlib import resources

    method = tmp_path / "my_adapter.yaml"
    shipped = resources.files("speechbrain_moe") / "hparams" / "petl" / "adapter.yaml"
    method.write_text(shipped.read_text())
    hparams = os.path.join(ESC50, "hparams", "ast.yaml")
    overrides = f"data_folder: {tmp_path}\npetl_method: {method}\n"
    first = Experiment(hparams, overrides).identity
    method.write_text(method.read_text().replace("bottleneck: 24", "bottleneck: 8"))
    second = Experiment(hparams, overrides).identity
    assert first["petl_method_sha256"] != second["petl_method_sha256"]
    assert second["petl_method_settings"]["bottleneck"] == 8


def write_yaml(path, text):
    """Writes a small recipe YAML."""
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_checkpoints_without_record_are_refused_and_overwrite_moves_them(tmp_path):
    hparams = write_yaml(
        tmp_path / "h.yaml",
        """\
        seed: 1
        output_folder: !PLACEHOLDER
        save_folder: !ref <output_folder>/save
        overwrite_experiment: False
        """,
    )
    out = tmp_path / "out"
    (out / "save" / "CKPT+old").mkdir(parents=True)
    (out / "save" / "CKPT+old" / "model.ckpt").write_bytes(b"weights")
    with pytest.raises(ExperimentMismatch, match="holds checkpoints but"):
        Experiment(hparams, f"output_folder: {out}").check_folder()
    assert (out / "save" / "CKPT+old" / "model.ckpt").read_bytes() == b"weights"
    assert Experiment(hparams, f"output_folder: {out}").check_folder(True) == "restart"
    (old,) = glob.glob(f"{out}.old-*")
    assert open(os.path.join(old, "save", "CKPT+old", "model.ckpt"), "rb").read() == (
        b"weights"
    )
    assert not out.exists()


def test_checkpoint_of_another_experiment_is_refused(tmp_path):
    hparams = write_yaml(
        tmp_path / "h.yaml",
        """\
        seed: 1
        output_folder: !PLACEHOLDER
        """,
    )
    first = Experiment(hparams, f"output_folder: {tmp_path}/a")
    first.record(labels=["cat", "dog"])
    first.save(tmp_path / "experiment.ckpt")
    Experiment(hparams, f"output_folder: {tmp_path}/b").load(
        tmp_path / "experiment.ckpt"
    )
    other = Experiment(hparams, f"output_folder: {tmp_path}/b\nseed: 2")
    with pytest.raises(ExperimentMismatch, match=r"seed: 1 -> 2"):
        other.load(tmp_path / "experiment.ckpt")
    relabelled = Experiment(hparams, f"output_folder: {tmp_path}/c")
    relabelled.record(labels=["dog", "cat"])
    with pytest.raises(ExperimentMismatch, match="labels"):
        relabelled.load(tmp_path / "experiment.ckpt")


PARALLEL = ("adapter", {"bottleneck": 4, "mode": "parallel"})
SEQUENTIAL = ("adapter", {"bottleneck": 4, "mode": "sequential"})


@pytest.mark.parametrize(
    "trained, resumed, differing",
    [
        (PARALLEL, SEQUENTIAL, "petl_settings"),
        (("full_ft", {}), ("bitfit", {}), "petl_method"),
        (("full_ft", {}), ("linear", {}), "petl_method"),
    ],
)
def test_trained_tensors_refuse_another_method(
    tmp_path, tiny_ast_dir, trained, resumed, differing
):
    """Same tensor names and shapes, another method or setting: refused."""
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.petl import apply_method

    def build(method):
        name, overrides = method
        return apply_method(AST(tiny_ast_dir, max_frames=100), name, overrides)

    path = tmp_path / "backbone.ckpt"
    build(trained).save_trainable(path)
    build(trained).load_trainable(path)  # the same method loads
    with pytest.raises(RuntimeError, match=differing) as err:
        build(resumed).load_trainable(path)
    assert "was trained on" in str(err.value) and "but this model is" in str(err.value)


# ---------------------------------------------------------------- cross-validation

FAKE_TRAIN = """\
import os, sys
import speechbrain as sb
from speechbrain_moe.experiment import Experiment

hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
experiment = Experiment(hparams_file, overrides, run_opts)
hparams = experiment.settings
experiment.check_folder(overwrite=hparams["overwrite_experiment"])
os.makedirs(hparams["output_folder"], exist_ok=True)
experiment.record()
with open(os.path.join(hparams["output_folder"], "train_log.txt"), "a") as fout:
    fout.write(f"test accuracy: {hparams['fold'] / 10 + hparams['lr']}\\n")
"""


@pytest.fixture
def fake_recipe(tmp_path):
    """A stand-in train.py (records its experiment, logs accuracy fold/10 +
    lr) and its YAML: cross_validate's bookkeeping without training."""
    script = tmp_path / "train.py"
    script.write_text(FAKE_TRAIN)
    hparams = write_yaml(
        tmp_path / "h.yaml",
        """\
        fold: 1
        lr: 0.0
        data_folder: !PLACEHOLDER
        output_folder: !PLACEHOLDER
        save_folder: !ref <output_folder>/save
        overwrite_experiment: False
        """,
    )
    return str(script), hparams


def cross_validate(script, hparams, cv, *args):
    """``cross_validation_main`` on the fake recipe, in a subprocess."""
    code = (
        "import sys; from speechbrain_moe.crossval import cross_validation_main; "
        f"cross_validation_main({script!r}, 5, argv=sys.argv[1:])"
    )
    return subprocess.run(
        [
            PYTHON,
            "-c",
            code,
            hparams,
            f"--output_folder={cv}",
            "--data_folder=/d",
            *args,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )


@pytest.mark.slow
def test_cross_validation_results_accumulate(fake_recipe, tmp_path):
    script, hparams = fake_recipe
    cv = tmp_path / "cv"
    summary = cv / "cross_validation.json"
    assert cross_validate(script, hparams, cv, "--folds=1").returncode == 0
    # the remaining folds later: the finished one is kept, not run again
    proc = cross_validate(script, hparams, cv, "--folds=1,2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fold 1: keeps its recorded test accuracy 0.1000" in proc.stdout
    assert (cv / "fold1" / "train_log.txt").read_text().count("test accuracy") == 1
    result = json.loads(summary.read_text())
    assert result["folds"] == {"1": 0.1, "2": 0.2}
    assert result["mean"] == pytest.approx(0.15)
    assert "2-fold cross-validation (folds 1,2)" in proc.stdout
    # re-running a finished fold is a choice
    proc = cross_validate(script, hparams, cv, "--folds=1", "--rerun_finished")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (cv / "fold1" / "train_log.txt").read_text().count("test accuracy") == 2
    assert json.loads(summary.read_text())["folds"] == {"1": 0.1, "2": 0.2}

    # another configuration never joins the recorded folds
    before = tree_hashes(cv)
    proc = cross_validate(script, hparams, cv, "--folds=3", "--lr=0.5")
    assert proc.returncode != 0
    assert "fold 1" in proc.stderr and "lr: 0.0 -> 0.5" in proc.stderr
    # starting one fold over with it would mix the other into the mean
    proc = cross_validate(
        script, hparams, cv, "--folds=1", "--lr=0.5", "--overwrite_experiment=True"
    )
    assert proc.returncode != 0 and "fold 2" in proc.stderr
    assert "fold 1:" not in proc.stderr  # the requested fold may start over
    assert tree_hashes(cv) == before
    # every recorded fold started over: their results are replaced
    proc = cross_validate(
        script, hparams, cv, "--folds=1,2", "--lr=0.5", "--overwrite_experiment=True"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads(summary.read_text())["folds"] == pytest.approx(
        {"1": 0.6, "2": 0.7}
    )
    assert len(glob.glob(str(cv / "fold1.old-*"))) == 1


@pytest.mark.parametrize("argument", ["--fold=3", "--fol=3", "--fold"])
def test_cross_validation_refuses_fold(argument, tmp_path):
    proc = subprocess.run(
        [
            PYTHON,
            os.path.join(ESC50, "cross_validate.py"),
            os.path.join(ESC50, "hparams", "ast.yaml"),
            f"--output_folder={tmp_path / 'cv'}",
            f"--data_folder={tmp_path}",
            "--folds=1,2",
            argument,
        ],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=600,
    )
    assert proc.returncode == 2
    assert "use --folds" in proc.stderr.lower() or "with --folds" in proc.stderr
    assert argument.split("=")[0] in proc.stderr
    assert not (tmp_path / "cv").exists()


def test_method_name_is_not_a_path_beside_a_folder_of_that_name(tmp_path, monkeypatch):
    """The first run creates ``soft_moa/`` (its output folder) in the working
    directory; the identity of the next run must still record the packaged
    method's name, not that folder (a ``--test_only`` rerun was refused)."""
    from speechbrain_moe.experiment import experiment_identity

    hparams = tmp_path / "h.yaml"
    hparams.write_text(
        "seed: 1\npetl_method: soft_moa\npetl_overrides: {}\n"
        "data_folder: data\noutput_folder: !ref <petl_method>\n"
    )
    monkeypatch.chdir(tmp_path)
    os.makedirs("data")
    before, _ = experiment_identity(str(hparams), {})
    os.makedirs("soft_moa")
    after, _ = experiment_identity(str(hparams), {})
    assert after["petl_method"] == "soft_moa"
    assert after == before
    assert after["data_folder"] == str(tmp_path / "data")
