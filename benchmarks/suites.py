"""The benchmark suites: which cases each runs and how a case is built.

A *case* is a JSON-serialisable dict (so that a memory worker can rebuild it
in a fresh process):

* ``kind="ast"``: an AST-shaped encoder with random weights, adapted by a
  registered PETL method, plus a linear head; one step is forward, backward
  and an AdamW step on random fbank features (feature extraction excluded).
* ``kind="bridge"``: the audio-to-LLM bridge alone (see
  :mod:`benchmarks.bridge`).

Cases that are compared with each other share a ``group``: a group is timed
in interleaved rounds of its own (see :func:`benchmarks.core.time_interleaved`).

Every mixture case (:data:`MIXTURES`: Dense-MoA, Soft-MoA, the sparse
MoE-Adapter and the mixtures of LoRA experts, in ``table1`` and
``scaling``; the MoE-Adapter bridge in ``bridge``) runs twice in its group: with ``implementation: auto`` (the
package's default: the hand-written kernels of :mod:`speechbrain_moe.kernels`
on the devices where they were measured faster, the plain PyTorch path
elsewhere) and with ``implementation: plain`` (the plain path everywhere),
so that a report gives each path's own cost, measured in the same rounds.
``config["implementation"]`` of a case holds the setting it ran with; the
JSON row adds what ``auto`` resolved to on the device (see
:func:`resolved_implementation`).

Authors
 * speechbrain-moe contributors 2026
"""

import copy
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.bridge import bridge_cases, build_bridge_step
from benchmarks.core import forward_context
from benchmarks.naive import swap_in_naive
from benchmarks.report import MIXTURE_METHODS
from speechbrain_moe.kernels import use_kernel
from speechbrain_moe.lobes.base import masked_mean
from speechbrain_moe.routing import routing_context, token_mask
from speechbrain_moe.summary import count_parameters

SUITES = ("table1", "scaling", "bridge")

#: AST-base (Gong et al., 2021) and the tiny shape used by ``--quick``.
AST_BASE = {"hidden_size": 768, "layers": 12, "heads": 12, "ffn": 3072}
AST_TINY = {"hidden_size": 32, "layers": 2, "heads": 2, "ffn": 64}

#: Paper settings of the methods (Cappellazzo et al., 2024, Table 1).
PAPER_SETTINGS = {
    "adapter": {"bottleneck": 24, "placement": "pfeiffer_attention"},
    "dense_moa": {
        "num_experts": 14,
        "bottleneck": 1,
        "placement": "pfeiffer_attention",
    },
    "soft_moa": {"num_experts": 14, "bottleneck": 1, "placement": "pfeiffer_attention"},
    # In-encoder sparse MoE: top-2 of 8 experts of hidden 3, i.e. the
    # parameter budget of the r = 24 adapter spread over 8 experts.
    "moe_adapter": {
        "num_experts": 8,
        "top_k": 2,
        "hidden_size": 3,
        "placement": "pfeiffer_attention",
    },
    "convpass": {"bottleneck": 8, "placement": "pfeiffer_attention"},
    "lora": {"rank": 8, "alpha": 8.0},
    "prompt": {"num_prompts": 10},
    "prefix": {"num_prefix": 10},
}

#: Methods that get a naive-loop peer in ``table1`` (see :mod:`benchmarks.naive`).
NAIVE_PEERS = ("dense_moa", "soft_moa")

#: Methods with a plain path and a kernel path (``implementation`` setting):
#: each of their cases gets an ``implementation: plain`` peer in its group.
MIXTURES = MIXTURE_METHODS


def resolved_implementation(setting, device="cpu"):
    """Which code a case with this ``implementation`` setting runs on ``device``.

    Arguments
    ---------
    setting : str or None
        ``config["implementation"]`` of a case: ``"auto"``, ``"plain"``,
        ``"kernel"``, ``"naive_loop"`` (the :mod:`benchmarks.naive` peers), or
        None for a method without mixture code.
    device : str
        The benchmark device.

    Returns
    -------
    str or None
        ``"kernel"`` or ``"plain"`` for ``auto`` (the choice of
        :func:`speechbrain_moe.kernels.use_kernel` on ``device``), else
        ``setting`` itself.

    Example
    -------
    >>> resolved_implementation("auto", "cpu"), resolved_implementation("plain")
    ('kernel', 'plain')
    >>> resolved_implementation(None) is None
    True
    """
    if setting != "auto":
        return setting
    probe = torch.empty(0, device=torch.device(device).type)
    return "kernel" if use_kernel("auto", probe) else "plain"


def with_plain_peers(cases):
    """Adds an ``implementation: plain`` peer after every mixture case.

    The case itself is marked ``implementation: auto`` (in its ``config``,
    and in its ``settings`` for an AST case, which the PETL method reads);
    the peer is a copy with ``plain`` in both places, in the same ``group``
    (so it is timed in the same interleaved rounds) and with the same
    ``rounds`` and ``memory`` options. Naive-loop peers (already marked
    ``naive_loop``) and methods outside :data:`MIXTURES` are left alone.

    Arguments
    ---------
    cases : list of dict
        Case specs.

    Returns
    -------
    list of dict
        The cases, each mixture case followed by its plain peer.

    Example
    -------
    >>> cases = [{"kind": "ast", "method": "soft_moa", "settings": {}, "config": {}},
    ...          {"kind": "ast", "method": "adapter", "settings": {}, "config": {}}]
    >>> [(c["method"], c["config"].get("implementation")) for c in with_plain_peers(cases)]
    [('soft_moa', 'auto'), ('soft_moa', 'plain'), ('adapter', None)]
    """
    out = []
    for case in cases:
        if case["method"] not in MIXTURES or "implementation" in case["config"]:
            out.append(case)
            continue
        for implementation in ("auto", "plain"):
            peer = dict(
                case, config=dict(case["config"], implementation=implementation)
            )
            if "settings" in case:
                peer["settings"] = dict(case["settings"], implementation=implementation)
            out.append(peer)
    return out


def petl(backbone=None, method=None, settings=None):
    """The one call into the package's PETL methods.

    Arguments
    ---------
    backbone : torch.nn.Module, optional
        Backbone to adapt in place with ``method`` and ``settings``; without
        one, the names of the registered methods are returned.
    method : str, optional
        Method name.
    settings : dict, optional
        Settings of the method.

    Returns
    -------
    torch.nn.Module or list of str
        The adapted backbone, or the method names.

    Example
    -------
    >>> "soft_moa" in petl()
    True
    """
    from speechbrain_moe.petl import apply_method, available_methods

    if backbone is None:
        return list(available_methods())
    return apply_method(backbone, method, settings or {})


# ---------------------------------------------------------------- case lists


def table1_cases(quick=False):
    """Every registered method, paper settings, Speech Commands input shape.

    Arguments
    ---------
    quick : bool
        Tiny model and batch (smoke test).

    Returns
    -------
    list of dict

    Example
    -------
    >>> [c["method"] for c in table1_cases(quick=True)][:3]
    ['adapter', 'bitfit', 'convpass']
    >>> [c["method"] for c in table1_cases(quick=True) if c.get("naive")]
    ['dense_moa', 'soft_moa']
    >>> plain = [c["method"] for c in table1_cases(quick=True)
    ...          if c["config"].get("implementation") == "plain"]
    >>> {"dense_moa", "moe_adapter", "soft_moa"} <= set(plain)
    True
    """
    model = AST_TINY if quick else AST_BASE
    cases = []
    methods = petl()
    for method in methods + [m for m in NAIVE_PEERS if m in methods]:
        settings = dict(PAPER_SETTINGS.get(method, {}))
        config = {
            "frames": 100,
            "batch_size": 2 if quick else 8,
            "num_experts": settings.get("num_experts"),
            "bottleneck": settings.get("bottleneck", settings.get("hidden_size")),
            "top_k": settings.get("top_k"),
        }
        naive = any(c["method"] == method for c in cases)
        case = _ast_case(method, settings, config, model, "frames=100")
        if naive:
            case["naive"] = True
            case["config"] = dict(config, implementation="naive_loop")
        cases.append(case)
    return with_plain_peers(cases)


def scaling_cases(quick=False):
    """Soft/Dense-MoA vs N (bottleneck 1 and 8), adapter/Soft-MoA vs frames.

    Arguments
    ---------
    quick : bool
        Fewer, smaller cases (smoke test).

    Returns
    -------
    list of dict

    Example
    -------
    >>> cases = scaling_cases(quick=True)
    >>> sorted({c["config"]["num_experts"] for c in cases if c["method"] == "soft_moa"})
    [2, 4, 14]
    >>> sorted({c["config"].get("implementation") for c in cases if c["method"] != "adapter"})
    ['auto', 'plain']
    """
    model = AST_TINY if quick else AST_BASE
    batch = 2 if quick else 8
    experts = (2, 4) if quick else (2, 4, 8, 16, 32, 64)
    bottlenecks = (1,) if quick else (1, 8)
    frames_list = (100, 200) if quick else (100, 400, 1000)
    cases = []
    for frames in frames_list:
        for method in ("adapter", "soft_moa"):
            settings = dict(PAPER_SETTINGS[method])
            config = {
                "sweep": "frames",
                "frames": frames,
                "batch_size": batch,
                "num_experts": settings.get("num_experts"),
                "bottleneck": settings["bottleneck"],
            }
            case = _ast_case(method, settings, config, model, f"frames={frames}")
            # A 2 % target on steps that vary by several % from round to round
            # (1000 frames: 31 rounds gave 1.025 [1.000-1.037]; 61 narrow it).
            case["rounds"] = {100: 41, 400: 31}.get(frames, 61)
            cases.append(case)
    for bottleneck in bottlenecks:
        for num_experts in experts:
            for method in ("soft_moa", "dense_moa"):
                settings = {
                    "num_experts": num_experts,
                    "bottleneck": bottleneck,
                    "placement": "pfeiffer_attention",
                }
                config = {
                    "sweep": "experts",
                    "frames": 100,
                    "batch_size": batch,
                    "num_experts": num_experts,
                    "bottleneck": bottleneck,
                }
                case = _ast_case(method, settings, config, model, "experts")
                case["memory"] = False  # the sweep's target is time only
                cases.append(case)
    return with_plain_peers(cases)


def bridge_suite_cases(quick=False):
    """The ``bridge`` suite: :func:`benchmarks.bridge.bridge_cases` with a
    plain-path peer of the MoE-Adapter bridge in every group.

    Arguments
    ---------
    quick : bool
        One small shape (smoke test).

    Returns
    -------
    list of dict

    Example
    -------
    >>> [(c["method"], c["config"].get("implementation"))
    ...  for c in bridge_suite_cases(quick=True)][:3]
    [('moe_adapter', 'auto'), ('moe_adapter', 'plain'), ('dense', None)]
    """
    return with_plain_peers(bridge_cases(quick=quick))


CASE_LISTS = {
    "table1": table1_cases,
    "scaling": scaling_cases,
    "bridge": bridge_suite_cases,
}


def _ast_case(method, settings, config, model, group):
    """A case spec for an AST-shaped encoder adapted by ``method``."""
    return {
        "kind": "ast",
        "group": group,
        "rounds": 21 if group == "frames=100" else 11,
        "method": method,
        "settings": settings,
        "config": config,
        "model": dict(model),
        "num_classes": 35,
    }


# ---------------------------------------------------------------- building


def save_random_ast(model, folder=None):
    """Saves a randomly initialised ``ASTModel`` of the given shape.

    Arguments
    ---------
    model : dict
        ``hidden_size``, ``layers``, ``heads``, ``ffn``.
    folder : str, optional
        Where to save (default: a new temporary folder).

    Returns
    -------
    str
        The folder (loadable by :class:`speechbrain_moe.lobes.ast.AST`).

    Example
    -------
    >>> import os
    >>> folder = save_random_ast(AST_TINY)
    >>> os.path.exists(os.path.join(folder, "config.json"))
    True
    """
    from transformers import ASTConfig, ASTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    folder = folder or tempfile.mkdtemp(prefix="sbmoe_bench_ast_")
    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=model["hidden_size"],
        num_hidden_layers=model["layers"],
        num_attention_heads=model["heads"],
        intermediate_size=model["ffn"],
        max_length=1024,
    )
    ASTModel(config).save_pretrained(folder)
    return folder


def shared_copy(module):
    """A deep copy of ``module`` whose parameters share storage with it.

    Each copy has its own ``Parameter`` objects (so methods may freeze or
    unfreeze them independently) but no copy of the weights: the timing
    process holds one backbone however many cases it interleaves.

    Arguments
    ---------
    module : torch.nn.Module

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> a = nn.Linear(2, 2)
    >>> b = shared_copy(a)
    >>> b.weight is a.weight, b.weight.data_ptr() == a.weight.data_ptr()
    (False, True)
    """
    memo = {
        id(p): nn.Parameter(p.data, requires_grad=p.requires_grad)
        for p in module.parameters()
    }
    return copy.deepcopy(module, memo)


def build_ast_step(spec, checkpoint, device="cpu", base=None):
    """Builds one AST case; returns its training-step function and counts.

    Arguments
    ---------
    spec : dict
        A ``kind="ast"`` case.
    checkpoint : str
        Folder of :func:`save_random_ast` for ``spec["model"]``.
    device : str
        ``cpu`` or ``cuda``.
    base : AST, optional
        An unadapted lobe with the right ``max_frames`` to share weights with.

    Returns
    -------
    step : callable
        Runs forward, backward and an AdamW step.
    counts : dict
        Output of :func:`speechbrain_moe.summary.count_parameters`.
    """
    from transformers.utils import logging as hf_logging

    from speechbrain_moe.lobes.ast import AST

    hf_logging.disable_progress_bar()
    config = spec["config"]
    torch.manual_seed(0)
    if base is not None:
        lobe = shared_copy(base)
    else:
        lobe = AST(checkpoint, max_frames=config["frames"])
    petl(lobe, spec["method"], spec["settings"])
    if spec.get("naive"):
        swap_in_naive(lobe)
    head = nn.Linear(lobe.output_size, spec["num_classes"])
    modules = nn.ModuleDict({"backbone": lobe, "head": head}).to(device)
    modules.train()
    counts = count_parameters(modules)
    params = [p for p in modules.parameters() if p.requires_grad]
    # lr only matters for the numbers, not the cost; the timing process
    # shares the frozen weights between cases (full_ft updates them).
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    batch = config["batch_size"]
    generator = torch.Generator().manual_seed(0)
    feats = torch.randn(batch, config["frames"], lobe.num_mel_bins, generator=generator)
    feats = feats.to(device)
    labels = torch.randint(0, spec["num_classes"], (batch,), generator=generator).to(
        device
    )
    mask = lobe.token_mask(torch.full((batch,), config["frames"])).to(device)

    def step():
        """One timed training step."""
        with forward_context(spec, device), token_mask(mask):
            with routing_context(lobe) as routing:
                hidden = lobe.model(input_values=feats).last_hidden_state
            logits = head(masked_mean(hidden, mask))
            loss = F.cross_entropy(logits, labels) + routing.aux_loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, counts


def build_step(spec, checkpoint=None, device="cpu", base=None):
    """Builds any case (dispatch on ``spec["kind"]``).

    Arguments
    ---------
    spec : dict
        A case spec.
    checkpoint : str, optional
        AST checkpoint folder (``kind="ast"`` only).
    device : str
        ``cpu`` or ``cuda``.
    base : torch.nn.Module, optional
        Unadapted lobe to share weights with (``kind="ast"`` only).

    Returns
    -------
    tuple
        ``(step, counts)``.

    Example
    -------
    >>> step, counts = build_step(bridge_cases(quick=True)[1])
    >>> step()
    >>> counts["total"] == counts["active"]
    True
    """
    if spec["kind"] == "bridge":
        return build_bridge_step(spec, device)
    if spec["kind"] == "ast":
        return build_ast_step(spec, checkpoint, device, base)
    raise ValueError(f"Unknown benchmark case kind {spec['kind']!r}.")
