"""One frozen backbone serving the adapters of several tasks, each clip of a
batch with the adapters of its own task (peft's mixed-adapter batches, the
``adapter_names=[...]`` of its ``forward``).

A task is a backbone adapted on its own (by :func:`~speechbrain_moe.petl.apply_method`
or :func:`~speechbrain_moe.inference.adapters.load_adapters`) from the same
pretrained source as the shared one. :func:`attach_task` compares the two
trees module by module: every frozen tensor of the task is tied to the shared
backbone's (so the task costs its trained tensors only), and every place
where the task differs becomes a :class:`TaskSwitch` in the shared backbone:

* an adapter placement (:class:`~speechbrain_moe.placement.ParallelAdapter`,
  :class:`~speechbrain_moe.placement.SequentialAdapter`), SpeechBrain's
  ``LoRA`` or a mixture of LoRA experts
  (:class:`~speechbrain_moe.adapters.lora_experts.LoRAExperts`) around a module: the frozen module runs once for the whole batch,
  the task's adapter (or LoRA update) only on the task's rows, its output
  added to theirs;
* a normalisation layer the task trained (``train_norms``): the task's copy
  runs on the task's rows, the frozen one on the others.

A place where a task has no adapter is the frozen module for that task, so
tasks of different methods (adapter, LoRA, the mixtures, linear probe),
placements (Pfeiffer, Houlsby) and modes (parallel, sequential) share one
forward. Methods that change the frozen computation for everyone cannot:
deep prompts (tokens added to the sequence), prefix tuning (keys and values
added to the attention), BitFit and full fine-tuning (the frozen weights
themselves trained) and a merged LoRA (its update folded into the weights)
are refused by :func:`attach_task`, naming the tensor or module and why.

Which rows belong to which task travels as the token mask does
(:mod:`speechbrain_moe.routing`): the caller opens ``with task_rows(rows):``
around the forward, each switch reads :func:`current_task_rows`. Nothing is
stored on the modules between calls. Each task's adapters (and their
routers) see only the task's rows, so a clip's output does not depend on the
other clips of the batch.

Authors
 * speechbrain-moe contributors 2026
"""

import contextvars
import re
from contextlib import contextmanager

import torch
import torch.nn as nn
from speechbrain.nnet.adapters import AdaptedModel, LoRA
from torch.nn.utils import parametrize

from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.petl.prefix import PrefixAttention
from speechbrain_moe.petl.prompt import DeepPromptLayer
from speechbrain_moe.placement import ParallelAdapter, SequentialAdapter, first_input
from speechbrain_moe.routing import current_token_mask

#: Task name -> ``[rows]`` indices of its clips (None: every clip) of the
#: batch the innermost :func:`task_rows` block encodes.
_TASK_ROWS = contextvars.ContextVar("speechbrain_moe_task_rows", default=None)

#: The wrappers whose output is ``frozen output + update`` (what a switch can
#: compute once for the batch and then per task).
WRAPPER_KINDS = (
    (ParallelAdapter, "parallel"),
    (SequentialAdapter, "sequential"),
    (LoRAExperts, "lora_experts"),
)

#: Layers a task may own a trained copy of (``train_norms``).
NORMS = (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)

#: Modules that change the frozen computation for every clip, and why.
UNSHAREABLE = {
    DeepPromptLayer: (
        "deep prompt tuning prepends learned tokens to the sequence every layer "
        "attends over, so the frozen layers compute something else for its clips"
    ),
    PrefixAttention: (
        "prefix tuning adds learned keys and values to the attention itself, so "
        "the frozen attention computes something else for its clips"
    ),
}

#: What a switch can hold for a task.
KINDS = ("parallel", "sequential", "lora", "lora_experts", "module")

TASK_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")

FIX = (
    "Serve that task with its own model (PETLAudioClassifier.from_hparams("
    "source=<its folder>)), or train it with a method that adds modules "
    "beside the frozen ones (adapter, convpass, lora, soft_moa, dense_moa, "
    "moe_adapter, linear)."
)


class TaskMismatch(ValueError):
    """A task that cannot share the backbone (the message says why and what
    to do).

    Example
    -------
    >>> str(TaskMismatch("why"))
    'why'
    """


def check_task_name(name):
    """Refuses a task name that cannot name a set of modules.

    Arguments
    ---------
    name : str
        A task name (a letter or ``_`` first, then letters, digits, ``_``
        and ``-``).

    Returns
    -------
    str
        ``name``.

    Example
    -------
    >>> check_task_name("esc50")
    'esc50'
    >>> check_task_name("esc.50")
    Traceback (most recent call last):
    ...
    ValueError: Task name 'esc.50' is not usable: ...
    """
    if not isinstance(name, str) or not TASK_NAME.match(name):
        raise ValueError(
            f"Task name {name!r} is not usable: a task name starts with a letter "
            "or '_' and holds letters, digits, '_' and '-' only (it names the "
            "task's modules). Rename it, e.g. 'esc50' or 'speech_commands'."
        )
    return name


@contextmanager
def task_rows(rows):
    """Makes ``rows`` the task assignment of the task switches that run in
    the block.

    Arguments
    ---------
    rows : dict
        Task name -> ``[rows]`` long tensor of the batch rows of its clips,
        or None for every row (see :func:`rows_of`).

    Yields
    ------
    dict
        ``rows``.

    Example
    -------
    >>> with task_rows({"kws": None}):
    ...     current_task_rows()
    {'kws': None}
    >>> current_task_rows() is None
    True
    """
    token = _TASK_ROWS.set(dict(rows))
    try:
        yield rows
    finally:
        _TASK_ROWS.reset(token)


def current_task_rows():
    """The assignment of the innermost :func:`task_rows` block (None outside).

    Returns
    -------
    dict or None

    Example
    -------
    >>> current_task_rows() is None
    True
    """
    return _TASK_ROWS.get()


def rows_of(tasks, device=None):
    """The assignment of a batch whose clip ``i`` belongs to ``tasks[i]``.

    Arguments
    ---------
    tasks : list of str
        One task per clip.
    device : torch.device, optional
        Where the row indices live (the batch's device).

    Returns
    -------
    dict
        Task -> ``[rows]`` long tensor, in order of first appearance; a task
        holding every clip maps to None (the switches then run it on the
        whole batch, exactly as its own model does).

    Example
    -------
    >>> rows_of(["a", "b", "a"])
    {'a': tensor([0, 2]), 'b': tensor([1])}
    >>> rows_of(["a", "a"])
    {'a': None}
    """
    rows = {}
    for i, task in enumerate(tasks):
        rows.setdefault(task, []).append(i)
    if len(rows) == 1:
        return {task: None for task in rows}
    return {
        task: torch.tensor(index, dtype=torch.long, device=device)
        for task, index in rows.items()
    }


class TaskSwitch(nn.Module):
    """A frozen module of a shared backbone and what each task puts there.

    ``tasks[name]`` is the task's wrapper (a placement or ``LoRA`` around its
    own tied copy of the frozen module, whose adapter part is used) or its
    trained copy of a normalisation layer; ``kinds[name]`` says which
    (``parallel``, ``sequential``, ``lora``, ``lora_experts`` or ``module``). The forward reads
    the rows of each task from :func:`current_task_rows`: the frozen module
    runs once on the whole batch, then each task present here changes its
    own rows only. A task without an entry gets the frozen output.

    Arguments
    ---------
    shared : torch.nn.Module
        The frozen module of the shared backbone.

    Example
    -------
    >>> from speechbrain.nnet.adapters import LoRA
    >>> frozen = torch.nn.Linear(4, 4)
    >>> lora = LoRA(frozen, rank=2)
    >>> _ = torch.nn.init.normal_(lora.adapter_up_proj.weight)
    >>> switch = TaskSwitch(frozen)
    >>> switch.add("kws", "lora", lora)
    >>> x = torch.randn(3, 4)
    >>> with torch.no_grad(), task_rows(rows_of(["kws", "esc50", "kws"])):
    ...     y = switch(x)
    >>> with torch.no_grad():
    ...     torch.allclose(y[[0, 2]], lora(x[[0, 2]])), torch.allclose(y[1], frozen(x[1]))
    (True, True)
    """

    def __init__(self, shared):
        super().__init__()
        self.shared = shared
        self.tasks = nn.ModuleDict()
        self.kinds = {}

    def add(self, task, kind, module):
        """Puts a task's part at this place.

        Arguments
        ---------
        task : str
            The task name.
        kind : str
            One of :data:`KINDS`.
        module : torch.nn.Module
            The task's wrapper, or its trained copy of the module.

        Example
        -------
        >>> switch = TaskSwitch(torch.nn.LayerNorm(4))
        >>> switch.add("kws", "module", torch.nn.LayerNorm(4))
        >>> switch.kinds
        {'kws': 'module'}
        """
        if kind not in KINDS:
            raise ValueError(
                f"Unknown TaskSwitch kind {kind!r}; choose one of {list(KINDS)}."
            )
        self.tasks[task] = module
        self.kinds[task] = kind

    def remove(self, task):
        """Takes a task's part away from this place.

        Arguments
        ---------
        task : str
            The task name.

        Example
        -------
        >>> switch = TaskSwitch(torch.nn.LayerNorm(4))
        >>> switch.add("kws", "module", torch.nn.LayerNorm(4))
        >>> switch.remove("kws")
        >>> len(switch.tasks), switch.kinds
        (0, {})
        """
        del self.tasks[task]
        del self.kinds[task]

    def forward(self, *args, **kwargs):
        """The frozen module's output, changed on each task's rows by that
        task's part.

        Arguments
        ---------
        *args
            The frozen module's positional arguments (the tokens first).
        **kwargs
            Its keyword arguments.

        Returns
        -------
        torch.Tensor or tuple
            As the frozen module returns (of a tuple, the first element is
            the one changed).
        """
        assignment = current_task_rows()
        if assignment is None:
            raise RuntimeError(
                "This backbone serves several tasks and was called without saying "
                "which clip belongs to which: call MultiTaskClassifier."
                "classify_batch(wavs, wav_lens, task=... or tasks=[...]), or run "
                "the backbone inside `with speechbrain_moe.petl.task_switch."
                "task_rows(rows_of(tasks)):`."
            )
        output = self.shared(*args, **kwargs)
        present = [(t, r) for t, r in assignment.items() if t in self.kinds]
        if not present:
            return output
        present.sort(key=lambda item: self.kinds[item[0]] != "module")
        x = first_input(args, kwargs, "TaskSwitch")
        mask = current_token_mask()
        first = output if isinstance(output, torch.Tensor) else output[0]
        for task, rows in present:
            first = self._change_rows(task, rows, x, mask, first)
        if isinstance(output, torch.Tensor):
            return first
        return type(output)([first, *output[1:]])

    def _change_rows(self, task, rows, x, mask, first):
        """``first`` with the rows of ``task`` changed by its part."""
        kind, module = self.kinds[task], self.tasks[task]
        whole = rows is None
        inputs = x if whole else x.index_select(0, rows)
        if kind == "module":
            new = module(inputs)
            return new if whole else first.index_copy(0, rows, new)
        if mask is not None and not whole:
            mask = mask.index_select(0, rows)
        if kind == "parallel":
            delta = module.adapter(inputs, mask=mask)
        elif kind == "sequential":
            hidden = first if whole else first.index_select(0, rows)
            delta = module.adapter(hidden, mask=mask)
        elif kind == "lora_experts":  # as LoRAExperts.forward computes it
            delta = module.scaling * module.mixture(inputs, mask=mask).to(inputs.dtype)
        else:  # SpeechBrain's LoRA: its update, as LoRA.forward computes it
            delta = module.adapter_up_proj(module.adapter_down_proj(inputs))
            delta = delta * module.scaling
        return first + delta if whole else first.index_add(0, rows, delta)


def _kind(module):
    """The switch kind of a wrapper (None: not a wrapper a switch knows)."""
    for cls, kind in WRAPPER_KINDS:
        if isinstance(module, cls):
            return kind
    if isinstance(module, LoRA):
        return "lora"
    return None


def _class(module):
    """The class of a module, a parametrized one's own (``torch.nn.utils.
    parametrize`` gives each parametrized module a class of its own)."""
    if parametrize.is_parametrized(module):
        return type(module).__bases__[0]
    return type(module)


def _unswitched(module):
    """The frozen module under a switch (``module`` when it is none)."""
    return module.shared if isinstance(module, TaskSwitch) else module


def _tensors(module):
    """``{name: (kind, tensor)}`` of a module's own parameters and buffers."""
    own = {n: ("parameter", p) for n, p in module.named_parameters(recurse=False)}
    own.update(
        {
            n: ("buffer", b)
            for n, b in module.named_buffers(recurse=False)
            if b is not None
        }
    )
    return own


def _compare(task, mine, shared, path, sites):
    """Walks the task's module tree beside the shared one: ties the equal
    frozen tensors, collects the places where the task differs, refuses
    what cannot share a forward."""
    shared = _unswitched(shared)
    where = path or "<the backbone lobe>"
    if isinstance(mine, AdaptedModel):
        return _compare(task, mine.adapted_model, shared, path, sites)
    kind = _kind(mine)
    if kind is not None:
        sites.append((path, kind, mine))
        return _compare(task, mine.pretrained_module, shared, path, sites)
    for cls, why in UNSHAREABLE.items():
        if isinstance(mine, cls):
            raise TaskMismatch(
                f"Task {task!r} cannot share the backbone: at {where} it has a "
                f"{cls.__name__}: {why}. {FIX}"
            )
    if _class(mine) is not _class(shared):
        raise TaskMismatch(
            f"Task {task!r} cannot share the backbone: at {where} it has a "
            f"{type(mine).__name__} where the shared backbone has a "
            f"{type(shared).__name__}, a change a per-task switch does not know "
            f"how to run on its rows only. {FIX}"
        )
    theirs = _tensors(shared)
    trained = []
    for name, (what, tensor) in _tensors(mine).items():
        other = theirs.get(name, (None, None))[1]
        if other is None or other.shape != tensor.shape:
            raise TaskMismatch(
                f"Task {task!r} cannot share the backbone: its {what} "
                f"{where}.{name} has no counterpart of the same shape in the shared "
                "backbone. Check that its folder was trained on the same backbone "
                "source and lobe settings."
            )
        if tensor is other:
            continue
        if tensor.dtype == other.dtype and torch.equal(tensor, other):
            setattr(mine, name, other)  # tie: one copy of the frozen tensor
        else:
            trained.append(name)
    if trained and not isinstance(mine, NORMS):
        raise TaskMismatch(
            f"Task {task!r} cannot share the backbone: its {type(mine).__name__} "
            f"{where} has trained values of the frozen tensor(s) {trained} (BitFit "
            "trains the frozen biases, full fine-tuning every weight, and a merged "
            "LoRA folds its update into them), so the frozen layer itself differs "
            "for its clips and cannot run once for the whole batch. Load a LoRA "
            f"task unmerged (merge=False). {FIX}"
        )
    if trained:
        for name in trained:  # its own memory: nothing keeps the copy's source
            what, tensor = _tensors(mine)[name]
            copy = tensor.detach().clone()
            if what == "parameter":
                copy = nn.Parameter(copy, requires_grad=tensor.requires_grad)
            setattr(mine, name, copy)
        sites.append((path, "module", mine))
        return None
    mine_children = dict(mine.named_children())
    shared_children = dict(shared.named_children())
    for name, child in mine_children.items():
        if name not in shared_children:
            raise TaskMismatch(
                f"Task {task!r} cannot share the backbone: it has a sub-module "
                f"{path + '.' if path else ''}{name} that the shared backbone has "
                "not. Check that its folder was trained on the same backbone lobe."
            )
        child_path = f"{path}.{name}" if path else name
        _compare(task, child, shared_children[name], child_path, sites)
    return None


def _parent(backbone, path):
    """``(parent module, child name)`` of a path of the shared backbone,
    stepping through the switches already installed."""
    parent = backbone
    *parents, name = path.split(".")
    for part in parents:
        parent = getattr(_unswitched(parent), part)
    return _unswitched(parent), name


def attach_task(backbone, task, adapted):
    """Makes a shared backbone serve one more task.

    ``adapted`` is the task's own adapted copy of the same backbone (e.g.
    what :func:`~speechbrain_moe.inference.adapters.load_adapters` returns,
    or the ``backbone`` of its ``PETLAudioClassifier``). Its frozen tensors
    are tied to ``backbone``'s (freed, once nothing else holds the copy);
    its adapters and trained norms are placed in ``backbone`` behind
    :class:`TaskSwitch` modules. Nothing is changed when the task is
    refused.

    Arguments
    ---------
    backbone : torch.nn.Module
        The shared backbone lobe (not adapted by a method).
    task : str
        The task's name (:func:`check_task_name`).
    adapted : torch.nn.Module
        The task's adapted backbone, built from the same source.

    Returns
    -------
    list of str
        The module paths (in ``backbone``) where the task has a part; empty
        for a linear probe.

    Example
    -------
    >>> from speechbrain.nnet.adapters import AdaptedModel, LoRA
    >>> _ = torch.manual_seed(0)
    >>> shared = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> mine = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU())
    >>> _ = mine.load_state_dict(shared.state_dict())
    >>> lora = AdaptedModel(mine, LoRA, target_layers=["0"])
    >>> attach_task(shared, "kws", lora)
    ['0']
    >>> type(shared[0]).__name__, lora.adapted_model[0].pretrained_module.weight is shared[0].shared.weight
    ('TaskSwitch', True)
    """
    check_task_name(task)
    sites = []
    _compare(task, adapted, backbone, "", sites)
    for path, kind, module in sites:
        if not path:
            raise TaskMismatch(
                f"Task {task!r} changes the backbone lobe as a whole ({kind}); "
                f"only modules inside it can be switched per task. {FIX}"
            )
        parent, name = _parent(backbone, path)
        current = getattr(parent, name)
        if not isinstance(current, TaskSwitch):
            current = TaskSwitch(current)
            setattr(parent, name, current)
        current.add(task, kind, module)
    return [path for path, _, _ in sites]


def detach_task(backbone, task, paths):
    """Takes a task's parts out of a shared backbone; a switch left without
    tasks gives its place back to the frozen module.

    Arguments
    ---------
    backbone : torch.nn.Module
        The shared backbone.
    task : str
        The task's name.
    paths : list of str
        What :func:`attach_task` returned for it.

    Example
    -------
    >>> from speechbrain.nnet.adapters import AdaptedModel, LoRA
    >>> shared = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> mine = torch.nn.Sequential(torch.nn.Linear(4, 4))
    >>> _ = mine.load_state_dict(shared.state_dict())
    >>> paths = attach_task(shared, "kws", AdaptedModel(mine, LoRA, target_layers=["0"]))
    >>> detach_task(shared, "kws", paths)
    >>> type(shared[0]).__name__
    'Linear'
    """
    for path in paths:
        parent, name = _parent(backbone, path)
        switch = getattr(parent, name)
        switch.remove(task)
        if not switch.kinds:
            setattr(parent, name, switch.shared)
