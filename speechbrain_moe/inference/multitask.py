"""Several trained tasks on one frozen backbone (peft's several named
adapters on one base model, and its mixed-adapter batches).

Each task is a packaged folder of a ``recipes/*/PETL`` run (or the run's
output folder): its adapters, head and label encoder form a named set. The
frozen backbone is loaded once; each task adds its trained tensors only::

    from speechbrain_moe.inference import MultiTaskClassifier
    model = MultiTaskClassifier.from_hparams(
        sources={"esc50": "results/ESC50/...", "kws": "results/GSC/..."}
    )
    log_probs, score, index, label = model.classify_batch(wavs, task="esc50")
    log_probs, score, index, label = model.classify_batch(
        wavs, wav_lens, tasks=["esc50", "kws", "kws"]   # one task per clip
    )

A mixed batch runs the frozen layers once for all its clips and each task's
adapters on its own clips only (:mod:`speechbrain_moe.petl.task_switch`);
every clip gets the prediction its own single-task model gives.

Authors
 * speechbrain-moe contributors 2026
"""

import gc
import importlib
import json
import os

import torch

from speechbrain_moe.inference.adapters import backbone_differences, recorded_backbone
from speechbrain_moe.inference.classifier import PETLAudioClassifier
from speechbrain_moe.inference.interfaces import ExperimentInterface
from speechbrain_moe.lobes.base import quiet_loading
from speechbrain_moe.petl.task_switch import (
    TaskMismatch,
    attach_task,
    check_task_name,
    detach_task,
    rows_of,
    task_rows,
)

#: Feature-extractor files of a backbone source that must agree across tasks.
FEATURE_FILES = ("preprocessor_config.json",)


def _inference_folder(source, model):
    """The packaged folder a ``PETLAudioClassifier`` was loaded from."""
    folder = getattr(model.hparams, "inference_folder", None)
    if folder:
        return str(folder)
    if os.path.isdir(os.path.join(str(source), "save")):
        return os.path.join(str(source), "inference_model")
    return str(source)


def _feature_settings(source):
    """``{file: content}`` of a source folder's feature-extractor files."""
    settings = {}
    for name in FEATURE_FILES:
        path = os.path.join(str(source), name)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as fin:
                settings[name] = json.load(fin)
    return settings


def build_shared_backbone(folder):
    """The plain (not adapted) backbone lobe a packaged folder records, as
    its ``inference.yaml`` builds it before the method is applied.

    Arguments
    ---------
    folder : str
        A packaged folder.

    Returns
    -------
    speechbrain_moe.lobes.base.Backbone

    Example
    -------
    >>> import tempfile
    >>> from transformers import ASTConfig, ASTModel
    >>> source, folder = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, max_length=100)).save_pretrained(source)
    >>> _ = open(os.path.join(folder, "inference.yaml"), "w").write(
    ...     "backbone: !new:speechbrain_moe.lobes.ast.AST\\n"
    ...     f"    source: {source}\\n    max_frames: 100\\n")
    >>> type(build_shared_backbone(folder)).__name__
    'AST'
    """
    lobe, arguments = recorded_backbone(folder)
    module, _, name = lobe.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as err:
        raise ValueError(
            f"{folder}/inference.yaml builds its backbone with {lobe}, which cannot "
            f"be imported ({err}). Install the speechbrain-moe version the task was "
            "packaged with."
        ) from err
    with quiet_loading():
        return cls(**arguments)


class MultiTaskClassifier(ExperimentInterface):
    """Classifies audio for several tasks with one frozen backbone.

    ``modules``: ``backbone`` (the shared lobe, holding every task's
    adapters behind per-task switches) and ``heads`` (a ``ModuleDict``, one
    head per task); ``hparams``: ``label_encoders`` (task -> encoder) and
    ``sample_rate``. Build it with :meth:`from_hparams`; add and remove
    tasks with :meth:`load_task` and :meth:`unload_task` (peft's
    ``load_adapter`` / ``delete_adapter``).

    Tasks share one forward when their methods add modules beside the frozen
    ones: bottleneck and Convpass adapters, the mixtures (Soft-MoA,
    Dense-MoA, the top-k MoE-Adapter), unmerged LoRA and the linear probe;
    placements (Pfeiffer, Houlsby) and modes (parallel, sequential) may
    differ between tasks: where a task has no adapter, it gets the frozen
    module. Deep prompts, prefix tuning, BitFit, full fine-tuning and merged
    LoRA change the frozen computation itself and are refused, as are tasks
    trained on another backbone (lobe, source, config, lobe or
    feature-extractor settings, sample rate).

    Arguments
    ---------
    *args
        As :class:`speechbrain.inference.interfaces.Pretrained`.
    **kwargs
        As :class:`speechbrain.inference.interfaces.Pretrained`.

    Example
    -------
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> class Backbone(torch.nn.Module):
    ...     def forward(self, wavs, wav_lens=None):
    ...         return wavs[:, :2]
    >>> encoders = {}
    >>> for task, labels in {"animals": ["dog", "cat"], "words": ["yes", "no"]}.items():
    ...     encoders[task] = CategoricalEncoder()
    ...     encoders[task].update_from_iterable(labels)
    >>> heads = torch.nn.ModuleDict({"animals": torch.nn.Identity(),
    ...     "words": torch.nn.Linear(2, 2)})
    >>> with torch.no_grad():
    ...     _ = heads["words"].weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    ...     _ = heads["words"].bias.zero_()
    >>> model = MultiTaskClassifier(modules={"backbone": Backbone(), "heads": heads},
    ...     hparams={"label_encoders": encoders, "sample_rate": 16000})
    >>> wavs = torch.tensor([[0.0, 5.0], [0.0, 5.0]])
    >>> model.classify_batch(wavs, tasks=["animals", "words"])[3]
    ['cat', 'yes']
    """

    MODULES_NEEDED = ["backbone", "heads"]
    HPARAMS_NEEDED = ["label_encoders", "sample_rate"]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        #: Task -> its packaged folder (None: given as modules).
        self.folders = {task: None for task in self.mods.heads}
        #: Task -> module paths of its parts in the shared backbone.
        self.sites = {task: [] for task in self.mods.heads}
        self.check_source = True
        #: The run options each task's folder is loaded with.
        self.task_run_opts = {}

    @classmethod
    def from_hparams(cls, sources, savedir=None, run_opts=None, check_source=True):
        """Loads several tasks onto one backbone.

        The first task's recorded backbone is built once (frozen weights
        from its source); every task is then loaded as its own
        ``PETLAudioClassifier`` (its folder checked and verified as usual),
        checked against the shared backbone and attached to it: its frozen
        tensors are tied to the shared ones and freed, so the loading peaks
        at two backbones and then holds one.

        Arguments
        ---------
        sources : dict
            Task name -> a recipe's output folder or a packaged folder (as
            ``PETLAudioClassifier.from_hparams(source=...)`` takes it), in
            the order the tasks are listed by :attr:`tasks`.
        savedir : str, optional
            Each task's files are collected into ``<savedir>/<task>`` (None:
            each folder's ``collected``).
        run_opts : dict, optional
            E.g. ``{"device": "cuda"}``, as SpeechBrain takes them.
        check_source : bool
            False accepts tasks whose recorded sources are different folders
            of the same config and feature-extractor settings (copies of the
            same weights); their frozen tensors must still be equal.

        Returns
        -------
        MultiTaskClassifier

        Example
        -------
        >>> MultiTaskClassifier.from_hparams(sources={})
        Traceback (most recent call last):
        ...
        ValueError: MultiTaskClassifier.from_hparams needs sources={task: folder, ...} ...
        """
        if not isinstance(sources, dict) or not sources:
            raise ValueError(
                "MultiTaskClassifier.from_hparams needs sources={task: folder, ...} "
                "with at least one task, e.g. sources={'esc50': "
                "'results/ESC50/.../fold1', 'kws': 'results/GSC/...'}; got "
                f"{sources!r}."
            )
        for task in sources:
            check_task_name(task)
        first, first_source = next(iter(sources.items()))
        single = cls._load_single(first, first_source, savedir, run_opts)
        folder = _inference_folder(first_source, single)
        backbone = build_shared_backbone(folder)
        model = cls(
            modules={"backbone": backbone, "heads": torch.nn.ModuleDict()},
            hparams={"label_encoders": {}, "sample_rate": single.hparams.sample_rate},
            run_opts=run_opts,
        )
        model.check_source = check_source
        model.task_run_opts = dict(run_opts or {})
        model._attach(first, folder, single)
        del single
        for task, source in list(sources.items())[1:]:
            model.load_task(task, source, savedir=savedir)
        return model

    @staticmethod
    def _load_single(task, source, savedir, run_opts):
        """One task's ``PETLAudioClassifier`` (its own backbone, for now)."""
        kwargs = {"run_opts": run_opts}
        if savedir is not None:
            kwargs["savedir"] = os.path.join(str(savedir), task)
        return PETLAudioClassifier.from_hparams(source=str(source), **kwargs)

    @property
    def tasks(self):
        """The names of the loaded tasks, in loading order.

        Returns
        -------
        list of str

        Example
        -------
        >>> from speechbrain.dataio.encoder import CategoricalEncoder
        >>> model = MultiTaskClassifier(modules={"backbone": torch.nn.Identity(),
        ...     "heads": torch.nn.ModuleDict({"kws": torch.nn.Identity()})},
        ...     hparams={"label_encoders": {"kws": CategoricalEncoder()},
        ...     "sample_rate": 16000})
        >>> model.tasks
        ['kws']
        """
        return list(self.mods.heads)

    def load_task(self, task, source, savedir=None):
        """Adds one task (peft's ``load_adapter``): loads its folder and
        attaches its adapters, head and label encoder to the shared backbone.

        Arguments
        ---------
        task : str
            Its name (a new one).
        source : str
            A recipe's output folder or a packaged folder.
        savedir : str, optional
            Its files are collected into ``<savedir>/<task>``.

        Example
        -------
        >>> from speechbrain.dataio.encoder import CategoricalEncoder
        >>> model = MultiTaskClassifier(modules={"backbone": torch.nn.Identity(),
        ...     "heads": torch.nn.ModuleDict({"kws": torch.nn.Identity()})},
        ...     hparams={"label_encoders": {"kws": CategoricalEncoder()},
        ...     "sample_rate": 16000})
        >>> model.load_task("kws", "/no/such/folder")
        Traceback (most recent call last):
        ...
        ValueError: Task 'kws' is already loaded ...
        """
        check_task_name(task)
        if task in self.mods.heads:
            raise ValueError(
                f"Task {task!r} is already loaded (tasks: {self.tasks}). Give the "
                f"new one another name, or unload_task({task!r}) first."
            )
        run_opts = {**self.task_run_opts, "device": str(self.device)}
        single = self._load_single(task, source, savedir, run_opts)
        folder = _inference_folder(source, single)
        self._attach(task, folder, single)

    def _check_backbone(self, task, folder, single):
        """Refuses a task trained on another backbone than the shared one."""
        backbone = self.mods.backbone
        differences = backbone_differences(folder, backbone)
        if not self.check_source:
            differences = [d for d in differences if not d.startswith("source:")]
        _, arguments = recorded_backbone(folder)
        source = getattr(getattr(backbone, backbone.petl_root_name), "config", None)
        source = getattr(source, "_name_or_path", None)
        recorded = arguments.get("source")
        if source and recorded and os.path.isdir(str(source)):
            mine, theirs = _feature_settings(recorded), _feature_settings(source)
            differences += [
                f"{name}: {mine.get(name)} -> {theirs.get(name)}"
                for name in sorted(set(mine) | set(theirs))
                if mine.get(name) != theirs.get(name)
            ]
        rate = single.hparams.sample_rate
        if rate != self.hparams.sample_rate:
            differences.append(f"sample_rate: {rate} -> {self.hparams.sample_rate}")
        if differences:
            shared = [t for t in self.tasks] or ["the first task"]
            raise TaskMismatch(
                f"Task {task!r} ({folder}) was trained on another backbone than the "
                f"shared one (of {', '.join(shared)}): {'; '.join(differences)} "
                "(recorded -> shared). Tasks share a backbone only when they were "
                "trained on the same lobe, source, config and lobe/feature-extractor "
                "settings; serve this one with its own PETLAudioClassifier."
                "from_hparams(source=...), or load it in another "
                "MultiTaskClassifier (check_source=False accepts a copy of the same "
                "weights under another path)."
            )

    def _attach(self, task, folder, single):
        """Checks a loaded task and makes it one of this model's tasks."""
        self._check_backbone(task, folder, single)
        paths = attach_task(self.mods.backbone, task, single.mods.backbone)
        head = single.mods.classifier.to(self.device).eval()
        self.mods.heads[task] = head
        self.hparams.label_encoders[task] = single.hparams.label_encoder
        self.mods.backbone.to(self.device).eval()
        self.folders[task] = folder
        self.sites[task] = paths
        # The task's own copy of the frozen weights (a memory-mapped file
        # when loaded from safetensors) is released now, not at some later
        # collection of the loaded model's reference cycles.
        gc.collect()

    def unload_task(self, task):
        """Removes one task (peft's ``delete_adapter``): its adapters leave
        the shared backbone, its head and label encoder are dropped.

        Arguments
        ---------
        task : str
            A loaded task.

        Example
        -------
        >>> from speechbrain.dataio.encoder import CategoricalEncoder
        >>> model = MultiTaskClassifier(modules={"backbone": torch.nn.Identity(),
        ...     "heads": torch.nn.ModuleDict({"kws": torch.nn.Identity()})},
        ...     hparams={"label_encoders": {"kws": CategoricalEncoder()},
        ...     "sample_rate": 16000})
        >>> model.unload_task("kws")
        >>> model.tasks
        []
        """
        self._check_tasks([task])
        detach_task(self.mods.backbone, task, self.sites.pop(task))
        del self.mods.heads[task]
        del self.hparams.label_encoders[task]
        self.folders.pop(task, None)

    def _check_tasks(self, tasks):
        """Refuses unknown task names."""
        unknown = sorted({t for t in tasks if t not in self.mods.heads})
        if unknown:
            raise ValueError(
                f"Unknown task(s) {unknown}: the loaded tasks are {self.tasks}. "
                "Name one of them, or add it with load_task(name, source)."
            )

    def classify_batch(self, wavs, wav_lens=None, task=None, tasks=None):
        """Classifies a batch of waveforms, all for one task or each clip
        for its own.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            As :meth:`PETLAudioClassifier.classify_batch` takes them.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], one per clip (default: all 1).
        task : str, optional
            Every clip for this task (the default when one task is loaded).
        tasks : list of str, optional
            One task per clip (instead of ``task``): the frozen layers run
            once for the batch, each task's adapters and head on its clips.

        Returns
        -------
        out_prob : torch.Tensor or list of torch.Tensor
            With ``task``: ``[batch, classes]`` log-posteriors; with
            ``tasks``: one ``[classes]`` tensor per clip (tasks may have
            different numbers of classes).
        score : torch.Tensor
            ``[batch]`` log-posterior of the best class.
        index : torch.Tensor
            ``[batch]`` index of the best class (in its task's labels).
        text_lab : list of str
            Its label.
        """
        wavs, wav_lens = self.check_batch(wavs, wav_lens)
        batch = wavs.shape[0]
        if (task is None) == (tasks is None):
            if task is None and len(self.tasks) == 1:
                task = self.tasks[0]
            else:
                raise ValueError(
                    "Give classify_batch either task='<name>' (every clip) or "
                    "tasks=[...] (one name per clip), not "
                    f"{'both' if task is not None else 'neither'}; the loaded tasks "
                    f"are {self.tasks}."
                )
        if isinstance(tasks, str):
            raise ValueError(
                f"tasks={tasks!r} is one name: give task={tasks!r} for every clip, or "
                "tasks=[...] with one name per clip."
            )
        per_clip = tasks is not None
        tasks = list(tasks) if per_clip else [task] * batch
        if len(tasks) != batch:
            raise ValueError(
                f"tasks names {len(tasks)} task(s) for a batch of {batch} clip(s): "
                "give one task per clip (wavs.shape[0] names)."
            )
        self._check_tasks(tasks)
        rows = rows_of(tasks, device=wavs.device)
        with torch.no_grad(), task_rows(rows):
            embeddings = self.mods.backbone(wavs, wav_lens)
            out_prob = [None] * batch
            for name, index in rows.items():
                chosen = embeddings if index is None else embeddings[index]
                logits = self.mods.heads[name](chosen)
                probs = torch.log_softmax(logits, dim=-1)
                order = range(batch) if index is None else index.tolist()
                for row, prob in zip(order, probs):
                    out_prob[row] = prob
        scores, indices = zip(*(torch.max(p, dim=-1) for p in out_prob))
        score, index = torch.stack(scores), torch.stack(indices)
        text_lab = [
            self.hparams.label_encoders[name].decode_ndim(int(i))
            for name, i in zip(tasks, index)
        ]
        if not per_clip:
            out_prob = torch.stack(out_prob)
        return out_prob, score, index, text_lab

    def classify_file(self, path, task=None):
        """Classifies one audio file for one task.

        Arguments
        ---------
        path : str
            Audio file (any rate; resampled, mixed down, cut to the
            backbone's maximum duration with a warning).
        task : str, optional
            The task (default: the only one loaded).

        Returns
        -------
        tuple
            As :meth:`classify_batch`, for a batch of one.
        """
        max_seconds = getattr(self.mods.backbone, "max_duration", None)
        return self.classify_batch(self.read_file(path, max_seconds), task=task)

    def forward(self, wavs, wav_lens=None, task=None, tasks=None):
        """Same as :meth:`classify_batch`.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            The waveforms.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].
        task : str, optional
            One task for every clip.
        tasks : list of str, optional
            One task per clip.

        Returns
        -------
        tuple
            As :meth:`classify_batch`.
        """
        return self.classify_batch(wavs, wav_lens, task=task, tasks=tasks)
