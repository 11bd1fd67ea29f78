"""The HyperPyYAML files of PETL methods and LLM bridges, shipped in the package
(``hparams/petl/``, ``hparams/bridges/``) or a user's own: their top-level plain
keys are settings, one more key builds what they describe."""

import io
import os
from importlib import resources

import ruamel.yaml
from hyperpyyaml import load_hyperpyyaml

from speechbrain_moe.settings import check_settings

KINDS = {"petl": "PETL method", "bridges": "bridge"}
#: The key of a file of each kind that builds what it describes.
BUILD_KEYS = {"petl": "petl", "bridges": "bridge"}
#: The recipe option that overrides the settings of a file of each kind.
OVERRIDE_FLAGS = {"petl": "--petl_overrides", "bridges": "--bridge_overrides"}
EXAMPLES = {"petl": "adapter", "bridges": "dense"}


def packaged_names(kind):
    """Names of the files of ``kind`` (``petl`` or ``bridges``) shipped with
    the package.

    Arguments
    ---------
    kind : str
        ``petl`` or ``bridges``.

    Returns
    -------
    list of str

    Example
    -------
    >>> packaged_names("bridges")
    ['dense', 'moe_adapter', 'soft_moa']
    """
    folder = resources.files("speechbrain_moe") / "hparams" / kind
    return sorted(
        entry.name[: -len(".yaml")]
        for entry in folder.iterdir()
        if entry.name.endswith(".yaml")
    )


def _packaged_path(kind, name):
    """The packaged file of ``name``."""
    return resources.files("speechbrain_moe") / "hparams" / kind / f"{name}.yaml"


def _read_text(kind, name):
    """``(text, path)`` of a packaged file (by name) or of a user's file (by path)."""
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
            return fin.read(), name
    if name not in names:
        raise ValueError(
            f"Unknown {KINDS[kind]} {name!r}. Valid names: {', '.join(names)}; or "
            "give the path of your own YAML file."
        )
    path = _packaged_path(kind, name)
    return path.read_text(encoding="utf-8"), str(path)


def _parse(kind, text, path):
    """The YAML tree of a file; a syntax error names the file, line and fix."""
    try:
        return ruamel.yaml.YAML().load(text) or {}
    except ruamel.yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ValueError(
            f"The {KINDS[kind]} file {path} is not valid YAML{line}: {problem}. Fix "
            "its syntax (one 'key: value' per line, nested keys indented by the "
            "same number of spaces, quotes around values holding ': ' or '#'); "
            f"compare with the packaged {_packaged_path(kind, EXAMPLES[kind])}."
        ) from err


def _with_file(err, where):
    """``err`` (same type, if it takes a message) prefixed with the file."""
    message = (
        f"The {where} does not load: {err}. Fix that line of the file: a "
        "'!ref <name>' names one of its keys, a '!name:'/'!new:' tag an "
        "importable callable, with that callable's own argument names."
    )
    try:
        return type(err)(message)
    except TypeError:  # an exception type with another signature
        return ValueError(message)


def _settings_of(tree):
    """The top-level plain keys of a parsed YAML file, as written (``!ref``
    unresolved)."""
    settings = {}
    for key, value in tree.items():
        tag = getattr(getattr(value, "tag", None), "value", None) or ""
        builds = tag.startswith(("!new:", "!name:", "!apply:", "!module:"))
        if not builds and not key.startswith("__"):
            settings[key] = getattr(value, "value", value)
    return settings


def load_hparams(kind, name, overrides=None):
    """Loads a method or bridge file with ``overrides``; its settings known to
    :data:`speechbrain_moe.settings.SETTINGS` are checked before anything is
    built (a ``ValueError`` names the setting, the file, the value, what is
    accepted and the override to use), as are the file's syntax and its
    build key (``petl`` or ``bridge``).

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
    (['bottleneck', 'implementation', 'mode', 'num_experts', 'placement', 'train_norms'], 4, True)
    >>> load_hparams("bridges", "moe_adapter", {"top_k": 0})
    Traceback (most recent call last):
    ...
    ValueError: bridge file ...moe_adapter.yaml: top_k (experts each token is routed to) must be an integer >= 1, got 0 (int). Set top_k in that file, or pass --bridge_overrides="{top_k: 4}".
    """
    text, path = _read_text(kind, name)
    where = f"{KINDS[kind]} file {path}"
    flag = OVERRIDE_FLAGS[kind]
    overrides = {} if overrides is None else overrides
    if not isinstance(overrides, dict):
        raise ValueError(
            f"The overrides of {KINDS[kind]} {name!r} must be a mapping of settings to "
            f'values, e.g. {flag}="{{num_experts: 8}}", got {overrides!r}.'
        )
    tree = _parse(kind, text, path)
    if not hasattr(tree, "items"):
        raise ValueError(
            f"The {where} must be a YAML mapping of settings (and a "
            f"{BUILD_KEYS[kind]!r} key), got a {type(tree).__name__}. Compare with "
            f"the packaged {_packaged_path(kind, EXAMPLES[kind])}."
        )
    valid = _settings_of(tree)
    unknown = sorted(set(overrides) - set(valid))
    if unknown:
        raise ValueError(
            f"{KINDS[kind]} {name!r} has no setting(s) {unknown}. Valid settings: "
            f"{', '.join(valid) or 'none'}."
        )
    build = BUILD_KEYS[kind]
    if build not in tree:
        raise ValueError(
            f"The {where} has no {build!r} key, which builds what the file "
            f"describes. Add one, e.g. '{build}: !name:...' as in the packaged "
            f"{_packaged_path(kind, EXAMPLES[kind])} (see docs/design.md)."
        )
    try:
        hparams = load_hyperpyyaml(io.StringIO(text), dict(overrides))
    except (ValueError, ImportError, TypeError, AttributeError) as err:
        raise _with_file(err, where) from err
    if not callable(hparams[build]):
        raise ValueError(
            f"The {build!r} key of the {where} must build a callable (a "
            f"'!name:' tag), got {hparams[build]!r}. Write it as in the packaged "
            f"{_packaged_path(kind, EXAMPLES[kind])}."
        )
    settings = {key: hparams[key] for key in valid}
    check_settings(
        settings,
        where,
        lambda setting, example: f'{flag}="{{{setting}: {example}}}"',
        nullable={key for key, value in valid.items() if value is None},
        examples=valid,  # the file's own values, where they are valid
    )
    return hparams, settings
