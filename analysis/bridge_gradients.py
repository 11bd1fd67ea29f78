"""Gradient conflict between the tasks of an LLM-bridge run, at several points
of training, and the per-expert routing by task.

For a run of ``recipes/LibriSpeech/LLM_bridge`` (its ``output_folder``), the
model is rebuilt from the run's own ``inference.yaml``; for each point (the
initialisation, ``init``, or a checkpoint folder holding ``speech_llm.ckpt``)
the gradient of the training loss (target cross-entropy + the bridge's
auxiliary losses) with respect to the **bridge** parameters is taken on the
same fixed batches of every task. Reported per point:

* ``cosine``: the cosine between the tasks' mean gradients (negative:
  conflict, positive: the tasks pull the shared parameters the same way);
* ``within``: for each task, the cosine between the mean gradients of two
  disjoint halves of its batches, the value two samples of the *same* task
  reach (how much of a between-task value is sampling noise);
* ``components``: the between-task cosine restricted to each top-level part
  of the bridge (fuse layer, experts, router, aggregation, ...);
* ``routing``: for routed bridges, each expert's mean routing weight per task
  (:class:`~analysis.utilisation.UtilisationAccumulator`).

The MoE-Adapter paper reports -0.020 (dense adapter) and +0.029
(MoE-Adapter) between audio types. ``python -m analysis GRADIENTS
--experiment EXP --out OUT --checkpoints init EXP/save/CKPT+...`` runs this
for a bridge run.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import json
import os

import ruamel.yaml
import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml

from analysis.utilisation import UtilisationAccumulator
from speechbrain_moe.dataio import read_clip
from speechbrain_moe.lobes.speech_llm import target_nll
from speechbrain_moe.routing import record_routing, routed_modules

ASR = "asr"


def is_bridge_run(folder):
    """Whether ``folder`` is the output folder of an LLM-bridge run.

    Arguments
    ---------
    folder : str
        A recipe's ``output_folder``.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile
    >>> is_bridge_run(tempfile.mkdtemp())
    False
    """
    path = os.path.join(folder, "inference.yaml")
    if not os.path.isfile(path):
        return False
    with open(path) as fin:
        return "SpeechLLMTranscriber" in fin.read()


def run_settings(folder):
    """The plain settings of a run (``<folder>/hyperparams.yaml``, as
    SpeechBrain saved it with the command-line overrides applied).

    Arguments
    ---------
    folder : str
        A bridge run's ``output_folder``.

    Returns
    -------
    dict
        Top-level keys -> values (tags of built objects left unresolved).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "hyperparams.yaml"), "w").write(
    ...     "seed: 3\\nasr_prompt: Transcribe.\\nsplits: [a, b]\\n")
    >>> settings = run_settings(folder)
    >>> settings["seed"], settings["splits"]
    (3, ['a', 'b'])
    """
    path = os.path.join(folder, "hyperparams.yaml")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: --experiment must be the output_folder of a "
            "recipes/LibriSpeech/LLM_bridge run (SpeechBrain writes it there)."
        )
    with open(path) as fin:
        tree = ruamel.yaml.YAML(typ="rt").load(fin)
    return {str(k): _plain(v) for k, v in tree.items()}


def _plain(value):
    """A ruamel value as plain Python (lists, dicts, scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, (bool, int, float, str)) or value is None:
        return type(value)(value) if value is not None else None
    return getattr(value, "value", str(value))


def load_bridge_model(folder, device="cpu", seed=None):
    """The run's speech-LLM (untrained: load a point with
    :func:`load_point`) and tokenizer, from ``<folder>/inference.yaml``.

    Arguments
    ---------
    folder : str
        A bridge run's ``output_folder``.
    device : str
        Where to run.
    seed : int, optional
        Seeds the random draw of the untrained bridge (the ``init`` point),
        so that every analysis of a run starts from the same initialisation
        (None: unseeded, a new draw each call). It is a draw with the run's
        seed, not necessarily the training run's own initial weights.

    Returns
    -------
    speech_llm : speechbrain_moe.lobes.speech_llm.SpeechLLM
    tokenizer : transformers tokenizer
    """
    if seed is not None:
        sb.utils.seed_everything(seed)
    with open(os.path.join(folder, "inference.yaml")) as fin:
        hparams = load_hyperpyyaml(fin, {"inference_folder": os.path.abspath(folder)})
    model = hparams["speech_llm"].to(device)
    model.eval()
    return model, hparams["tokenizer"]


def load_point(model, point, initial_state):
    """Puts the model at one point of training.

    Arguments
    ---------
    model : SpeechLLM
        The model.
    point : str
        ``init`` (the state the model was built in) or a checkpoint folder
        holding ``speech_llm.ckpt``.
    initial_state : dict
        :meth:`~speechbrain_moe.recoverables.TrainableState.
        trainable_state_dict` taken right after building.
    """
    if point == "init":
        model.load_state_dict(initial_state, strict=False)
        return
    path = os.path.join(point, "speech_llm.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} does not exist: --checkpoints takes 'init' or checkpoint "
            "folders of the run (its save/CKPT+... folders) holding speech_llm.ckpt."
        )
    model.load_trainable(path)


def point_step(point):
    """The optimizer step of a checkpoint folder (0 for ``init``): the step
    count the optimizer's state holds (``optimizer.ckpt``), which runs on
    across epochs; the epochs finished from the epoch counter; and the steps
    into the epoch from the training loader's recovery file. ``step`` falls
    back to the steps into the epoch when the folder has no optimizer state
    (the same value within the first epoch only). None when nothing says.

    Arguments
    ---------
    point : str
        ``init`` or a checkpoint folder.

    Returns
    -------
    dict
        ``step`` (optimizer steps since the start of training, or None),
        ``epoch`` (the epoch counter, or None) and ``epoch_step`` (steps into
        the epoch, or None; absent for ``init``).

    Example
    -------
    >>> point_step("init")
    {'step': 0, 'epoch': 0}
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()  # no optimizer state: steps into the epoch
    >>> _ = open(os.path.join(folder, "dataloader-TRAIN.ckpt"), "w").write("36")
    >>> _ = open(os.path.join(folder, "counter.ckpt"), "w").write("2")
    >>> point_step(folder)
    {'step': 36, 'epoch': 2, 'epoch_step': 36}
    """
    if point == "init":
        return {"step": 0, "epoch": 0}
    info = {"step": None, "epoch": None, "epoch_step": None}
    for name in os.listdir(point):
        path = os.path.join(point, name)
        if name.startswith("dataloader-TRAIN"):
            with open(path) as fin:
                text = fin.read().strip()
            info["epoch_step"] = int(text) if text.isdigit() else None
        elif name == "counter.ckpt":
            with open(path) as fin:
                text = fin.read().strip()
            info["epoch"] = int(text) if text.isdigit() else None
    info["step"] = _optimizer_step(os.path.join(point, "optimizer.ckpt"))
    if info["step"] is None:
        info["step"] = info["epoch_step"]
    return info


def _optimizer_step(path):
    """The step count of an optimizer state file (the largest over its
    parameters), or None when the file is absent or holds no step."""
    if not os.path.isfile(path):
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    steps = [
        float(entry["step"])
        for entry in state.get("state", {}).values()
        if isinstance(entry, dict) and "step" in entry
    ]
    return int(max(steps)) if steps else None


def task_batches(folder, settings, tokenizer, split="train", batch_size=8, batches=4):
    """Fixed batches of every task of a run's split.

    The manifests are the run's own: ``<csv_folder>/<split>.csv`` of its
    LibriSpeech splits (``train_splits``, ``dev_splits`` or ``test_splits``)
    and its ``cls_<split>_csv``. The first ``batch_size * batches`` items of
    each task, in a shuffled order fixed by the run's seed, so every point
    of training sees the same samples.

    Arguments
    ---------
    folder : str
        A bridge run's ``output_folder``.
    settings : dict
        :func:`run_settings`.
    tokenizer : transformers tokenizer
        The run's.
    split : str
        ``train``, ``valid`` or ``test``.
    batch_size : int
        Samples per batch.
    batches : int
        Batches per task (>= 2 for the within-task halves).

    Returns
    -------
    dict
        Task -> list of :class:`speechbrain.dataio.batch.PaddedBatch`.
    """
    key = {"train": "train_splits", "valid": "dev_splits", "test": "test_splits"}
    cls_key = {
        "train": "cls_train_csv",
        "valid": "cls_valid_csv",
        "test": "cls_test_csv",
    }
    items = {}
    csv_folder = settings.get("csv_folder") or folder
    for name in settings[key[split]]:
        with open(os.path.join(csv_folder, f"{name}.csv"), newline="") as fin:
            for row in csv.DictReader(fin):
                items.setdefault(ASR, []).append((row["ID"], row["wav"], row["wrd"]))
    cls_csv = settings.get(cls_key[split])
    if cls_csv:
        task = settings["cls_task"]
        with open(cls_csv, newline="") as fin:
            for row in csv.DictReader(fin):
                text = row["class_name"].replace("_", " ")
                items.setdefault(task, []).append((row["ID"], row["wav"], text))
    prompts = {
        ASR: settings["asr_prompt"],
        settings.get("cls_task"): settings["cls_prompt"],
    }
    generator = torch.Generator().manual_seed(int(settings.get("seed", 0)))
    eos = tokenizer.eos_token_id
    result = {}
    for task, rows in sorted(items.items()):
        order = torch.randperm(len(rows), generator=generator).tolist()
        chosen = [rows[i] for i in order[: batch_size * batches]]
        examples = []
        for utt_id, wav, text in chosen:
            prompt = tokenizer(prompts[task], add_special_tokens=False).input_ids
            target = tokenizer(text, add_special_tokens=False).input_ids + [eos]
            examples.append(
                {
                    "id": utt_id,
                    "task": task,
                    "sig": read_clip(
                        wav, settings["sample_rate"], settings["max_audio_seconds"]
                    ),
                    "prompt_tokens": torch.LongTensor(prompt),
                    "target_tokens": torch.LongTensor(target),
                }
            )
        result[task] = [
            sb.dataio.batch.PaddedBatch(examples[i : i + batch_size])
            for i in range(0, len(examples), batch_size)
        ]
    return result


def bridge_loss(model, batch, device="cpu"):
    """The recipe's training loss of one batch: target cross-entropy plus the
    bridge's auxiliary losses.

    Arguments
    ---------
    model : SpeechLLM
        The model.
    batch : PaddedBatch
        From :func:`task_batches`.
    device : str
        Where the model is.

    Returns
    -------
    torch.Tensor
        Scalar.
    """
    batch = batch.to(device)
    wavs, wav_lens = batch.sig
    prompt, prompt_lens = batch.prompt_tokens
    target, target_lens = batch.target_tokens
    out = model(wavs, wav_lens, prompt, prompt_lens, target, target_lens)
    nll = target_nll(out["logits"], out["targets"], out["target_mask"])
    return nll + out["aux_loss"]


def _cosine(a, b):
    """Cosine of two 1-D tensors (0 when one is zero)."""
    denominator = float(a.norm() * b.norm())
    return round(float(a @ b) / denominator, 6) if denominator > 0 else 0.0


def parameter_parts(module):
    """The top-level parts of a bridge and the parameters of each
    (``fuse``, ``aggregate`` ...; one level deeper inside a mixture or an
    MLP: ``moe.experts``, ``moe.router``, ``net.0``).

    Arguments
    ---------
    module : torch.nn.Module
        The bridge.

    Returns
    -------
    dict
        Part name -> list of parameters (trainable ones), in module order.

    Example
    -------
    >>> from speechbrain_moe.adapters.bridges import DenseProjector
    >>> sorted(parameter_parts(DenseProjector(4, 3, hidden_size=5)))
    ['net.0', 'net.2']
    """
    parts = {}
    for name, param in module.named_parameters():
        if not param.requires_grad:
            continue
        pieces = name.split(".")
        depth = 2 if pieces[0] in ("moe", "moa", "net") and len(pieces) > 2 else 1
        parts.setdefault(".".join(pieces[:depth]), []).append(param)
    return parts


def gradient_point(model, batches_by_task, device="cpu"):
    """Task gradients w.r.t. the bridge at the model's current state.

    Arguments
    ---------
    model : SpeechLLM
        The model, at the point to measure.
    batches_by_task : dict
        Task -> list of batches (:func:`task_batches`).
    device : str
        Where the model is.

    Returns
    -------
    dict
        ``cosine`` (task pair -> between-task cosine), ``within`` (task ->
        split-half cosine), ``components`` (part -> task pair -> cosine),
        ``loss`` (task -> mean loss), ``grad_norm`` (task -> norm of the mean
        gradient), ``routing`` (router -> task -> per-expert mean weight;
        routed bridges only), ``samples`` (task -> count).
    """
    parts = parameter_parts(model.bridge)
    params = [p for plist in parts.values() for p in plist]
    sizes = {name: sum(p.numel() for p in plist) for name, plist in parts.items()}
    accumulator = UtilisationAccumulator()
    routed = bool(list(routed_modules(model.bridge)))
    per_batch, losses, samples = {}, {}, {}
    with record_routing(model, accumulator), torch.enable_grad():
        for task, batches in batches_by_task.items():
            per_batch[task], total = [], 0.0
            for batch in batches:
                accumulator.set_groups(list(batch.task))
                loss = bridge_loss(model, batch, device)
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                per_batch[task].append(
                    torch.cat(
                        [
                            (g if g is not None else torch.zeros_like(p))
                            .reshape(-1)
                            .float()
                            .cpu()
                            for g, p in zip(grads, params)
                        ]
                    )
                )
                total += float(loss.detach())
            losses[task] = round(total / max(len(batches), 1), 6)
            samples[task] = sum(len(b) for b in batches)
    tasks = sorted(per_batch)
    means = {t: torch.stack(per_batch[t]).double().mean(0) for t in tasks}
    pairs = [(a, b) for i, a in enumerate(tasks) for b in tasks[i + 1 :]]
    cosine = {f"{a}|{b}": _cosine(means[a], means[b]) for a, b in pairs}
    within = {}
    for task in tasks:
        grads = per_batch[task]
        half = len(grads) // 2
        if half >= 1:
            first = torch.stack(grads[:half]).double().mean(0)
            second = torch.stack(grads[half:]).double().mean(0)
            within[task] = _cosine(first, second)
    components, start = {}, 0
    for name, size in sizes.items():
        components[name] = {
            f"{a}|{b}": _cosine(
                means[a][start : start + size], means[b][start : start + size]
            )
            for a, b in pairs
        }
        start += size
    result = {
        "cosine": cosine,
        "within": within,
        "components": components,
        "component_sizes": sizes,
        "loss": losses,
        "grad_norm": {t: round(float(means[t].norm()), 6) for t in tasks},
        "samples": samples,
    }
    if routed:
        result["routing"] = accumulator.summary()["by_group"]
    return result


def bridge_gradient_analysis(
    folder,
    out,
    points=("init",),
    split="train",
    batches=4,
    batch_size=8,
    device="cpu",
):
    """Runs :func:`gradient_point` at every point; writes
    ``<out>/bridge_gradients.json`` (and keeps what was measured so far there
    after each point).

    Arguments
    ---------
    folder : str
        A bridge run's ``output_folder``.
    out : str
        Output folder.
    points : list of str
        ``init`` and/or checkpoint folders, in training order.
    split : str
        Which data (``train``, ``valid``, ``test``).
    batches : int
        Batches per task.
    batch_size : int
        Samples per batch.
    device : str
        Where to run.

    Returns
    -------
    dict
        ``bridge``, ``bridge_settings``, ``split``, ``points`` (one entry per
        point: ``point``, ``step``, ``epoch`` and :func:`gradient_point`'s
        result).
    """
    settings = run_settings(folder)
    seed = settings.get("seed")
    model, tokenizer = load_bridge_model(
        folder, device, seed=int(seed) if seed is not None else None
    )
    initial = model.trainable_state_dict()
    data = task_batches(folder, settings, tokenizer, split, batch_size, batches)
    os.makedirs(out, exist_ok=True)
    bridge = os.path.splitext(os.path.basename(str(settings["bridge"])))[0]
    result = {
        "experiment": os.path.abspath(folder),
        "bridge": bridge,
        "bridge_settings": model.bridge_settings,
        "bridge_parameters": sum(p.numel() for p in model.bridge.parameters()),
        "split": split,
        "batches_per_task": batches,
        "batch_size": batch_size,
        "points": [],
    }
    path = os.path.join(out, "bridge_gradients.json")
    for point in points:
        load_point(model, point, initial)
        entry = {
            "point": os.path.basename(os.path.normpath(point)),
            **point_step(point),
        }
        entry.update(gradient_point(model, data, device))
        result["points"].append(entry)
        with open(path, "w") as fout:
            json.dump(result, fout, indent=1)
    return result


def format_bridge_gradients(result):
    """One line per point of :func:`bridge_gradient_analysis`'s result.

    Arguments
    ---------
    result : dict
        Its result.

    Returns
    -------
    str

    Example
    -------
    >>> print(format_bridge_gradients({"bridge": "dense", "points": [
    ...     {"point": "init", "step": 0, "cosine": {"asr|sound": -0.0213},
    ...      "within": {"asr": 0.51, "sound": 0.73}}]}))
    dense init (step 0): cosine asr|sound -0.021; within asr 0.510, sound 0.730
    """
    lines = []
    for entry in result["points"]:
        between = ", ".join(f"{k} {v:.3f}" for k, v in entry["cosine"].items())
        within = ", ".join(f"{k} {v:.3f}" for k, v in entry["within"].items())
        lines.append(
            f"{result['bridge']} {entry['point']} (step {entry['step']}): cosine "
            f"{between}; within {within}"
        )
    return "\n".join(lines)
