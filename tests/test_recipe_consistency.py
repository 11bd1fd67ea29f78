"""SpeechBrain's recipe-consistency rules, applied to every recipe.

* every top-level YAML key is used by the recipe's ``train.py``
  (``hparams["k"]``, ``hparams['k']``, ``hparams.k``, ``modules.k``,
  ``hparams.get("k"``) or ``!ref``-ed by another key of the same file; run
  options and ``!apply`` lines (``__set_seed``) are exempt (the rule of
  ``check_yaml_vs_script`` in SpeechBrain's ``tests/utils``);
* every recipe folder has ``README.md``, ``train.py``, ``hparams/`` and a
  data-preparation script.
"""

import dataclasses
import glob
import os
import re

import pytest
from conftest import REPO
from speechbrain.utils.run_opts import RunOptions

CLASSIFICATION = [
    "ESC50",
    "UrbanSound8k",
    "Google-speech-commands",
    "fluent-speech-commands",
]
RUN_OPTIONS = {f.name for f in dataclasses.fields(RunOptions)}
# Training YAMLs (inference.yaml files are checked in test_upstream_checks.py).
YAMLS = sorted(
    p
    for p in glob.glob(os.path.join(REPO, "recipes", "*", "PETL", "hparams", "*.yaml"))
    if os.path.basename(p) != "inference.yaml"
)


def yaml_top_level_keys(path):
    """Top-level keys of a HyperPyYAML file (``__``-prefixed ones excluded)."""
    keys = []
    with open(path) as fin:
        for line in fin:
            match = re.match(r"^([A-Za-z_][\w.]*)\s*:", line)
            if match and not match.group(1).startswith("__"):
                keys.append(match.group(1))
    return keys


def referenced_in_yaml(key, text):
    """Whether ``<key>`` (or ``<key.attr>`` / ``<key[...]>``) is referenced."""
    return re.search(rf"<{re.escape(key)}(?:[.\[][^>]*)?>", text) is not None


def used_in_script(key, script):
    """Whether ``train.py`` reads ``key`` in one of the accepted forms."""
    k = re.escape(key)
    patterns = [
        rf"hparams\[[\"']{k}[\"']\]",
        rf"hparams\.{k}\b",
        rf"modules\.{k}\b",
        rf"hparams\.get\([\"']{k}[\"']",
    ]
    return any(re.search(p, script) for p in patterns)


def unused_keys(yaml_path, script_path):
    """Top-level keys neither used by the script nor referenced in the YAML."""
    with open(yaml_path) as fin:
        text = fin.read()
    with open(script_path) as fin:
        script = fin.read()
    return [
        key
        for key in yaml_top_level_keys(yaml_path)
        if key not in RUN_OPTIONS
        and not referenced_in_yaml(key, text)
        and not used_in_script(key, script)
    ]


def test_rule_detects_unused_key(tmp_path):
    yaml = tmp_path / "h.yaml"
    yaml.write_text("a: 1\nb: !ref <a>\nc: 2\nd: 3\ndebug: False\n")
    script = tmp_path / "train.py"
    script.write_text('x = hparams["b"]\ny = self.hparams.d\n')
    assert unused_keys(yaml, script) == ["c"]


@pytest.mark.parametrize("yaml_path", YAMLS, ids=lambda p: os.path.relpath(p, REPO))
def test_every_yaml_key_is_used(yaml_path):
    script = os.path.join(os.path.dirname(os.path.dirname(yaml_path)), "train.py")
    assert os.path.isfile(script)
    assert unused_keys(yaml_path, script) == []


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_recipe_folder_is_complete(recipe):
    folder = os.path.join(REPO, "recipes", recipe, "PETL")
    for name in (
        "README.md",
        "train.py",
        "hparams/ast.yaml",
        "hparams/whisper.yaml",
        "hparams/wavlm.yaml",
    ):
        assert os.path.isfile(os.path.join(folder, name)), name
    prepare = [
        f for f in os.listdir(folder) if "prepare" in f.lower() and f.endswith(".py")
    ]
    assert prepare, f"{recipe} has no data-preparation script"


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_recipe_yaml_conventions(recipe):
    for path in glob.glob(
        os.path.join(REPO, "recipes", recipe, "PETL", "hparams", "*.yaml")
    ):
        if os.path.basename(path) == "inference.yaml":
            continue
        text = open(path).read()
        for needed in (
            "seed:",
            "__set_seed:",
            "data_folder: !PLACEHOLDER",
            "output_folder:",
            "save_folder:",
            "petl_method:",
            "backbone_source:",
            "checkpoints.Checkpointer",
            "speechbrain.utils.epoch_loop.EpochCounter",
            "speechbrain.utils.train_logger.FileTrainLogger",
        ):
            assert needed in text, f"{path}: missing {needed}"
        assert not re.search(r":\s+(true|false)\s*$", text, re.M), (
            f"{path}: use True/False"
        )


@pytest.mark.parametrize("recipe", CLASSIFICATION)
def test_train_script_conventions(recipe):
    script = open(os.path.join(REPO, "recipes", recipe, "PETL", "train.py")).read()
    assert script.lstrip().startswith(("#!", '"""'))
    for needed in (
        "sb.parse_arguments",
        "ddp_init_group",
        "run_once_per_node(",  # preparation: once on every node (own disks)
        "create_experiment_directory",
        "def dataio_prep(hparams)",
    ):
        assert needed in script, f"{recipe}/train.py lacks {needed}"


def test_method_settings_are_shared():
    """Each method's settings live once, in hparams/petl, not in a recipe."""
    from speechbrain_moe.petl import available_methods

    for method in available_methods():
        path = os.path.join(
            REPO, "speechbrain_moe", "hparams", "petl", f"{method}.yaml"
        )
        assert os.path.isfile(path)
    for path in YAMLS:
        lines = [line.split("#")[0] for line in open(path)]
        text = "".join(lines)
        assert "num_experts" not in text and "bottleneck" not in text, path
