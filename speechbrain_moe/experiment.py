"""A run folder is one experiment: its identity, recorded and checked.

A recipe's ``output_folder`` holds one experiment. When a run starts,
:class:`Experiment` computes the *identity* of what the command line asks
for, from the recipe YAML and its overrides, without building anything:

* every top-level key of the YAML as written, after the command-line
  overrides (``!ref`` left unresolved, so ``valid_dataloader_opts`` does not
  change when ``test_batch_size`` does): the method (``petl_method``,
  ``petl_overrides``), the bridge (``bridge``, ``bridge_overrides``,
  ``llm_source``, ``llm_lora_layers``, ...), ``backbone_source``,
  ``data_folder`` and the preparation options (``fold``, ``valid_fold``,
  ``select_n_sentences``, splits, ...), ``seed``, the learning rate, batch
  size, the model definitions (``!new:`` nodes), ...; existing relative paths
  are made absolute;
* ``<key>_sha256`` and ``<key>_settings`` of ``petl_method`` and ``bridge``:
  the SHA-256 of the content of the method's (or bridge's) YAML file,
  packaged or a user's own (its parsed tree: comments and layout do not
  count), and its settings as resolved with the overrides;
* ``<key>_config_sha256`` of every ``*_source`` key: the SHA-256 of the
  ``config.json`` of a local model folder (None for a hub id, whose name is
  already part of the identity);
* ``petl_init_from_sha256``: the SHA-256 of the weights an upcycled run
  starts from (:func:`speechbrain_moe.upcycling.source_sha256`), beside the
  source folder ``petl_init_from`` itself: another source, or the same
  folder trained further, is another experiment;
* the run options that change training: ``precision``,
  ``grad_accumulation_factor``, ``max_grad_norm``, ``optimizer_step_limit``,
  ``remove_vector_weight_decay`` (from the command line, else the YAML, else
  SpeechBrain's default);
* ``labels``: the classes of the training data, in the order of the head's
  outputs (classification recipes; added by :meth:`Experiment.record`, after
  the data preparation).

Not part of the identity (:data:`NOT_IDENTITY`), so that changing them
resumes: ``number_of_epochs`` (to extend a training), ``num_workers``,
``test_batch_size``, ``use_tensorboard`` and ``tensorboard_logs_folder``,
``skip_prep``, ``output_folder`` itself, ``overwrite_experiment``,
``n_classes`` (only a check: the head's size is the number of ``labels``),
the decoding options of the LLM bridge (``valid_decode``,
``max_new_tokens``, ``num_beams``: they change what is measured, not what is
trained), and every other SpeechBrain run option (``--device``, ``--debug``,
``--noprogressbar``, ``--ckpt_interval_*``, ``--test_only``, ...).

The flow of a recipe's ``train.py``::

    experiment = Experiment(hparams_file, overrides, run_opts)  # reads only
    hparams = experiment.settings  # plain values, nothing built yet
    experiment.check_folder(overwrite=hparams["overwrite_experiment"])
    ...  # experiment directory, data preparation, model, inference.yaml
    experiment.record(labels)  # <output_folder>/experiment.json
    hparams["checkpointer"].add_recoverable("experiment", experiment)

:meth:`Experiment.check_folder` compares with ``<output_folder>/experiment.json``
before any file is written: the same identity resumes; another identity
raises :class:`ExperimentMismatch` naming every differing field (old -> new)
and the two ways on: another ``--output_folder``, or
``--overwrite_experiment=True``, which moves the old run (the whole output
folder, and the save folder if it lies elsewhere) to
``<output_folder>.old-<time>``: nothing of it can be resumed, nothing is
deleted (with a disk per node, every node moves its own copy). A folder holding checkpoints but no ``experiment.json`` (its record
deleted, or a run of an older version) is refused the same way: its
configuration cannot be checked. The labels are compared by
:meth:`Experiment.record`, once the data is prepared (a change there means
the data in ``data_folder`` itself changed).

Every checkpoint also holds the identity (``experiment.ckpt``, this class is
a recoverable); loading one written by another experiment (e.g. copied in
from another folder) refuses naming the fields. The trained tensors carry the
model's own description too (:class:`~speechbrain_moe.recoverables.TrainableState`).

Under DDP the main process reads, decides and writes; the decision is
broadcast, and every rank raises the same error at the same point, so no rank
is left waiting in a collective.

Authors
 * speechbrain-moe contributors 2026
"""

import dataclasses
import hashlib
import io
import json
import os
import shutil
import time
from importlib import resources

import ruamel.yaml
from hyperpyyaml import resolve_references
from hyperpyyaml.core import recursive_update
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    if_main_process,
)
from speechbrain.utils.logger import get_logger
from speechbrain.utils.run_opts import RunOptions

from speechbrain_moe.hparams_files import load_hparams, packaged_names

logger = get_logger(__name__)

IDENTITY_FILE = "experiment.json"
FORMAT = 1
NOT_IDENTITY = frozenset(
    {
        "number_of_epochs",
        "num_workers",
        "test_batch_size",
        "use_tensorboard",
        "tensorboard_logs_folder",
        "skip_prep",
        "output_folder",
        "overwrite_experiment",
        "n_classes",
        "valid_decode",
        "max_new_tokens",
        "num_beams",
    }
)
RUN_OPTIONS = {field.name: field.default for field in dataclasses.fields(RunOptions)}
TRAINING_RUN_OPTIONS = (
    "precision",
    "grad_accumulation_factor",
    "max_grad_norm",
    "optimizer_step_limit",
    "remove_vector_weight_decay",
)
# key -> (kind of hparams file, key of its overrides)
METHOD_KEYS = {
    "petl_method": ("petl", "petl_overrides"),
    "bridge": ("bridges", "bridge_overrides"),
}
RESTART_HINT = (
    "To keep both runs, give this one another --output_folder; to start over "
    "in this folder, add --overwrite_experiment=True (the old run is moved to "
    "{folder}.old-<time>, not deleted)."
)


class ExperimentMismatch(RuntimeError):
    """A run that would mix two experiments in one output folder.

    Its message names what differs and how to proceed (:data:`RESTART_HINT`:
    another ``--output_folder``, or ``--overwrite_experiment=True``).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "experiment.json")
    >>> _ = open(path, "w").write("{")  # a damaged record
    >>> try:
    ...     _read_record(path)
    ... except ExperimentMismatch as err:
    ...     print("--overwrite_experiment=True" in str(err))
    True
    """


def _plain(node):
    """A ruamel node as plain JSON values; a tagged node as ``{tag: value}``.

    >>> tree = ruamel.yaml.YAML().load("a: !new:torch.nn.Linear [2, 3]\\nb: 0.5\\n")
    >>> _plain(tree)
    {'a': {'!new:torch.nn.Linear': [2, 3]}, 'b': 0.5}
    """
    tag = getattr(getattr(node, "tag", None), "value", None)
    if isinstance(node, dict):
        value = {str(k): _plain(v) for k, v in node.items()}
    elif isinstance(node, (list, tuple)):
        value = [_plain(v) for v in node]
    elif isinstance(node, ruamel.yaml.comments.TaggedScalar):
        value = node.value
    elif node is None or isinstance(node, bool):
        value = node
    elif isinstance(node, int):
        value = int(node)
    elif isinstance(node, float):
        value = float(node)
    else:
        value = str(node)
    return {tag: value} if tag and tag.startswith("!") else value


def _load_overrides(overrides):
    """Overrides (a YAML string as ``sb.parse_arguments`` gives them, or a
    mapping) as a ruamel mapping (tags kept)."""
    if isinstance(overrides, str):
        tree = ruamel.yaml.YAML().load(overrides) if overrides.strip() else None
    else:
        tree = overrides
    return ruamel.yaml.comments.CommentedMap(tree or {})


def merge_overrides(overrides, values):
    """The overrides with some keys set to ``values``, as a YAML string.

    Arguments
    ---------
    overrides : str or dict
        Command-line overrides, as ``sb.parse_arguments`` returns them.
    values : dict
        Keys to set (replacing the command line's).

    Returns
    -------
    str
        Overrides for ``load_hyperpyyaml`` (tags of the original kept).

    Example
    -------
    >>> print(merge_overrides("lr: 0.1\\nhead: !new:torch.nn.Linear [2, 3]\\n",
    ...                       {"n_classes": 3}), end="")
    lr: 0.1
    head: !new:torch.nn.Linear [2, 3]
    n_classes: 3
    """
    tree = _load_overrides(overrides)
    for key, value in values.items():
        tree[key] = value
    buffer = io.StringIO()
    ruamel.yaml.YAML().dump(tree, buffer)
    return buffer.getvalue()


def resolved_settings(hparams_file, overrides):
    """The top-level values of a recipe YAML with overrides and ``!ref``
    resolved, as plain values (nothing is built; a node that builds an
    object stays ``{tag: value}``).

    Arguments
    ---------
    hparams_file : str
        The recipe YAML.
    overrides : str or dict
        Its overrides.

    Returns
    -------
    dict
        Key -> value.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write("out: !PLACEHOLDER\\nsave: !ref <out>/save\\n")
    >>> resolved_settings(path, "out: /tmp/run")["save"]
    '/tmp/run/save'
    """
    with open(hparams_file, encoding="utf-8") as fin:
        text = resolve_references(fin, _load_overrides(overrides)).getvalue()
    return _plain(ruamel.yaml.YAML().load(text) or {})


def _unresolved_tree(hparams_file, overrides):
    """The YAML's top-level nodes with the overrides applied, ``!ref`` as written."""
    with open(hparams_file, encoding="utf-8") as fin:
        tree = ruamel.yaml.YAML().load(fin) or {}
    overrides = _load_overrides(overrides)
    if overrides:
        recursive_update(tree, overrides)
    return _plain(tree)


def _content_sha256(text):
    """Hex SHA-256 of a YAML text's content: its parsed tree (tags kept), so
    that comments and layout do not count.

    >>> _content_sha256("a: 1  # one\\n") == _content_sha256("a:   1\\n")
    True
    """
    tree = _plain(ruamel.yaml.YAML().load(text) or {})
    canonical = json.dumps(tree, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _method_text(kind, name):
    """The text of a packaged method/bridge file (by name) or of a user's
    file (by path); None when neither exists (loading it reports that)."""
    if isinstance(name, str) and name in packaged_names(kind):
        path = resources.files("speechbrain_moe") / "hparams" / kind / f"{name}.yaml"
        return path.read_text(encoding="utf-8")
    if isinstance(name, str) and os.path.isfile(name):
        with open(name, encoding="utf-8") as fin:
            return fin.read()
    return None


def _config_sha256(source):
    """SHA-256 of ``<source>/config.json`` of a local model folder, else None."""
    path = os.path.join(str(source), "config.json")
    if not os.path.isfile(path):
        return None
    with open(path, "rb") as fin:
        return hashlib.sha256(fin.read()).hexdigest()


def _run_option(run_opts, tree, name):
    """A run option's effective value: command line, else YAML, else default."""
    if run_opts is not None:
        if isinstance(run_opts, dict):
            if name in run_opts:
                return run_opts[name]
        elif name in getattr(run_opts, "overridden_args", ()):
            return getattr(run_opts, name)
    return tree.get(name, RUN_OPTIONS.get(name))


def _json_values(value):
    """``value`` as JSON would give it back (tuples as lists, str keys)."""
    return json.loads(json.dumps(value, default=str))


#: Key endings of the recipes' path settings (``data_folder``,
#: ``backbone_source``, ``train_csv``, ...): a relative value of such a key is
#: made absolute when it exists.
PATH_KEY_ENDINGS = (
    "_folder",
    "_source",
    "_file",
    "_csv",
    "_path",
    "_dir",
    "_json",
    "_from",
)
#: Keys naming a run whose weights a run starts from (upcycling).
INIT_KEYS = ("petl_init_from",)


def _names_a_path(key, value):
    """Whether the relative ``value`` of ``key`` is a path to make absolute.

    A value counts as a path when its key is a path setting
    (:data:`PATH_KEY_ENDINGS`), it holds a path separator, or it names a YAML
    file (the rule of :mod:`speechbrain_moe.hparams_files`); any other string
    is a name, even when a file or folder of that name happens to exist in the
    working directory (``petl_method: soft_moa`` beside a ``soft_moa/``
    output folder stays the packaged method's name).

    Arguments
    ---------
    key : str
        The top-level YAML key.
    value : object
        Its value.

    Returns
    -------
    bool

    Example
    -------
    >>> _names_a_path("data_folder", "data"), _names_a_path("petl_method", "soft_moa")
    (True, False)
    >>> _names_a_path("petl_method", "methods/mine.yaml")
    True
    """
    if not isinstance(value, str) or not value or os.path.isabs(value):
        return False
    return (
        key.endswith(PATH_KEY_ENDINGS)
        or os.sep in value
        or value.endswith((".yaml", ".yml"))
    )


def experiment_identity(hparams_file, overrides, run_opts=None):
    """What defines the experiment a command line asks for (see the module
    docstring), and the resolved settings.

    Arguments
    ---------
    hparams_file : str
        The recipe YAML.
    overrides : str or dict
        Its overrides (as ``sb.parse_arguments`` returns them).
    run_opts : RunOptions or dict, optional
        The run options.

    Returns
    -------
    identity : dict
        Field -> plain value.
    settings : dict
        The YAML's top-level values, resolved (:func:`resolved_settings`).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "h.yaml")
    >>> _ = open(path, "w").write(
    ...     "seed: 1\\nnumber_of_epochs: 2\\npetl_method: adapter\\n"
    ...     "petl_overrides: {}\\noutput_folder: !ref out/<seed>\\n")
    >>> identity, settings = experiment_identity(path, "petl_overrides: {mode: sequential}")
    >>> identity["petl_method_settings"]["mode"], "number_of_epochs" in identity
    ('sequential', False)
    >>> settings["output_folder"]
    'out/1'
    """
    tree = _unresolved_tree(hparams_file, overrides)
    settings = resolved_settings(hparams_file, overrides)
    identity = {}
    for key, value in tree.items():
        if key in NOT_IDENTITY or key in RUN_OPTIONS:
            continue
        if _names_a_path(key, value) and os.path.exists(value):
            value = os.path.abspath(value)
        identity[key] = value
    for name in TRAINING_RUN_OPTIONS:
        identity[f"run option {name}"] = _run_option(run_opts, tree, name)
    for key, (kind, overrides_key) in METHOD_KEYS.items():
        if key not in settings:
            continue
        text = _method_text(kind, settings[key])
        identity[f"{key}_sha256"] = None if text is None else _content_sha256(text)
        _, method_settings = load_hparams(
            kind, settings[key], settings.get(overrides_key) or {}
        )
        identity[f"{key}_settings"] = method_settings
    for key, value in settings.items():
        if key.endswith("_source") and isinstance(value, str):
            identity[f"{key}_config_sha256"] = _config_sha256(value)
    for key in INIT_KEYS:
        if settings.get(key) is not None:
            from speechbrain_moe.upcycling import source_sha256

            identity[f"{key}_sha256"] = source_sha256(settings[key])
    return _json_values(identity), settings


def _short(value, limit=160):
    """A value as one line of JSON, cut to ``limit`` characters."""
    text = json.dumps(value, sort_keys=True, default=str)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def differences(old, new, skip=()):
    """The fields whose values differ, as ``field: old -> new`` lines.

    Arguments
    ---------
    old, new : dict
        Two identities.
    skip : sequence of str
        Fields not compared.

    Returns
    -------
    list of str
        One line per differing field, sorted (``(absent)`` for a field only
        one of them has).

    Example
    -------
    >>> differences({"fold": 1, "seed": 3}, {"fold": 3, "seed": 3})
    ['fold: 1 -> 3']
    """
    lines = []
    for key in sorted(set(old) | set(new)):
        if key in skip:
            continue
        if old.get(key, KeyError) != new.get(key, KeyError):
            before = _short(old[key]) if key in old else "(absent)"
            after = _short(new[key]) if key in new else "(absent)"
            lines.append(f"{key}: {before} -> {after}")
    return lines


def _has_checkpoints(save_folder):
    """Whether ``save_folder`` holds ``CKPT+...`` folders."""
    if not save_folder or not os.path.isdir(save_folder):
        return False
    return any(
        name.startswith(checkpoints.CKPT_PREFIX) for name in os.listdir(save_folder)
    )


def _read_record(path):
    """The ``identity`` recorded in an ``experiment.json`` (refuses a damaged one)."""
    try:
        with open(path, encoding="utf-8") as fin:
            return json.load(fin)["identity"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ExperimentMismatch(
            f"Cannot read {path} ({type(err).__name__}: {err}), the record of the "
            "experiment in its folder, so this run cannot be checked against it. "
            "Restore the file, or: " + RESTART_HINT.format(folder=os.path.dirname(path))
        ) from err


def _set_aside(folder):
    """Moves ``folder`` to ``<folder>.old-<time>[.n]``; returns the new path."""
    target = f"{folder.rstrip(os.sep)}.old-{time.strftime('%Y%m%d-%H%M%S')}"
    base, suffix = target, 0
    while os.path.exists(target):
        suffix += 1
        target = f"{base}.{suffix}"
    shutil.move(folder, target)
    return target


@checkpoints.register_checkpoint_hooks
class Experiment:
    """The identity of the experiment a command line asks for, checked
    against its output folder (see the module docstring).

    Arguments
    ---------
    hparams_file : str
        The recipe YAML.
    overrides : str or dict
        Its overrides (as ``sb.parse_arguments`` returns them).
    run_opts : RunOptions or dict, optional
        The run options (``--test_only`` runs record nothing).

    Example
    -------
    >>> import tempfile
    >>> out = tempfile.mkdtemp()
    >>> path = os.path.join(out, "h.yaml")
    >>> _ = open(path, "w").write("seed: 1\\noutput_folder: !PLACEHOLDER\\n"
    ...     "save_folder: !ref <output_folder>/save\\noverwrite_experiment: False\\n")
    >>> run = Experiment(path, f"output_folder: {out}/run")
    >>> run.check_folder()
    'new'
    >>> run.record(labels=["cat", "dog"])
    >>> Experiment(path, f"output_folder: {out}/run").check_folder()
    'resume'
    >>> Experiment(path, f"output_folder: {out}/run\\nseed: 2").check_folder()
    Traceback (most recent call last):
    ...
    speechbrain_moe.experiment.ExperimentMismatch: .../run holds another experiment ...
    """

    def __init__(self, hparams_file, overrides, run_opts=None):
        self.hparams_file = hparams_file
        self.identity, self.settings = experiment_identity(
            hparams_file, overrides, run_opts
        )
        self.test_only = bool(_run_option(run_opts, {}, "test_only"))
        self.folder = str(self.settings["output_folder"])
        self.save_folder = self.settings.get("save_folder")
        self.record_path = os.path.join(self.folder, IDENTITY_FILE)

    def _refusal(self, recorded):
        """The message refusing a run whose identity differs from ``recorded``."""
        lines = differences(recorded, self.identity, skip=("labels",))
        if not lines:
            return None
        listed = "\n  ".join(lines)
        return (
            f"{self.folder} holds another experiment ({IDENTITY_FILE}); this run "
            f"differs in {len(lines)} field(s) (recorded -> this run):\n  {listed}\n"
            f"Nothing in {self.folder} was changed. "
            + RESTART_HINT.format(folder=self.folder)
        )

    def compare_with_record(self):
        """The differences with the folder's record, before any change.

        Returns
        -------
        recorded : bool
            Whether the folder holds an ``experiment.json``.
        lines : list of str
            The differing fields (``field: old -> new``); the labels are
            not compared (they are known after the data preparation).
        """
        if not os.path.isfile(self.record_path):
            return False, []
        recorded = _read_record(self.record_path)
        return True, differences(recorded, self.identity, skip=("labels",))

    def _decide(self, overwrite):
        """Main process: ``(status, message)``; moves the old run aside when
        ``overwrite`` (status ``restart``)."""
        has_record = os.path.isfile(self.record_path)
        has_checkpoints = _has_checkpoints(self.save_folder)
        if overwrite and (has_record or has_checkpoints):
            moved = [_set_aside(self.folder)] if os.path.isdir(self.folder) else []
            if self.save_folder and os.path.isdir(self.save_folder):
                moved.append(_set_aside(self.save_folder))
            return "restart", f"Previous run moved to {', '.join(moved)}."
        if has_record:
            problem = self._refusal(_read_record(self.record_path))
            return ("refuse", problem) if problem else ("resume", None)
        if has_checkpoints:
            return "refuse", (
                f"{self.save_folder} holds checkpoints but {self.folder} has no "
                f"{IDENTITY_FILE} (the record of its experiment, deleted or from an "
                "older version): the configuration they were trained with cannot be "
                "checked. Nothing was changed. "
                + RESTART_HINT.format(folder=self.folder)
            )
        return "new", None

    def _on_main(self, decide):
        """Runs ``decide`` on the main process; broadcasts ``(status, message)``
        (an error there is broadcast too); every rank raises a refusal."""
        outcome = None
        if if_main_process():
            try:
                outcome = decide()
            except ExperimentMismatch as err:
                outcome = ("refuse", str(err))
        status, message = ddp_broadcast(outcome)
        if status == "refuse":
            raise ExperimentMismatch(message)
        if message:
            logger.warning(message)
        return status

    def check_folder(self, overwrite=False):
        """Refuses to run into a folder holding another experiment, before
        anything is written there.

        Arguments
        ---------
        overwrite : bool
            Start over: move the folder's run (and a save folder elsewhere)
            to ``<folder>.old-<time>`` first.

        Returns
        -------
        str
            ``new`` (nothing recorded), ``resume`` (same identity) or
            ``restart`` (old run moved aside).

        Raises
        ------
        ExperimentMismatch
            Another identity is recorded, or checkpoints without a record;
            the message names the fields and the ways on.
        """
        if not isinstance(overwrite, bool):
            raise ValueError(
                f"overwrite_experiment must be True or False, got {overwrite!r}."
            )
        status = self._on_main(lambda: self._decide(overwrite))
        if status == "restart":
            # Per-node storage: every other node's local main process moves
            # its own copy too (on shared storage the main process has moved
            # it already, so there is nothing left to move).
            local_main = int(os.environ.get("LOCAL_RANK", 0)) == 0
            if local_main and not if_main_process() and os.path.isdir(self.folder):
                logger.warning("Previous run moved to %s.", _set_aside(self.folder))
            ddp_barrier()  # before the main process writes the new run
        return status

    def record(self, labels=None):
        """Adds the training data's labels to the identity, checks them
        against the record and writes ``<output_folder>/experiment.json``
        (main process; not for ``--test_only`` runs).

        Arguments
        ---------
        labels : list of str, optional
            The classes, in the order of the head's outputs.
        """
        if labels is not None:
            self.identity["labels"] = [str(label) for label in labels]

        def write():
            """Main process: compares the labels, then writes the record."""
            if os.path.isfile(self.record_path):
                recorded = _read_record(self.record_path)
                if "labels" in recorded and "labels" in self.identity:
                    lines = differences(
                        {"labels": recorded["labels"]},
                        {"labels": self.identity["labels"]},
                    )
                    if lines:
                        return "refuse", (
                            f"The training data in {self.settings.get('data_folder')} "
                            f"has other classes than the run in {self.folder} was "
                            f"trained on: {lines[0]}. The data changed since; "
                            + RESTART_HINT.format(folder=self.folder)
                        )
            if not self.test_only:
                self.save(self.record_path, full=True)
            return "recorded", None

        self._on_main(write)

    @checkpoints.mark_as_saver
    def save(self, path, full=False):
        """Writes the identity as JSON (in a checkpoint: ``experiment.ckpt``).

        Arguments
        ---------
        path : str
            Target file (written atomically).
        full : bool
            Also the recipe file and the time (``experiment.json``).
        """
        content = {"format": FORMAT, "identity": self.identity}
        if full:
            content["hparams_file"] = os.path.abspath(self.hparams_file)
            content["recorded"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(f"{path}.tmp", "w", encoding="utf-8") as fout:
            json.dump(content, fout, indent=1, sort_keys=True)
        os.replace(f"{path}.tmp", path)

    @checkpoints.mark_as_loader
    def load(self, path, end_of_epoch=True):
        """Refuses a checkpoint written by another experiment.

        Arguments
        ---------
        path : str
            The checkpoint's ``experiment.ckpt``.
        end_of_epoch : bool
            Unused (SpeechBrain's loader signature).
        """
        del end_of_epoch
        saved = _read_record(path)
        skip = () if "labels" in saved and "labels" in self.identity else ("labels",)
        lines = differences(saved, self.identity, skip=skip)
        if lines:
            listed = "\n  ".join(lines)
            raise ExperimentMismatch(
                f"The checkpoint {os.path.dirname(path)} was written by another "
                f"experiment than this run (checkpoint -> this run):\n  {listed}\n"
                "Move that checkpoint folder out of the save folder, or: "
                + RESTART_HINT.format(folder=self.folder)
            )
