"""The ``README.md`` model card of a packaged model.

Everything on the card is read from the experiment folder, never typed in:
``run_info.json`` (task, data set, command lines: :func:`record_run`, called
at start), ``inference.yaml`` (pretrained models and their sources), the
packaged checkpoints (method or bridge with all its settings), ``log.txt``
(trainable parameters as the run counted them) and ``train_log.txt``
(validation and test metrics of the packaged checkpoint's epoch).

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


def _text(path):
    """The text of ``path`` ("" when there is no such file)."""
    if not os.path.isfile(path):
        return ""
    with open(path, encoding="utf-8") as fin:
        return fin.read()


def _read_json(path):
    """The JSON object in ``path`` ({} when there is no such file)."""
    return json.loads(_text(path) or "{}")


def record_run(output_folder, **info):
    """Adds ``info`` (plain values for the card: ``task``, ``dataset``) and
    this process's command line (run from its folder; ``torchrun`` under DDP)
    to ``<output_folder>/run_info.json``.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> record_run(folder, task="audio-classification", dataset="ESC-50")
    >>> record_run(folder)
    >>> run = _read_json(os.path.join(folder, RUN_INFO))
    >>> run["dataset"], len(run["commands"]), run["commands"][0].startswith("cd ")
    ('ESC-50', 2, True)
    """
    launcher = ["python"]
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        launcher = ["torchrun", f"--nproc_per_node={os.environ['LOCAL_WORLD_SIZE']}"]
    command = f"cd {shlex.quote(os.getcwd())} && {shlex.join(launcher + sys.argv)}"
    path = os.path.join(output_folder, RUN_INFO)
    run = {**_read_json(path), **info}
    run["commands"] = run.get("commands", []) + [command]
    os.makedirs(output_folder, exist_ok=True)
    with open(f"{path}.tmp", "w", encoding="utf-8") as fout:
        json.dump(run, fout, indent=1)
    os.replace(f"{path}.tmp", path)


def parse_log_line(line):
    """The statistics of one ``train_log.txt`` line (SpeechBrain's format):
    ``meta`` and each stage present -> its statistics, as logged (strings).

    Arguments
    ---------
    line : str
        E.g. ``"epoch: 2, lr: 1.00e-03 - train loss: 1.20 - valid loss: 1.30"``.

    Example
    -------
    >>> parse_log_line("Epoch loaded: 2 - test loss: 1.31, test accuracy: 3.00e-01")
    {'meta': {'Epoch loaded': '2'}, 'test': {'loss': '1.31', 'accuracy': '3.00e-01'}}
    """
    parsed = {}
    for part in line.strip().split(" - "):
        items = [item.split(": ", 1) for item in part.split(", ") if ": " in item]
        stage = items[0][0].split(" ", 1)[0] if items else ""
        if stage in ("train", "valid", "test"):
            parsed[stage] = {k.split(" ", 1)[1]: v for k, v in items}
        else:
            parsed["meta"] = dict(items)
    return parsed


def _metrics(train_log, epoch):
    """Row (``valid``, ``test``, ``test (<set>)``) -> statistics of ``epoch``."""
    rows = {}
    for line in _text(train_log).splitlines():
        stats = parse_log_line(line)
        meta = stats.get("meta", {})
        if meta.get("epoch") == str(epoch) and "valid" in stats:
            rows["valid"] = stats["valid"]
        if meta.get("Epoch loaded") == str(epoch) and "test" in stats:
            name = f"test ({meta['test set']})" if "test set" in meta else "test"
            rows[name] = stats["test"]
    return rows


def _sources(node, found):
    """Appends (class or function, source) of every pretrained model a YAML
    node builds."""
    if isinstance(node, dict):
        tag = str(getattr(getattr(node, "tag", None), "value", None) or "")
        for key in ("source", "pretrained_model_name_or_path"):
            if key in node and (tag.split(":", 1)[-1], node[key]) not in found:
                found.append((tag.split(":", 1)[-1], node[key]))
        node = list(node.values())
    for value in node if isinstance(node, list) else ():
        _sources(value, found)
    return found


def _number(value):
    """A logged number as plain text (``5.00e-01`` -> ``0.5``)."""
    try:
        return f"{float(value):g}"
    except ValueError:
        return value


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
    run = _read_json(os.path.join(experiment_folder, RUN_INFO))
    epoch = _text(os.path.join(checkpoint.path, "counter.ckpt")).strip() or None
    metrics = _metrics(os.path.join(experiment_folder, "train_log.txt"), epoch)
    with open(os.path.join(package_folder, "inference.yaml"), encoding="utf-8") as fin:
        sources = _sources(ruamel.yaml.YAML().load(fin), [])
    about = {}
    for name in sorted(os.listdir(package_folder)):
        if name.endswith(".ckpt") and name != "label_encoder.ckpt":
            saved = torch.load(os.path.join(package_folder, name), weights_only=True)
            about.update(saved.get(DESCRIPTION_KEY) or {})
    method = about.get("petl_method") or about.get("bridge") or "model"
    counts = COUNTS.findall(_text(os.path.join(experiment_folder, "log.txt")))
    stats = sorted({k for row in metrics.values() for k in row})
    commands = run.get("commands") or ["(not recorded)"]
    meta = {k: v for k, v in checkpoint.meta.items() if k not in SKIPPED_META}
    rows = {
        "task": run.get("task", "(not recorded)"),
        "data set": run.get("dataset", "(not recorded)"),
        **{f"pretrained `{what}`": f"`{src}`" for what, src in sources},
        **{key: f"`{value}`" for key, value in about.items()},
        "trainable parameters": "{} of {} ({} without the head)".format(*counts[-1])
        if counts
        else "(not recorded)",
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
        "| | |\n|---|---|",
        *[f"| {key} | {value} |" for key, value in rows.items()],
        "",
        f"## Metrics of this checkpoint (`train_log.txt`, epoch {epoch})",
        "",
        "| | " + " | ".join(stats) + " |",
        "|---" * (len(stats) + 1) + "|",
        *[
            f"| {row} | " + " | ".join(_number(v.get(k, "")) for k in stats) + " |"
            for row, v in metrics.items()
        ],
        "",
        "## Training command",
        "",
        f"```bash\n{commands[0]}\n```",
        f"(First of {len(commands)} invocations recorded in `{RUN_INFO}`.)"
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
