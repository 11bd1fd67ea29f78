"""The ``README.md`` model card of a packaged model.

Everything on the card comes from files of the experiment folder, never from
typed-in numbers: ``run_info.json`` (task, data set and the command lines,
written at start by :func:`record_run`), ``inference.yaml`` (pretrained
models and their sources), the packaged checkpoint files (PETL method or
bridge with all its settings), ``log.txt`` (trainable parameters, as the run
counted them) and ``train_log.txt`` (validation and test metrics of the
packaged checkpoint's epoch).

Authors
 * speechbrain-moe contributors 2026
"""

import json
import os
import re
import shlex
import sys

import ruamel.yaml
import torch

from speechbrain_moe.recoverables import DESCRIPTION_KEY

RUN_INFO = "run_info.json"
SKIPPED_META = ("end-of-epoch", "unixtime")
COUNTS = re.compile(
    r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) .*"
    r"trainable without head: ([\d,]+)"
)


def command_line():
    """This process's command line, as a shell line run from its folder.

    Returns
    -------
    str

    Example
    -------
    >>> command_line().startswith("cd ")
    True
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    launcher = ["python"]
    if world > 1:
        per_node = os.environ.get("LOCAL_WORLD_SIZE", world)
        launcher = ["torchrun", f"--nproc_per_node={per_node}"]
    return f"cd {shlex.quote(os.getcwd())} && {shlex.join(launcher + sys.argv)}"


def record_run(output_folder, **info):
    """Adds ``info`` and this process's command line to ``run_info.json``.

    Arguments
    ---------
    output_folder : str
        The experiment folder.
    **info
        Plain values for the card (``task``, ``dataset``).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> record_run(folder, task="Sound classification", dataset="ESC-50")
    >>> record_run(folder)
    >>> run = read_json(os.path.join(folder, RUN_INFO))
    >>> run["dataset"], len(run["commands"])
    ('ESC-50', 2)
    """
    path = os.path.join(output_folder, RUN_INFO)
    run = {**read_json(path), **info}
    run["commands"] = run.get("commands", []) + [command_line()]
    os.makedirs(output_folder, exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as fout:
        json.dump(run, fout, indent=1)
    os.replace(f"{path}.tmp", path)


def read_json(path):
    """The JSON object in ``path`` ({} when the file does not exist).

    Arguments
    ---------
    path : str
        A JSON file.

    Returns
    -------
    dict
    """
    if not os.path.isfile(path):
        return {}
    with open(path, encoding="utf-8") as fin:
        return json.load(fin)


def parse_log_line(line):
    """The statistics of one ``train_log.txt`` line (SpeechBrain's format).

    Arguments
    ---------
    line : str
        E.g. ``"epoch: 2, lr: 1.00e-03 - train loss: 1.20 - valid loss: 1.30"``.

    Returns
    -------
    dict
        ``{"meta": {...}, "train": {...}, "valid": {...}, "test": {...}}`` of
        the parts present, values as logged (strings).

    Example
    -------
    >>> parse_log_line("Epoch loaded: 2 - test loss: 1.31, test accuracy: 3.00e-01")
    {'meta': {'Epoch loaded': '2'}, 'test': {'loss': '1.31', 'accuracy': '3.00e-01'}}
    """
    parsed = {}
    for part in line.strip().split(" - "):
        items = [item.split(": ", 1) for item in part.split(", ") if ": " in item]
        stage = items[0][0].split(" ", 1)[0] if items else ""
        if stage not in ("train", "valid", "test"):
            parsed["meta"] = dict(items)
            continue
        parsed[stage] = {k.split(" ", 1)[1]: v for k, v in items}
    return parsed


def checkpoint_metrics(train_log, epoch):
    """Validation and test statistics of ``epoch`` in a ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        The run's ``train_log.txt``.
    epoch : int
        The epoch of the packaged checkpoint.

    Returns
    -------
    dict
        Row name (``valid``, ``test`` or ``test <set>``) -> statistics (the
        last line logged for it wins).
    """
    rows = {}
    with open(train_log, encoding="utf-8") as fin:
        for line in fin:
            stats = parse_log_line(line)
            meta = stats.get("meta", {})
            if meta.get("epoch") == str(epoch) and "valid" in stats:
                rows["valid"] = stats["valid"]
            if meta.get("Epoch loaded") == str(epoch) and "test" in stats:
                name = f"test ({meta['test set']})" if "test set" in meta else "test"
                rows[name] = stats["test"]
    return rows


def pretrained_sources(node, found=None):
    """(class or function, source) of every pretrained model a YAML builds.

    Arguments
    ---------
    node : object
        A round-trip loaded ``inference.yaml`` (or part of it).
    found : list, optional
        Accumulator.

    Returns
    -------
    list of tuple
    """
    found = [] if found is None else found
    if isinstance(node, dict):
        tag = str(getattr(getattr(node, "tag", None), "value", None) or "")
        for key in ("source", "pretrained_model_name_or_path"):
            if key in node and (tag.split(":", 1)[-1], node[key]) not in found:
                found.append((tag.split(":", 1)[-1], node[key]))
        for value in node.values():
            pretrained_sources(value, found)
    elif isinstance(node, list):
        for value in node:
            pretrained_sources(value, found)
    return found


def _counts(log_file):
    """Trainable, total and trainable-without-head counts in ``log.txt``."""
    if not os.path.isfile(log_file):
        return None
    found = COUNTS.findall(open(log_file, encoding="utf-8").read())
    return found[-1] if found else None


def _fmt(value):
    """A logged number as plain text (``5.00e-01`` -> ``0.5``)."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


def _descriptions(package_folder):
    """The ``__description__`` of every packaged checkpoint file, merged."""
    merged = {}
    for name in sorted(os.listdir(package_folder)):
        if name.endswith(".ckpt") and name != "label_encoder.ckpt":
            saved = torch.load(os.path.join(package_folder, name), weights_only=True)
            if isinstance(saved, dict):
                merged.update(saved.get(DESCRIPTION_KEY) or {})
    return merged


def model_card(experiment_folder, package_folder, checkpoint, interface):
    """Writes ``<package_folder>/README.md`` for a packaged checkpoint.

    Arguments
    ---------
    experiment_folder : str
        The recipe's output folder.
    package_folder : str
        The packaged folder (``inference.yaml`` and ``*.ckpt`` files).
    checkpoint : speechbrain.utils.checkpoints.Checkpoint
        The packaged checkpoint (its epoch selects the metrics).
    interface : type
        The inference class (its ``USAGE`` line ends the snippet).

    Returns
    -------
    str
        The path written.
    """
    run = read_json(os.path.join(experiment_folder, RUN_INFO))
    counter = os.path.join(checkpoint.path, "counter.ckpt")
    epoch = int(open(counter).read()) if os.path.isfile(counter) else None
    log = os.path.join(experiment_folder, "train_log.txt")
    metrics = checkpoint_metrics(log, epoch) if os.path.isfile(log) else {}
    with open(os.path.join(package_folder, "inference.yaml"), encoding="utf-8") as fin:
        sources = pretrained_sources(ruamel.yaml.YAML().load(fin))
    about = _descriptions(package_folder)
    method = about.get("petl_method") or about.get("bridge") or "?"
    counts = _counts(os.path.join(experiment_folder, "log.txt"))
    stats = sorted({k for row in metrics.values() for k in row})
    commands = run.get("commands") or ["(not recorded)"]
    meta = {k: v for k, v in checkpoint.meta.items() if k not in SKIPPED_META}
    rows = {
        "task": run.get("task", "(not recorded)"),
        "data set": run.get("dataset", "(not recorded)"),
        **{f"pretrained `{what}`": f"`{src}`" for what, src in sources},
        **{key: f"`{value}`" for key, value in about.items()},
        "trainable parameters": (
            f"{counts[0]} of {counts[1]} ({counts[2]} without the head)"
            if counts
            else "(not recorded)"
        ),
        "checkpoint": f"epoch {epoch}, meta `{meta}`",
    }
    lines = [
        "---",
        "library_name: speechbrain",
        f"pipeline_tag: {run.get('task', 'audio-classification')}",
        f"tags: [speechbrain, speechbrain-moe, peft, {method}]",
        "---",
        "",
        f"# {method} on {run.get('dataset', 'audio')} (speechbrain-moe)",
        "",
        "| | |",
        "|---|---|",
        *[f"| {key} | {value} |" for key, value in rows.items()],
        "",
        f"## Metrics of this checkpoint (`train_log.txt`, epoch {epoch})",
        "",
        "| | " + " | ".join(stats) + " |",
        "|---" * (len(stats) + 1) + "|",
        *[
            f"| {row} | " + " | ".join(_fmt(v.get(k, "")) for k in stats) + " |"
            for row, v in metrics.items()
        ],
        "",
        "## Training command",
        "",
        f"```bash\n{commands[0]}\n```",
        f"({len(commands)} invocations in `{RUN_INFO}`, the first shown.)"
        if len(commands) > 1
        else "",
        "",
        "## Usage",
        "",
        "```python",
        f"from speechbrain_moe.inference import {interface.__name__}",
        f'model = {interface.__name__}.from_hparams(source="<this folder or hub id>")',
        interface.USAGE,
        "```",
        "",
    ]
    path = os.path.join(package_folder, "README.md")
    with open(path, "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines))
    return path
