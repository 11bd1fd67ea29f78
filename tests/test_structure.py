"""The package's shape: no override of a private SpeechBrain method; the
tools parse. (The line budget was retired: see ``tools/loc.py``.)"""

import ast
import glob
import importlib
import inspect
import os
import pkgutil
import runpy
import sys

import pytest
from conftest import REPO


def our_classes():
    """Every class defined in the package and in the recipes' scripts."""
    import speechbrain_moe

    modules = [speechbrain_moe]
    for info in pkgutil.walk_packages(speechbrain_moe.__path__, "speechbrain_moe."):
        if not info.name.endswith("__main__"):
            modules.append(importlib.import_module(info.name))
    found = {}
    for module in modules:
        for _, cls in inspect.getmembers(module, inspect.isclass):
            if cls.__module__ == module.__name__:
                found[f"{cls.__module__}.{cls.__qualname__}"] = cls
    for script in glob.glob(os.path.join(REPO, "recipes", "*", "*", "train.py")):
        sys.path.insert(0, os.path.dirname(script))
        try:
            namespace = runpy.run_path(script, run_name="recipe_module")
        finally:
            sys.path.pop(0)
        for name, value in namespace.items():
            if inspect.isclass(value) and value.__module__ == "recipe_module":
                found[f"{os.path.relpath(script, REPO)}:{name}"] = value
    return found


def speechbrain_private_names(cls):
    """Private (single underscore) attributes of the SpeechBrain classes that
    ``cls`` derives from."""
    names = set()
    for base in cls.__mro__:
        if base.__module__.split(".")[0] == "speechbrain":
            names |= {
                n for n in vars(base) if n.startswith("_") and not n.startswith("__")
            }
    return names


def test_no_class_redefines_a_private_speechbrain_method():
    classes = our_classes()
    assert any("PETLClassifierBrain" in name for name in classes)
    assert any(name.endswith(":BridgeBrain") for name in classes)
    offences = []
    for name, cls in classes.items():
        private = speechbrain_private_names(cls)
        for own in cls.__mro__:
            if own.__module__.split(".")[0] == "speechbrain":
                continue
            offences += [
                f"{name} ({own.__name__}).{n}" for n in vars(own) if n in private
            ]
    assert offences == [], offences


def test_the_rule_catches_an_override():
    import speechbrain as sb

    class Sneaky(sb.Brain):
        def _save_intra_epoch_ckpt(self):
            pass

    assert "_save_intra_epoch_ckpt" in speechbrain_private_names(Sneaky)
    assert "_save_intra_epoch_ckpt" in vars(Sneaky)


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO, "tools", "*.py"))))
def test_tools_parse(path):
    with open(path) as fin:
        ast.parse(fin.read())


def dependency(name):
    """The requirement on ``name`` in pyproject.toml's dependencies."""
    tomllib = pytest.importorskip("tomllib")
    from packaging.requirements import Requirement

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as fin:
        project = tomllib.load(fin)["project"]
    (requirement,) = [
        r for r in map(Requirement, project["dependencies"]) if r.name == name
    ]
    return requirement.specifier


def test_dependency_bounds():
    """speechbrain 1.1.1's wheel installs top-level ``recipes/`` and ``tools/``
    packages (our folders' names) into site-packages: refused. transformers
    gets the upper bound our HF-parity tests were run under (the lobes
    re-implement parts of its forwards)."""
    import speechbrain
    import transformers

    speechbrain_spec = dependency("speechbrain")
    assert "1.1.1" not in speechbrain_spec and "1.1.2" in speechbrain_spec
    transformers_spec = dependency("transformers")
    assert "6.0.0" not in transformers_spec
    assert speechbrain.__version__ in speechbrain_spec
    assert transformers.__version__ in transformers_spec
