"""The experiment folder is the inference folder.

At the start of a run the recipes call :func:`export_inference_hparams`: it
takes the run's own YAML (with its command-line overrides), resolves it and
keeps the nodes that build the model (the backbone with its PETL method, the
head, ...) *exactly as the run built them*, then adds the ``modules`` and the
``pretrainer`` SpeechBrain's inference interfaces need. The result,
``<output_folder>/inference.yaml``, loads every backbone the recipes support.
:func:`package_experiment` copies the best checkpoint's files next to it,
with a model card (``README.md``, see
:mod:`~speechbrain_moe.inference.model_card`).

The folder is self-contained and verified:

* the method and bridge YAML files the run used (a user's own file as well
  as a packaged one) and any other file the kept nodes name outside the
  output folder are *copied* into it at the start of the run, and
  ``inference.yaml`` refers to the copies through ``<inference_folder>``
  (given by ``from_hparams`` when it loads the folder): editing or deleting
  the user's file after training changes nothing, and the folder loads after
  it is moved. A packaged method keeps its name (``method: soft_moa``, so
  that the model knows which method it holds); its copy records the text it
  was trained with, and loading refuses an installed package whose file
  differs. Pretrained models (``backbone_source``, ``llm_source``) come
  from their sources again, as in SpeechBrain;
* ``inference_interface`` records the class that loads it
  (:class:`~speechbrain_moe.inference.PETLAudioClassifier` or
  :class:`~speechbrain_moe.inference.SpeechLLMTranscriber`);
* the packaged checkpoint is the best one, verified against the
  ``MANIFEST.json`` of training (else the packaging fails naming the damaged
  file), and the package has its own ``MANIFEST.json`` that loading checks.

Authors
 * speechbrain-moe contributors 2026
"""

import io
import os
import shutil
from importlib import resources

import ruamel.yaml
from hyperpyyaml import dump_hyperpyyaml, resolve_references
from hyperpyyaml.core import RefTag
from speechbrain.utils.distributed import is_local_rank_zero
from speechbrain.utils.logger import get_logger

from speechbrain_moe.hparams_files import packaged_names
from speechbrain_moe.inference.model_card import model_card, record_run
from speechbrain_moe.inference.verify import (
    best_checkpoint,
    damaged_files,
    read_manifest,
    refuse_damaged,
    sha256_of,
    write_manifest,
)

logger = get_logger(__name__)

PRETRAINER = "!new:speechbrain.utils.parameter_transfer.Pretrainer"
# The keys export_inference_hparams adds to inference.yaml (besides modules
# and pretrainer): the folder that holds the copies (given at load), the
# class that loads the folder, the copies, and packaged method -> its copy.
FOLDER_KEY = "inference_folder"
INTERFACE_KEY = "inference_interface"
FILES_KEY = "inference_files"
PACKAGED_KEY = "packaged_methods"
# Functions whose argument names a method or bridge file: (kind, keyword,
# position of the argument).
METHOD_CALLS = {
    "speechbrain_moe.petl.apply_method": ("petl", "method", 1),
    "speechbrain_moe.lobes.speech_llm.load_bridge": ("bridges", "bridge", 0),
}
INTERFACES = {
    "speechbrain_moe.inference.PETLAudioClassifier": (
        "backbone",
        "classifier",
        "label_encoder",
    ),
    "speechbrain_moe.inference.SpeechLLMTranscriber": ("speech_llm",),
}


def _absolute_paths(node, prefixes):
    """Makes relative paths (existing ones, or under ``prefixes``) absolute;
    drops the comments of the run's YAML (they would land out of place)."""
    comments = getattr(node, "ca", None)
    if comments is not None:
        comments.items.clear()
        comments.comment = None
        comments.end = []
    # A method or bridge argument is a packaged name unless it looks like a
    # path (the rule of speechbrain_moe.hparams_files): ``soft_moa`` stays a
    # name even when the working directory holds a folder called soft_moa.
    call = _tag(node).split(":", 1)[-1]
    container, method_key = (None, None)
    if call in METHOD_CALLS:
        container, method_key = _method_argument(node, call)
    if container is not None and not _looks_like_path(container[method_key]):
        keys = list(node) if isinstance(node, dict) else range(len(node))
        for key in keys:
            if key != method_key:
                node[key] = _absolute_paths(node[key], prefixes)
    elif isinstance(node, dict):
        for key in node:
            node[key] = _absolute_paths(node[key], prefixes)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _absolute_paths(value, prefixes)
    elif isinstance(node, str) and node and not os.path.isabs(node):
        if os.path.exists(node) or node.startswith(prefixes):
            return os.path.abspath(node)
    return node


def _looks_like_path(name):
    """Whether a method or bridge argument names a file (ends in ``.yaml`` /
    ``.yml`` or holds a path separator) rather than a packaged name."""
    return (
        not isinstance(name, str)
        or name.endswith((".yaml", ".yml"))
        or (os.sep in name)
    )


def _tag(node):
    """The tag of a ruamel node (``""`` for plain values)."""
    return str(getattr(getattr(node, "tag", None), "value", None) or "")


def _method_argument(node, call):
    """(container, key) of the method argument of a ``METHOD_CALLS`` node."""
    _, keyword, position = METHOD_CALLS[call]
    if isinstance(node, dict) and keyword in node:
        return node, keyword
    if isinstance(node, list) and len(node) > position:
        return node, position
    return None, None


class _Copies:
    """The files copied into an output folder, by the name they get there."""

    def __init__(self, output_folder):
        self.output_folder = output_folder
        self.files = {}  # name in the folder -> text or source path
        self.packaged = {}  # packaged method name -> name of its copy

    def _name(self, basename, source):
        """A free file name for ``source`` (the same one for the same source)."""
        for name, known in self.files.items():
            if known == source:
                return name
        name, suffix = basename, 1
        while name in self.files or name in ("inference.yaml", "MANIFEST.json"):
            stem, ext = os.path.splitext(basename)
            name, suffix = f"{stem}_{suffix}{ext}", suffix + 1
        self.files[name] = source
        return name

    def add_file(self, path):
        """Copies the file ``path``; returns the ``!ref`` that names the copy."""
        name = self._name(os.path.basename(path), path)
        return RefTag(f"<{FOLDER_KEY}>/{name}")

    def add_packaged(self, kind, method):
        """Records the text of packaged ``method`` of ``kind``."""
        source = resources.files("speechbrain_moe") / "hparams" / kind
        text = (source / f"{method}.yaml").read_text(encoding="utf-8")
        self.packaged[f"{kind}/{method}"] = self._name(f"{method}.yaml", ("", text))

    def write(self):
        """Writes the copies into the output folder."""
        for name, source in self.files.items():
            target = os.path.join(self.output_folder, name)
            if isinstance(source, tuple):
                _write_atomically(target, source[1])
            else:
                _write_atomically(target, copy_of=source)


def _write_atomically(path, text=None, copy_of=None):
    """Writes ``text`` (or a copy of the file ``copy_of``) to ``path`` through
    a temporary file of this process: nodes sharing a folder (each writes once
    per node) never see a partial file."""
    pending = f"{path}.{os.getpid()}.pending"
    if copy_of is not None:
        shutil.copyfile(copy_of, pending)
    else:
        with open(pending, "w", encoding="utf-8") as fout:
            fout.write(text)
    os.replace(pending, path)


def _copy_references(node, copies, outside):
    """Replaces, in the tree of kept nodes, every file the model is defined
    by (method and bridge files, any existing file for which ``outside``
    holds) with a reference to its copy; returns the node."""
    call = _tag(node).split(":", 1)[-1]
    if call in METHOD_CALLS:
        container, key = _method_argument(node, call)
        method = container[key] if container is not None else None
        kind = METHOD_CALLS[call][0]
        if isinstance(method, str) and method in packaged_names(kind):
            copies.add_packaged(kind, method)
    if isinstance(node, dict):
        for key in node:
            node[key] = _copy_references(node[key], copies, outside)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _copy_references(value, copies, outside)
    elif isinstance(node, str) and os.path.isfile(node) and outside(node):
        return copies.add_file(node)
    return node


def _interface_of(loadables, interface):
    """The dotted name of the class that loads a folder of these loadables."""
    if interface is not None:
        if isinstance(interface, type):
            return f"{interface.__module__}.{interface.__qualname__}"
        return str(interface)
    for name, needed in INTERFACES.items():
        if tuple(loadables) == needed:
            return name
    return None


def export_inference_hparams(
    hparams_file,
    overrides,
    output_folder,
    keys,
    loadables,
    modules=None,
    card=None,
    interface=None,
):
    """Writes ``<output_folder>/inference.yaml`` from the run's own YAML, and
    copies the files it needs into ``output_folder``.

    Arguments
    ---------
    hparams_file : str
        The recipe YAML the run was started with.
    overrides : str or dict
        The run's overrides (as ``sb.parse_arguments`` returns them).
    output_folder : str
        The run's output folder.
    keys : list of str
        Top-level keys to keep (objects and plain values), in the YAML's
        order; a key starting with ``__`` (e.g. ``__set_seed``) keeps running
        when the file is loaded.
    loadables : list of str
        Keys whose trained state the pretrainer loads (``<key>.ckpt``).
    modules : list of str, optional
        Keys that form ``modules`` (default: the loadables that are not
        ``label_encoder``).
    card : dict, optional
        ``task`` and ``dataset`` for the model card; the command line is
        recorded too (``run_info.json``, see
        :func:`~speechbrain_moe.inference.model_card.record_run`).
    interface : type or str, optional
        The inference class that loads the folder (recorded as
        ``inference_interface``; default: found from ``loadables``, the
        ones of ``PETLAudioClassifier`` or ``SpeechLLMTranscriber``).

    Returns
    -------
    str
        The path written (on every process; written once per node, by its
        local main process).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> yaml_file = os.path.join(folder, "train.yaml")
    >>> _ = open(yaml_file, "w").write(
    ...     "data: !PLACEHOLDER\\nsize: 4\\nhead: !new:torch.nn.Linear [!ref <size>, 2]\\n")
    >>> path = export_inference_hparams(yaml_file, {"data": "/d", "size": 3}, folder,
    ...                                 keys=["head"], loadables=["head"])
    >>> print(open(path).read())
    inference_folder: !PLACEHOLDER
    inference_files: []
    packaged_methods: {}
    head: !new:torch.nn.Linear [3, 2]
    modules:
      head: !ref <head>
    pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
      loadables:
        head: !ref <head>
    <BLANKLINE>
    """
    path = os.path.join(output_folder, "inference.yaml")
    if not is_local_rank_zero():  # once per node: each has its own storage
        return path
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides).getvalue()
    tree = ruamel.yaml.YAML().load(resolved)
    missing = [k for k in keys if k not in tree]
    if missing:
        raise KeyError(f"{hparams_file} has no key(s) {missing} to export.")
    prefixes = (os.path.normpath(output_folder) + os.sep,)
    inside = os.path.normpath(os.path.abspath(output_folder)) + os.sep
    copies = _Copies(output_folder)
    kept = {}
    interface = _interface_of(loadables, interface)
    kept[FOLDER_KEY] = ruamel.yaml.comments.TaggedScalar("", tag="!PLACEHOLDER")
    if interface is not None:
        kept[INTERFACE_KEY] = interface
    for key in tree:
        if key in keys:
            node = _absolute_paths(tree[key], prefixes)
            kept[key] = _copy_references(
                node, copies, lambda p: not os.path.abspath(p).startswith(inside)
            )
    kept = {
        **{k: kept[k] for k in (FOLDER_KEY, INTERFACE_KEY) if k in kept},
        FILES_KEY: sorted(copies.files),
        PACKAGED_KEY: dict(copies.packaged),
        **{k: v for k, v in kept.items() if k not in (FOLDER_KEY, INTERFACE_KEY)},
    }
    if modules is None:
        modules = [k for k in loadables if k != "label_encoder"]
    kept["modules"] = {k: RefTag(f"<{k}>") for k in modules}
    pretrainer = ruamel.yaml.comments.CommentedMap(
        loadables={k: RefTag(f"<{k}>") for k in loadables}
    )
    pretrainer.yaml_set_ctag(ruamel.yaml.Tag(suffix=PRETRAINER))
    kept["pretrainer"] = pretrainer
    os.makedirs(output_folder, exist_ok=True)
    copies.write()
    record_run(output_folder, **(card or {}))
    buffer = io.StringIO()
    dump_hyperpyyaml(kept, buffer)
    _write_atomically(path, buffer.getvalue())
    return path


def read_header(hparams_file):
    """The plain keys :func:`export_inference_hparams` records, and the
    top-level keys, of an ``inference.yaml`` (read without building anything).

    Arguments
    ---------
    hparams_file : str
        An ``inference.yaml``.

    Returns
    -------
    dict
        ``inference_interface`` (None when not recorded), ``inference_files``,
        ``packaged_methods``, ``placeholder`` (whether ``inference_folder``
        must be given) and ``keys`` (the top-level keys).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "inference.yaml")
    >>> _ = open(path, "w").write("inference_interface: a.B\\nmodules: {}\\n")
    >>> header = read_header(path)
    >>> header["inference_interface"], header["inference_files"], header["keys"]
    ('a.B', [], ['inference_interface', 'modules'])
    """
    with open(hparams_file, encoding="utf-8") as fin:
        try:
            tree = ruamel.yaml.YAML().load(fin) or {}
        except ruamel.yaml.YAMLError as err:
            raise ValueError(
                f"{hparams_file} is not valid YAML ({err}). Restore it from the run "
                "(its output folder's inference.yaml)."
            ) from err
    if not isinstance(tree, dict):
        raise ValueError(
            f"{hparams_file} is not an inference file (a mapping of keys). Give the "
            "inference.yaml of a run or of a packaged model."
        )
    return {
        "inference_interface": tree.get(INTERFACE_KEY),
        "inference_files": list(tree.get(FILES_KEY) or []),
        "packaged_methods": dict(tree.get(PACKAGED_KEY) or {}),
        "placeholder": FOLDER_KEY in tree,
        "keys": list(tree),
    }


def check_packaged_methods(folder, packaged):
    """Refuses when a packaged method or bridge file of the installed
    package differs from the copy the run recorded.

    Arguments
    ---------
    folder : str
        The inference folder (holding the copies).
    packaged : dict
        ``"<kind>/<name>"`` -> name of the copy (``packaged_methods``).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> text = (resources.files("speechbrain_moe") / "hparams" / "petl" / "lora.yaml")
    >>> _ = open(os.path.join(folder, "lora.yaml"), "w").write(text.read_text())
    >>> check_packaged_methods(folder, {"petl/lora": "lora.yaml"})
    >>> _ = open(os.path.join(folder, "lora.yaml"), "a").write("# other\\n")
    >>> check_packaged_methods(folder, {"petl/lora": "lora.yaml"})
    Traceback (most recent call last):
    ...
    RuntimeError: The installed speechbrain_moe's petl/lora.yaml differs from ...
    """
    for method, name in packaged.items():
        kind, method_name = method.split("/", 1)
        installed = resources.files("speechbrain_moe") / "hparams" / kind
        installed = installed / f"{method_name}.yaml"
        copy = os.path.join(folder, name)
        with open(copy, encoding="utf-8") as fin:
            recorded = fin.read()
        if installed.read_text(encoding="utf-8") != recorded:
            raise RuntimeError(
                f"The installed speechbrain_moe's {method}.yaml differs from the one "
                f"this model was trained with ({copy}): the model would be built "
                "with other settings. Install the speechbrain-moe version it was "
                f"trained with, or make inference.yaml of {folder} build it from "
                f"the copy: replace {method_name!r} by !ref <inference_folder>/{name}."
            )


def package_experiment(
    experiment_folder, loadables, max_key=None, min_key=None, interface=None
):
    """Copies an experiment's best checkpoint next to its ``inference.yaml``
    (and the files that one names) and writes its model card and manifest.

    Arguments
    ---------
    experiment_folder : str
        A recipe's ``output_folder`` (``inference.yaml`` and ``save/``).
    loadables : sequence of str
        The checkpoint files to copy (``<name>.ckpt``); ``label_encoder`` is
        copied from ``save/label_encoder.txt``.
    max_key : str, optional
        Pick the checkpoint with the highest meta value of this key.
    min_key : str, optional
        Pick the checkpoint with the lowest meta value of this key.
    interface : type, optional
        The inference class (named in the model card's usage snippet;
        without it no card is written).

    Returns
    -------
    str
        ``<experiment_folder>/inference_model``, a flat folder holding
        ``inference.yaml``, the files, ``MANIFEST.json`` and ``README.md``
        (what a model hub would hold).

    Example
    -------
    >>> import tempfile, torch
    >>> from speechbrain_moe.checkpoints import Checkpointer
    >>> exp = tempfile.mkdtemp()
    >>> _ = open(os.path.join(exp, "inference.yaml"), "w").write("modules: {}\\n")
    >>> saver = Checkpointer(os.path.join(exp, "save"), {"backbone": torch.nn.Linear(2, 2)})
    >>> _ = saver.save_checkpoint(meta={"accuracy": 0.5})
    >>> target = package_experiment(exp, ["backbone"], max_key="accuracy")
    >>> sorted(os.listdir(target))
    ['MANIFEST.json', 'backbone.ckpt', 'inference.yaml']
    """
    hparams_file = os.path.join(experiment_folder, "inference.yaml")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(
            f"{experiment_folder} has no inference.yaml; the recipes' train.py "
            "writes it at start. Give the output_folder of a recipe run."
        )
    save = os.path.join(experiment_folder, "save")
    if not os.path.isdir(save):
        raise FileNotFoundError(
            f"No checkpoint folder {save}: train the model (at least one epoch "
            "with validation) first."
        )
    checkpoint = best_checkpoint(save, max_key=max_key, min_key=min_key)
    header = read_header(hparams_file)
    target = os.path.join(experiment_folder, "inference_model")
    os.makedirs(target, exist_ok=True)
    sums = read_manifest(checkpoint.path)
    packaged = []
    for name in loadables:
        if name == "label_encoder":
            src = os.path.join(save, "label_encoder.txt")
        else:
            src = os.path.join(checkpoint.path, f"{name}.ckpt")
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src} is missing; re-run the training.")
        shutil.copyfile(src, os.path.join(target, f"{name}.ckpt"))
        packaged.append(f"{name}.ckpt")
        expected = sums.get(os.path.basename(src))
        if expected is not None and sha256_of(src) != expected["sha256"]:
            refuse_damaged(
                {src: "changed while it was packaged (SHA-256 mismatch)"},
                "Package again; if it persists, the disk is failing.",
            )
    copies = header["inference_files"]
    for name in copies:
        src = os.path.join(experiment_folder, name)
        if not os.path.isfile(src):
            raise FileNotFoundError(
                f"{src} is missing: the run copied it there at start (its "
                "inference.yaml refers to it). Restore it, or re-run the training."
            )
        shutil.copyfile(src, os.path.join(target, name))
    write_manifest(target, [*packaged, *copies])
    shutil.copyfile(hparams_file, os.path.join(target, "inference.yaml"))
    if interface is not None:
        model_card(experiment_folder, target, checkpoint, interface)
    logger.info("Packaged checkpoint %s into %s", checkpoint.path, target)
    return target


def verify_package(folder):
    """Checks a packaged folder's files against its ``MANIFEST.json``.

    Arguments
    ---------
    folder : str
        A folder :func:`package_experiment` wrote (or a copy of it).

    Returns
    -------
    bool
        Whether there was a manifest to check (a folder packaged by an older
        version has none).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> verify_package(folder)
    False
    """
    files = read_manifest(folder)
    if files is None:
        return False
    refuse_damaged(
        damaged_files(folder, files),
        f"The packaged model in {folder} was changed after packaging. Restore the "
        "named file(s) from a copy, or package the run again: "
        "from_hparams(source=<the run's output_folder>) re-packages its best "
        "checkpoint.",
    )
    return True
