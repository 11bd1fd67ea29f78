"""The ``README.md`` model card of a packaged model.

Everything on the card is read from the experiment folder, never typed in:
``run_info.json`` (task, data set, command lines: :func:`record_run`, called
at start), ``inference.yaml`` (pretrained models and their sources), the
packaged checkpoints (method or bridge with all its settings), ``log.txt``
(trainable parameters as the run counted them) and ``train_log.txt``
(validation and test metrics of the packaged checkpoint's epoch).

The card follows SpeechBrain's own cards on the Hugging Face hub: a YAML
front matter (``language``, ``tags``, ``license``, ``datasets``,
``metrics``), a results table (the test line of ``train_log.txt``, or a
sentence saying there is none: no number is ever made up), install and usage
lines (CPU and GPU), a Limitations paragraph, the size of the trainable-weights
unit (the folder itself: what moves onto another copy of the backbone, see
:func:`~speechbrain_moe.inference.adapters.load_adapters`) and the BibTeX of
the method's paper(s) and of SpeechBrain.

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
import yaml

from speechbrain_moe.recoverables import DESCRIPTION_KEY

RUN_INFO = "run_info.json"
SKIPPED_META = ("end-of-epoch", "unixtime")
COUNTS = re.compile(
    r"trainable params: ([\d,]+) \|\| all params: ([\d,]+) .*"
    r"trainable without head: ([\d,]+)"
)

# Front matter: the language of the speech in the data sets the recipes use
# (environmental-sound sets have none: their cards carry no ``language``).
LANGUAGES = {
    "LibriSpeech": "en",
    "Speech Commands v2": "en",
    "Fluent Speech Commands": "en",
}
LICENSE = "apache-2.0"  # speechbrain-moe's (pyproject.toml), as SpeechBrain's
# Logged statistic -> the hub's metric name (results table and front matter).
HUB_METRICS = {"accuracy": "accuracy", "error": "error", "WER": "wer", "CER": "cer"}
# How a unit moves onto a backbone the user has (the PETL recipes' units).
MOVE_SNIPPET = [
    "Onto a backbone you already have (the same source, config and lobe "
    "settings; another one is refused), and back to the frozen backbone:",
    "",
    "```python",
    "from speechbrain_moe.inference.adapters import load_adapters",
    "from speechbrain_moe.petl.disable import disable_adapters",
    'backbone = load_adapters("<this folder>", my_backbone)',
    "# pretrained=: the backbone's own state dict, when the method trained",
    "# norms or biases in place (e.g. soft_moa with train_norms: True)",
    "with disable_adapters(backbone, pretrained=my_backbone_state_dict):",
    "    frozen_embeddings = backbone(wavs)",
    "```",
    "",
]
SPEECHBRAIN_BIBTEX = """@misc{speechbrain,
  title={{SpeechBrain}: A General-Purpose Speech Toolkit},
  author={Mirco Ravanelli and Titouan Parcollet and Peter Plantinga and Aku Rouhe and Samuele Cornell and Loren Lugosch and Cem Subakan and Nauman Dawalatabad and Abdelwahab Heba and Jianyuan Zhong and Ju-Chieh Chou and Sung-Lin Yeh and Szu-Wei Fu and Chien-Feng Liao and Elena Rastorgueva and Fran\\c{c}ois Grondin and William Aris and Hwidong Na and Yan Gao and Renato De Mori and Yoshua Bengio},
  year={2021},
  eprint={2106.04624},
  archivePrefix={arXiv},
  primaryClass={eess.AS}
}"""
SOFT_MOA_BIBTEX = """@inproceedings{cappellazzo2024softmoa,
  title={Efficient Fine-tuning of Audio Spectrogram Transformers via Soft Mixture of Adapters},
  author={Umberto Cappellazzo and Daniele Falavigna and Alessio Brutti and Mirco Ravanelli},
  booktitle={Interspeech},
  year={2024},
  eprint={2402.00828},
  archivePrefix={arXiv}
}"""
# The paper(s) of each packaged method (dense_moa is defined, as a baseline,
# in the Soft-MoA paper; linear probing and full fine-tuning have none).
METHOD_BIBTEX = {
    "soft_moa": [SOFT_MOA_BIBTEX],
    "dense_moa": [SOFT_MOA_BIBTEX],
    "moe_adapter": [
        """@inproceedings{shazeer2017moe,
  title={Outrageously Large Neural Networks: The Sparsely-Gated Mixture-of-Experts Layer},
  author={Noam Shazeer and Azalia Mirhoseini and Krzysztof Maziarz and Andy Davis and Quoc Le and Geoffrey Hinton and Jeff Dean},
  booktitle={ICLR},
  year={2017},
  eprint={1701.06538},
  archivePrefix={arXiv}
}""",
        SOFT_MOA_BIBTEX,
    ],
    "lora": [
        """@inproceedings{hu2022lora,
  title={{LoRA}: Low-Rank Adaptation of Large Language Models},
  author={Edward J. Hu and Yelong Shen and Phillip Wallis and Zeyuan Allen-Zhu and Yuanzhi Li and Shean Wang and Lu Wang and Weizhu Chen},
  booktitle={ICLR},
  year={2022},
  eprint={2106.09685},
  archivePrefix={arXiv}
}"""
    ],
    "bitfit": [
        """@inproceedings{benzaken2022bitfit,
  title={{BitFit}: Simple Parameter-efficient Fine-tuning for Transformer-based Masked Language-models},
  author={Elad Ben Zaken and Yoav Goldberg and Shauli Ravfogel},
  booktitle={ACL},
  year={2022},
  eprint={2106.10199},
  archivePrefix={arXiv}
}"""
    ],
    "adapter": [
        """@inproceedings{houlsby2019adapter,
  title={Parameter-Efficient Transfer Learning for {NLP}},
  author={Neil Houlsby and Andrei Giurgiu and Stanislaw Jastrzebski and Bruna Morrone and Quentin de Laroussilhe and Andrea Gesmundo and Mona Attariyan and Sylvain Gelly},
  booktitle={ICML},
  year={2019},
  eprint={1902.00751},
  archivePrefix={arXiv}
}"""
    ],
    "convpass": [
        """@misc{jie2022convpass,
  title={Convolutional Bypasses Are Better Vision Transformer Adapters},
  author={Shibo Jie and Zhi-Hong Deng},
  year={2022},
  eprint={2207.07039},
  archivePrefix={arXiv}
}"""
    ],
    "prompt": [
        """@inproceedings{jia2022vpt,
  title={Visual Prompt Tuning},
  author={Menglin Jia and Luming Tang and Bor-Chun Chen and Claire Cardie and Serge Belongie and Bharath Hariharan and Ser-Nam Lim},
  booktitle={ECCV},
  year={2022},
  eprint={2203.12119},
  archivePrefix={arXiv}
}"""
    ],
    "prefix": [
        """@inproceedings{li2021prefix,
  title={Prefix-Tuning: Optimizing Continuous Prompts for Generation},
  author={Xiang Lisa Li and Percy Liang},
  booktitle={ACL},
  year={2021},
  eprint={2101.00190},
  archivePrefix={arXiv}
}"""
    ],
}


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

    Arguments
    ---------
    output_folder : str
        The recipe's output folder (created if missing).
    **info
        Plain JSON values for the model card (``task``, ``dataset``); they
        replace earlier values of the same keys, and the command line is
        appended to the ``commands`` recorded by earlier runs.

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

    Returns
    -------
    dict
        ``"meta"`` (the leading ``key: value`` items) and each stage present
        (``train``, ``valid``, ``test``) -> ``{statistic: value}``, values as
        the strings logged.

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


def front_matter(run, method, metrics):
    """The YAML front matter of a card, as SpeechBrain's hub cards have it.

    Arguments
    ---------
    run : dict
        ``run_info.json`` (``task``, ``dataset``).
    method : str
        The PETL method or bridge (a tag).
    metrics : dict
        Row -> logged statistics (:func:`_metrics`); the hub's names of
        those logged (accuracy, WER, ...) are listed.

    Returns
    -------
    str
        The text between (and with) the two ``---`` lines.

    Example
    -------
    >>> text = front_matter({"task": "audio-classification", "dataset":
    ...     "Speech Commands v2"}, "lora", {"test": {"accuracy": "0.5"}})
    >>> meta = yaml.safe_load(text.strip("-\\n"))
    >>> meta["language"], meta["tags"][:3], meta["metrics"], meta["license"]
    ('en', ['speechbrain', 'audio-classification', 'lora'], ['accuracy'], 'apache-2.0')
    """
    task = run.get("task", "audio-classification")
    dataset = run.get("dataset")
    logged = {key for row in metrics.values() for key in row}
    meta = {"library_name": "speechbrain", "pipeline_tag": task}
    if dataset in LANGUAGES:
        meta["language"] = LANGUAGES[dataset]
    meta["tags"] = [
        "speechbrain",
        task,
        method,
        "speechbrain-moe",
        "peft",
        "pytorch",
    ]
    meta["license"] = LICENSE
    meta["datasets"] = [dataset] if dataset else []
    meta["metrics"] = [hub for key, hub in HUB_METRICS.items() if key in logged]
    body = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)
    return f"---\n{body}---\n"


def results_table(metrics, dataset):
    """The results section's lines: one row per test line of the packaged
    epoch and per logged metric, the number as logged; without a test line,
    a sentence saying so (never a number that is not in the log).

    Arguments
    ---------
    metrics : dict
        Row -> logged statistics (:func:`_metrics`).
    dataset : str
        The data set's name (first column).

    Returns
    -------
    list of str

    Example
    -------
    >>> results_table({"test": {"loss": "1.2", "accuracy": "7.50e-01"}}, "ESC-50")[2]
    '| ESC-50 | test | accuracy | 0.75 |'
    >>> results_table({"valid": {"accuracy": "0.5"}}, "ESC-50")[0][:32]
    'No test result in train_log.txt:'
    """
    rows = [
        f"| {dataset} | {row} | {key} | {_number(stats[key])} |"
        for row, stats in metrics.items()
        if row.startswith("test")
        for key in HUB_METRICS
        if key in stats
    ]
    if not rows:
        return [
            "No test result in train_log.txt: this checkpoint was not evaluated "
            "on the test set, so no test number is given. Evaluate it with "
            "`python train.py <hparams> --test_only` and package it again."
        ]
    return ["| data set | split | metric | value |", "|---|---|---|---|", *rows]


def unit_size(package_folder):
    """The files of the trainable-weights unit (every packaged file but the
    card) and their total size in bytes.

    Arguments
    ---------
    package_folder : str
        A packaged folder.

    Returns
    -------
    files : dict
        File name -> size in bytes.
    total : int
        Their sum.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> with open(os.path.join(folder, "backbone.ckpt"), "wb") as fout:
    ...     _ = fout.write(bytes(10))
    >>> unit_size(folder)
    ({'backbone.ckpt': 10}, 10)
    """
    files = {
        name: os.path.getsize(os.path.join(package_folder, name))
        for name in sorted(os.listdir(package_folder))
        if name != "README.md" and os.path.isfile(os.path.join(package_folder, name))
    }
    return files, sum(files.values())


def _size(nbytes):
    """Bytes as text (``2048`` -> ``2.0 KiB``)."""
    for unit in ("bytes", "KiB", "MiB"):
        if nbytes < 1024 or unit == "MiB":
            return f"{nbytes} bytes" if unit == "bytes" else f"{nbytes:.1f} {unit}"
        nbytes /= 1024
    return ""


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

    Example
    -------
    >>> import tempfile
    >>> from speechbrain.utils.checkpoints import Checkpoint
    >>> from speechbrain_moe.inference.classifier import PETLAudioClassifier
    >>> exp = tempfile.mkdtemp()
    >>> package, ckpt = os.path.join(exp, "inference_model"), os.path.join(exp, "CKPT+1")
    >>> os.makedirs(package); os.makedirs(ckpt)
    >>> record_run(exp, task="audio-classification", dataset="ESC-50")
    >>> with open(os.path.join(exp, "train_log.txt"), "w") as log:
    ...     _ = log.write("Epoch loaded: 1 - test loss: 1.31, test accuracy: 6.25e-01\\n")
    >>> with open(os.path.join(package, "inference.yaml"), "w") as yaml_file:
    ...     _ = yaml_file.write("sample_rate: 16000\\n")
    >>> path = model_card(exp, package, Checkpoint(ckpt, {}, {}), PETLAudioClassifier)
    >>> card = open(path).read()
    >>> card.startswith("---"), "## Results" in card, "ESC-50" in card
    (True, True, True)
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
    name = interface.__name__
    dataset = run.get("dataset", "(not recorded)")
    files, total = unit_size(package_folder)
    backbone_sources = ", ".join(f"`{src}`" for _, src in sources) or "(none)"
    method_name = os.path.basename(str(method)).split(".")[0]
    papers = METHOD_BIBTEX.get(method_name, [])
    lines = [
        front_matter(run, method_name, metrics),
        f"# {method} on {dataset} (speechbrain-moe)",
        "",
        "| | |\n|---|---|",
        *[f"| {key} | {value} |" for key, value in rows.items()],
        "",
        "## Results",
        "",
        *results_table(metrics, dataset),
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
        f"from speechbrain_moe.inference import {name}",
        f'model = {name}.from_hparams(source="<this folder or hub id>")',
        interface.USAGE,
        "```",
        "",
        "Install: `pip install speechbrain-moe` (it installs SpeechBrain and "
        "transformers). On a GPU:",
        "",
        "```python",
        f'model = {name}.from_hparams(source="<this folder or hub id>", '
        'run_opts={"device": "cuda"})',
        "```",
        "",
        "## Trainable-weights unit",
        "",
        f"This folder is the unit that moves: {len(files)} files, {_size(total)} "
        f"({total} bytes) in all: "
        + ", ".join(f"`{n}` {_size(b)}" for n, b in files.items())
        + ". It holds the trained tensors only (adapters, trained norms, head) "
        f"and the method file; the frozen backbone ({backbone_sources}) is "
        "loaded from its source.",
        "",
        *(MOVE_SNIPPET if "backbone" in interface.LOADABLES else []),
        "## Limitations",
        "",
        f"This model was trained on {dataset} only, with the recipe's split and "
        "one seed; the numbers above are those of that run, and performance on "
        "other recordings, classes, languages or noise conditions is unknown. "
        "The adapters work only on the pretrained backbone recorded above (the "
        "same source and config); loading them onto another one is refused. "
        "Input longer than the backbone's maximum duration is cut. speechbrain-moe "
        "does not guarantee the performance of this model on any other data.",
        "",
        "## Citing",
        "",
        "```bibtex",
        "\n\n".join([*papers, SPEECHBRAIN_BIBTEX]),
        "```",
        "",
    ]
    path = os.path.join(package_folder, "README.md")
    with open(path, "w", encoding="utf-8") as fout:
        fout.write("\n".join(lines))
    return path
