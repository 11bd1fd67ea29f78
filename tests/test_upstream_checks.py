"""Upstream readiness: SpeechBrain's recipe-consistency rules
(``tests/consistency/test_recipe.py`` and ``tests/utils`` of its repository)
applied to every recipe, its docstring rule applied to ``speechbrain_moe``,
and safe checkpoint loading (``weights_only=True`` everywhere).

Recipes are listed in ``tests/recipes/<Dataset>.csv`` in upstream's format;
the ``inference.yaml`` files are not training recipes and are checked
separately (every key used by the inference interface or referenced).
"""

import ast
import csv
import dataclasses
import glob
import os
import re
import shlex

import pytest
import torch
from conftest import REPO
from speechbrain.utils.run_opts import RunOptions
from test_recipe_consistency import unused_keys, yaml_top_level_keys

CSV_FOLDER = os.path.join(REPO, "tests", "recipes")
COLUMNS = [
    "Task",
    "Dataset",
    "Script_file",
    "Hparam_file",
    "Data_prep_file",
    "Readme_file",
    "Result_url",
    "HF_repo",
    "test_debug_flags",
    "test_debug_checks",
    "performance",
]
# Not training recipes (upstream keeps a similar avoid list).
AVOID = ("inference.yaml", "/results/", "/pretrained_models/")
RUN_OPTIONS = {f.name for f in dataclasses.fields(RunOptions)}


def csv_files():
    """The recipe CSV files."""
    return sorted(glob.glob(os.path.join(CSV_FOLDER, "*.csv")))


def rows():
    """Every recipe row of every CSV, as (csv name, row)."""
    out = []
    for path in csv_files():
        with open(path, newline="") as fin:
            for row in csv.DictReader(fin, skipinitialspace=True):
                out.append((os.path.basename(path), row))
    return out


ROWS = rows()
ROW_IDS = [f"{name}:{row['Hparam_file']}" for name, row in ROWS]


def repo_path(path):
    """Absolute path of a repository-relative path."""
    return os.path.join(REPO, path.strip())


def test_csv_format():
    assert csv_files(), "no tests/recipes/*.csv"
    for path in csv_files():
        with open(path, newline="") as fin:
            assert next(csv.reader(fin)) == COLUMNS, path


def is_method_file(path):
    """Whether a YAML file is a method or bridge file (a top-level ``petl`` or
    ``bridge`` key built with ``!name:``, e.g. the real-weights bridge shapes
    in ``hparams/bridges_tiny/``) rather than a recipe's hyper-parameter file:
    such a file is given to a recipe with ``--petl_method`` / ``--bridge``, not
    run on its own, so it has no row of its own in the recipe CSV."""
    with open(path, encoding="utf-8") as fin:
        return any(line.startswith(("petl: !name:", "bridge: !name:")) for line in fin)


def test_every_recipe_is_listed():
    """Each recipe dataset folder has a CSV; each of its hparam files is listed."""
    datasets = sorted(os.listdir(os.path.join(REPO, "recipes")))
    listed = {os.path.splitext(os.path.basename(p))[0] for p in csv_files()}
    assert set(datasets) <= listed, set(datasets) - listed
    for path in csv_files():
        dataset = os.path.splitext(os.path.basename(path))[0]
        yamls = {
            os.path.relpath(p, REPO)
            for p in glob.glob(
                os.path.join(REPO, "recipes", dataset, "**", "*.yaml"), recursive=True
            )
            if not any(a in p for a in AVOID) and not is_method_file(p)
        }
        in_csv = {
            row["Hparam_file"].strip()
            for name, row in ROWS
            if name == os.path.basename(path)
        }
        assert yamls - in_csv == set(), f"{path} lacks {sorted(yamls - in_csv)}"
        assert all(
            row["Dataset"] == dataset
            for name, row in ROWS
            if name == os.path.basename(path)
        )


@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_listed_files_exist(name, row):
    for field in ("Script_file", "Hparam_file", "Data_prep_file", "Readme_file"):
        for path in filter(None, row[field].split(" ")):
            assert os.path.exists(repo_path(path)), f"{name}: {field} {path}"
    for field in ("Script_file", "Hparam_file", "Readme_file"):  # mandatory
        assert row[field].strip(), f"{name}: empty {field}"


@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_readme_has_the_result_links(name, row):
    with open(repo_path(row["Readme_file"])) as fin:
        readme = fin.read()
    for field in ("Result_url", "HF_repo"):
        for link in filter(None, row[field].strip().split(" ")):
            assert link in readme, f"{row['Readme_file']} lacks {link}"


@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_every_yaml_key_is_used_by_the_script(name, row):
    assert (
        unused_keys(repo_path(row["Hparam_file"]), repo_path(row["Script_file"])) == []
    )


@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_debug_flags_name_existing_keys(name, row):
    flags = shlex.split(row["test_debug_flags"])  # as the shell splits them
    assert flags, f"{name}: test_debug_flags missing"
    keys = set(yaml_top_level_keys(repo_path(row["Hparam_file"])))
    for flag in flags:
        key = flag[2:].split("=")[0]
        assert key in keys or key in RUN_OPTIONS, f"{name}: unknown flag {flag}"
    assert row["test_debug_checks"].startswith("file_exists=[")


# ---------------------------------------------------------------- inference


def test_every_recipe_writes_its_inference_yaml_and_shows_its_use():
    recipes = {
        os.path.dirname(os.path.dirname(repo_path(row["Hparam_file"])))
        for _, row in ROWS
    }
    for folder in recipes:
        with open(os.path.join(folder, "README.md")) as fin:
            readme = fin.read()
        assert "from_hparams(" in readme and "inference.yaml" in readme, folder
        assert "classify_file(" in readme or "transcribe_file(" in readme, folder
        with open(os.path.join(folder, "train.py")) as fin:
            # called once per node: run_once_per_node(export_inference_hparams, ...)
            called = r"run_once_per_node\(\s*export_inference_hparams,"
            assert re.search(called, fin.read()), folder


# ---------------------------------------------------------------- docstrings


def docstring_problems(folder):
    """SpeechBrain's docstring rule: every file (other than ``__*__.py``)
    starts with a docstring; every public ``def``/``class`` (nested ones
    included) is followed by one."""
    problems = []
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.py"), recursive=True)):
        rel = os.path.relpath(path, REPO)
        with open(path) as fin:
            tree = ast.parse(fin.read())
        if "__" not in os.path.basename(path) and ast.get_docstring(tree) is None:
            problems.append(f"{rel}: no module docstring")
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                public = isinstance(node, ast.ClassDef) or not node.name.startswith("_")
                if public and ast.get_docstring(node) is None:
                    problems.append(
                        f"{rel}:{node.lineno}: {node.name} has no docstring"
                    )
    return problems


def test_docstring_rule_detects_problems(tmp_path):
    (tmp_path / "m.py").write_text("def f():\n    return 1\n\n\ndef _g():\n    pass\n")
    problems = docstring_problems(str(tmp_path))
    assert len(problems) == 2
    assert "no module docstring" in problems[0] and "f has no docstring" in problems[1]


def test_speechbrain_moe_docstrings():
    problems = docstring_problems(os.path.join(REPO, "speechbrain_moe"))
    assert problems == [], "\n".join(problems)


# ---------------------------------------------------------------- safe loading


def torch_load_calls(path):
    """(line, has weights_only=True) of every ``torch.load(...)`` call."""
    with open(path) as fin:
        tree = ast.parse(fin.read())
    calls = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "load"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "torch"
        ):
            safe = any(
                k.arg == "weights_only"
                and isinstance(k.value, ast.Constant)
                and k.value.value is True
                for k in node.keywords
            )
            calls.append((node.lineno, safe))
    return calls


def test_every_torch_load_uses_weights_only():
    files = glob.glob(
        os.path.join(REPO, "speechbrain_moe", "**", "*.py"), recursive=True
    )
    files += glob.glob(os.path.join(REPO, "recipes", "**", "*.py"), recursive=True)
    unsafe, total = [], 0
    for path in files:
        with open(path) as fin:
            text = fin.read()
        # no pickle-based loading at all
        assert not re.search(r"\bpickle\.loads?\(|\bdill\.", text), path
        for line, safe in torch_load_calls(path):
            total += 1
            if not safe:
                unsafe.append(f"{os.path.relpath(path, REPO)}:{line}")
    assert total >= 1  # one loader reads every checkpoint file
    assert unsafe == []


def test_torch_defaults_to_weights_only():
    """SpeechBrain's own default hooks (optimizer, plain modules) call
    ``torch.load`` without the argument: torch >= 2.6 makes it True."""
    major, minor = (int(x) for x in torch.__version__.split(".")[:2])
    assert (major, minor) >= (2, 6)


class _Evil:
    """Pickles to a call that would write a file when unpickled."""

    def __init__(self, target):
        self.target = target

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_checkpoint_cannot_execute_code(tmp_path, tiny_ast_folder):
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.recoverables import RandomState

    target = tmp_path / "pwned"
    path = tmp_path / "evil.ckpt"
    torch.save({"x": _Evil(str(target))}, path)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        AST(tiny_ast_folder, max_frames=100).load_trainable(path)
    with pytest.raises(Exception, match="Weights only load failed|weights_only"):
        RandomState().recover(path, end_of_epoch=True)
    assert not target.exists()


@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_extra_requirements_cover_the_options(name, row):
    """Upstream installs every recipe's ``extra_requirements.txt`` (lines
    without ``#``); a recipe offering ``use_tensorboard`` lists tensorboard."""
    from packaging.requirements import Requirement

    folder = os.path.dirname(os.path.dirname(repo_path(row["Hparam_file"])))
    path = os.path.join(folder, "extra_requirements.txt")
    assert os.path.isfile(path), f"{name}: no {path}"
    with open(path) as fin:
        lines = [line.strip() for line in fin if line.strip() and "#" not in line]
    names = {Requirement(line).name for line in lines}
    if "use_tensorboard" in yaml_top_level_keys(repo_path(row["Hparam_file"])):
        assert "tensorboard" in names, f"{path} lacks tensorboard"


# ---------------------------------------------------------------- READMEs

RECIPE_READMES = sorted({repo_path(row["Readme_file"]) for _, row in ROWS})
SYNTHETIC = {"ESC50": "esc50", "UrbanSound8k": "us8k"}
SYNTHETIC.update({"Google-speech-commands": "gsc", "fluent-speech-commands": "fsc"})


@pytest.mark.parametrize("readme", RECIPE_READMES, ids=os.path.basename)
def test_readme_links_exist_and_no_placeholder_results(readme):
    with open(readme) as fin:
        text = fin.read()
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        if not link.startswith(("http://", "https://")):
            target = os.path.join(os.path.dirname(readme), link)
            assert os.path.exists(target), f"{readme}: dead link {link}"
    assert "to be filled" not in text
    assert not re.search(r"^\|.*\| - \|.*$", text, re.M), "a results row without data"


@pytest.mark.parametrize("recipe", sorted(SYNTHETIC))
def test_readme_offline_command_fits_the_synthetic_data(recipe):
    """The offline command uses the synthetic data's class count and a data
    folder of its own."""
    import inspect

    from synthetic import GENERATORS, generate  # noqa: F401

    kind = SYNTHETIC[recipe]
    module, name = GENERATORS[kind].split(":")
    maker = getattr(__import__(module, fromlist=[name]), name)
    classes = inspect.signature(maker).parameters["num_classes"].default
    with open(os.path.join(REPO, "recipes", recipe, "PETL", "README.md")) as fin:
        text = fin.read()
    match = re.search(rf"synthetic {kind} (\S+)\n", text)
    assert match, f"{recipe}: no offline command generating {kind}"
    folder = match.group(1)
    assert folder.rstrip("/").endswith(kind)
    assert f"--data_folder={folder} " in text
    assert f"--n_classes={classes} " in text
