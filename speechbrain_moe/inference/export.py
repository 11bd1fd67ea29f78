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

Authors
 * speechbrain-moe contributors 2026
"""

import io
import os
import shutil

import ruamel.yaml
from hyperpyyaml import dump_hyperpyyaml, resolve_references
from hyperpyyaml.core import RefTag
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_moe.checkpoints import Checkpointer
from speechbrain_moe.inference.model_card import model_card, record_run

logger = get_logger(__name__)

PRETRAINER = "!new:speechbrain.utils.parameter_transfer.Pretrainer"


def _absolute_paths(node, prefixes):
    """Makes relative paths (existing ones, or under ``prefixes``) absolute;
    drops the comments of the run's YAML (they would land out of place)."""
    comments = getattr(node, "ca", None)
    if comments is not None:
        comments.items.clear()
        comments.comment = None
        comments.end = []
    if isinstance(node, dict):
        for key in node:
            node[key] = _absolute_paths(node[key], prefixes)
    elif isinstance(node, list):
        for i, value in enumerate(node):
            node[i] = _absolute_paths(value, prefixes)
    elif isinstance(node, str) and node and not os.path.isabs(node):
        if os.path.exists(node) or node.startswith(prefixes):
            return os.path.abspath(node)
    return node


def export_inference_hparams(
    hparams_file, overrides, output_folder, keys, loadables, modules=None, card=None
):
    """Writes ``<output_folder>/inference.yaml`` from the run's own YAML.

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

    Returns
    -------
    str
        The path written (on every process; written by the main one).

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
    head: !new:torch.nn.Linear [3, 2]
    modules:
      head: !ref <head>
    pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
      loadables:
        head: !ref <head>
    <BLANKLINE>
    """
    path = os.path.join(output_folder, "inference.yaml")
    if not if_main_process():
        return path
    with open(hparams_file, encoding="utf-8") as fin:
        resolved = resolve_references(fin, overrides).getvalue()
    tree = ruamel.yaml.YAML().load(resolved)
    missing = [k for k in keys if k not in tree]
    if missing:
        raise KeyError(f"{hparams_file} has no key(s) {missing} to export.")
    prefixes = (os.path.normpath(output_folder) + os.sep,)
    kept = {k: _absolute_paths(tree[k], prefixes) for k in tree if k in keys}
    if modules is None:
        modules = [k for k in loadables if k != "label_encoder"]
    kept["modules"] = {k: RefTag(f"<{k}>") for k in modules}
    pretrainer = ruamel.yaml.comments.CommentedMap(
        loadables={k: RefTag(f"<{k}>") for k in loadables}
    )
    pretrainer.yaml_set_ctag(ruamel.yaml.Tag(suffix=PRETRAINER))
    kept["pretrainer"] = pretrainer
    os.makedirs(output_folder, exist_ok=True)
    record_run(output_folder, **(card or {}))
    buffer = io.StringIO()
    dump_hyperpyyaml(kept, buffer)
    with open(path, "w", encoding="utf-8") as fout:
        fout.write(buffer.getvalue())
    return path


def package_experiment(
    experiment_folder, loadables, max_key=None, min_key=None, interface=None
):
    """Copies an experiment's best checkpoint next to its ``inference.yaml``
    and writes its model card.

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
        ``inference.yaml``, the files and ``README.md`` (what a model hub
        would hold).
    """
    hparams_file = os.path.join(experiment_folder, "inference.yaml")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(
            f"{experiment_folder} has no inference.yaml; the recipes' train.py "
            "writes it at start. Give the output_folder of a recipe run."
        )
    save = os.path.join(experiment_folder, "save")
    checkpoint = None
    if os.path.isdir(save):
        checkpoint = Checkpointer(save).find_checkpoint(
            max_key=max_key, min_key=min_key
        )
    if checkpoint is None:
        raise FileNotFoundError(
            f"No complete checkpoint with a {max_key or min_key!r} value in {save}: "
            "train the model (at least one epoch with validation) first."
        )
    target = os.path.join(experiment_folder, "inference_model")
    os.makedirs(target, exist_ok=True)
    for name in loadables:
        if name == "label_encoder":
            src = os.path.join(save, "label_encoder.txt")
        else:
            src = os.path.join(checkpoint.path, f"{name}.ckpt")
        if not os.path.isfile(src):
            raise FileNotFoundError(f"{src} is missing; re-run the training.")
        shutil.copyfile(src, os.path.join(target, f"{name}.ckpt"))
    shutil.copyfile(hparams_file, os.path.join(target, "inference.yaml"))
    if interface is not None:
        model_card(experiment_folder, target, checkpoint, interface)
    logger.info("Packaged checkpoint %s into %s", checkpoint.path, target)
    return target
