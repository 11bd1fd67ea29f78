"""The HyperPyYAML files of PETL methods and LLM bridges, shipped in the package
(``hparams/petl/``, ``hparams/bridges/``) or a user's own: their top-level plain
keys are settings, one more key builds what they describe."""

import io
import os
from importlib import resources

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

KINDS = {"petl": "PETL method", "bridges": "bridge"}


def packaged_names(kind):
    """Names of the files of ``kind`` (``petl`` or ``bridges``) shipped with
    the package."""
    folder = resources.files("speechbrain_moe") / "hparams" / kind
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def _read_text(kind, name):
    """The text of a packaged file (by name) or of a user's file (by path)."""
    if not isinstance(name, str) or not name:
        raise ValueError(
            f"A {KINDS[kind]} is named by a string (a packaged name or the path "
            f"of a YAML file), got {name!r}."
        )
    names = packaged_names(kind)
    if name.endswith((".yaml", ".yml")) or os.sep in name:
        if not os.path.isfile(name):
            raise FileNotFoundError(
                f"The {KINDS[kind]} file {name} does not exist. Give the path of your "
                f"YAML file, or one of the packaged names: {', '.join(names)}."
            )
        with open(name, encoding="utf-8") as fin:
            return fin.read()
    if name not in names:
        raise ValueError(
            f"Unknown {KINDS[kind]} {name!r}. Valid names: {', '.join(names)}; or "
            "give the path of your own YAML file."
        )
    path = resources.files("speechbrain_moe") / "hparams" / kind / f"{name}.yaml"
    return path.read_text(encoding="utf-8")


def _settings_of(text):
    """The top-level plain keys of a YAML text, as written (``!ref`` unresolved)."""
    tree = ruamel.yaml.YAML().load(text) or {}
    settings = {}
    for key, value in tree.items():
        tag = getattr(getattr(value, "tag", None), "value", None) or ""
        builds = tag.startswith(("!new:", "!name:", "!apply:", "!module:"))
        if not builds and not key.startswith("__"):
            settings[key] = getattr(value, "value", value)
    return settings


def load_hparams(kind, name, overrides=None):
    """Loads a method or bridge file with ``overrides``.

    Arguments
    ---------
    kind : str
        ``petl`` or ``bridges``.
    name : str
        A packaged name (``soft_moa``) or the path of a YAML file.
    overrides : dict, optional
        New values of some settings, e.g. ``{"num_experts": 8}``.

    Returns
    -------
    hparams, settings : dict
        The loaded file (objects built) and its settings' resolved values.

    Example
    -------
    >>> hparams, settings = load_hparams("petl", "dense_moa", {"num_experts": 4})
    >>> sorted(settings), settings["num_experts"], callable(hparams["petl"])
    (['bottleneck', 'mode', 'num_experts', 'placement', 'train_norms'], 4, True)
    """
    text = _read_text(kind, name)
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ValueError(
            f"The overrides of {KINDS[kind]} {name!r} must be a mapping of settings to "
            f'values, e.g. --petl_overrides="{{num_experts: 8}}", got {overrides!r}.'
        )
    valid = _settings_of(text)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"{KINDS[kind]} {name!r} has no setting(s) {unknown}. Valid settings: "
            f"{', '.join(valid) or 'none'}."
        )
    hparams = load_hyperpyyaml(io.StringIO(text), dict(overrides))
    return hparams, {key: hparams[key] for key in valid}
