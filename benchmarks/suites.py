"""The benchmark suites: which cases each runs and how a case is built.

A *case* is a JSON-serialisable dict (so that a memory worker can rebuild it
in a fresh process):

* ``kind="ast"``: an AST-shaped encoder with random weights, adapted by a
  registered PETL method, plus a linear head; one step is forward, backward
  and an AdamW step on random fbank features (feature extraction excluded).
* ``kind="bridge"``: the audio-to-LLM bridge alone (``moe_adapter`` or the
  ``dense`` projector of equal total size); one step is forward + backward on
  ``[batch, time, channels]``.

Authors
 * speechbrain-moe contributors 2026
"""

import copy
import tempfile

import torch
import torch.nn as nn
import torch.nn.functional as F

from speechbrain_moe.lobes.base import masked_mean
from speechbrain_moe.petl import apply_method, available_methods
from speechbrain_moe.routing import collect_aux_loss, token_mask
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

#: The paper's bridge (Whisper-large 1280 x 4 stacked -> LLM 2048) divided by 8.
BRIDGE_PAPER = {
    "input_size": 5120,
    "fused_size": 2560,
    "num_experts": 8,
    "top_k": 4,
    "expert_hidden": 1280,
    "aggregation_hidden": 10240,
    "output_size": 2048,
}


def scaled_bridge_shape(divisor):
    """The paper's bridge shape with every width divided by ``divisor``.

    Arguments
    ---------
    divisor : int
        Width divisor (8 for the benchmark, larger for ``--quick``).

    Returns
    -------
    dict

    Example
    -------
    >>> scaled_bridge_shape(8)["fused_size"], scaled_bridge_shape(8)["top_k"]
    (320, 4)
    """
    keep = ("num_experts", "top_k")
    return {
        k: v if k in keep else max(1, v // divisor) for k, v in BRIDGE_PAPER.items()
    }


def dense_hidden_for(total, input_size, output_size):
    """Hidden width of ``Linear -> ReLU -> Linear`` with ``total`` parameters.

    Arguments
    ---------
    total : int
        Parameter budget.
    input_size : int
        Input width.
    output_size : int
        Output width.

    Returns
    -------
    int

    Example
    -------
    >>> dense_hidden_for(10 * 4 + 4 + 4 * 3 + 3, 10, 3)
    4
    """
    return max(1, round((total - output_size) / (input_size + 1 + output_size)))


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
    """
    model = AST_TINY if quick else AST_BASE
    cases = []
    for method in available_methods():
        settings = dict(PAPER_SETTINGS.get(method, {}))
        config = {
            "frames": 100,
            "batch_size": 2 if quick else 8,
            "num_experts": settings.get("num_experts"),
            "bottleneck": settings.get("bottleneck", settings.get("hidden_size")),
            "top_k": settings.get("top_k"),
        }
        cases.append(_ast_case(method, settings, config, model))
    return cases


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
            cases.append(_ast_case(method, settings, config, model))
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
                cases.append(_ast_case(method, settings, config, model))
    return cases


def bridge_cases(quick=False):
    """The MoE-Adapter bridge vs the dense projector of equal total size.

    Arguments
    ---------
    quick : bool
        Widths divided by 64 instead of 8, shorter sequences.

    Returns
    -------
    list of dict

    Example
    -------
    >>> [c["method"] for c in bridge_cases(quick=True)]
    ['moe_adapter', 'dense']
    """
    shape = scaled_bridge_shape(64 if quick else 8)
    # 30 s of Whisper frames (1500) stacked by 4.
    config = {"batch_size": 2 if quick else 8, "time": 25 if quick else 375, **shape}
    return [
        {"kind": "bridge", "suite": "bridge", "method": method, "config": dict(config)}
        for method in ("moe_adapter", "dense")
    ]


CASE_LISTS = {"table1": table1_cases, "scaling": scaling_cases, "bridge": bridge_cases}


def _ast_case(method, settings, config, model):
    """A case spec for an AST-shaped encoder adapted by ``method``."""
    return {
        "kind": "ast",
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
    apply_method(lobe, spec["method"], spec["settings"])
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
        with token_mask(lobe.model, mask):
            hidden = lobe.model(input_values=feats).last_hidden_state
        logits = head(masked_mean(hidden, mask))
        loss = F.cross_entropy(logits, labels) + collect_aux_loss(lobe)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step, counts


def build_bridge_modules(config):
    """The two bridges of the ``bridge`` suite, equal in total size.

    Arguments
    ---------
    config : dict
        A ``bridge`` case config (widths, experts, top-k).

    Returns
    -------
    dict
        ``moe_adapter`` and ``dense`` modules, plus ``per_expert`` (parameters
        of one routed expert) and ``dense_hidden``.

    Example
    -------
    >>> parts = build_bridge_modules(bridge_cases(quick=True)[0]["config"])
    >>> total = lambda m: sum(p.numel() for p in m.parameters())
    >>> abs(total(parts["dense"]) - total(parts["moe_adapter"])) / total(parts["dense"]) < 0.01
    True
    """
    from speechbrain_moe.adapters.bridges import DenseProjector, MoEAdapterBridge

    torch.manual_seed(0)
    moe = MoEAdapterBridge(
        config["input_size"],
        config["output_size"],
        fused_size=config["fused_size"],
        num_experts=config["num_experts"],
        top_k=config["top_k"],
        expert_hidden=config["expert_hidden"],
        aggregation_hidden=config["aggregation_hidden"],
    )
    total = sum(p.numel() for p in moe.parameters())
    hidden = dense_hidden_for(total, config["input_size"], config["output_size"])
    dense = DenseProjector(
        config["input_size"], config["output_size"], hidden_size=hidden
    )
    per_expert = (
        sum(p.numel() for p in moe.moe.experts.parameters()) // config["num_experts"]
    )
    return {
        "moe_adapter": moe,
        "dense": dense,
        "per_expert": per_expert,
        "dense_hidden": hidden,
    }


def build_bridge_step(spec, device="cpu"):
    """Builds one bridge case; returns its forward+backward function and counts.

    Arguments
    ---------
    spec : dict
        A ``kind="bridge"`` case.
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    step : callable
        Forward + backward (gradients cleared after each step).
    counts : dict
        ``total``, ``trainable``, ``trainable_no_head``, ``active`` and
        ``dense_hidden``.
    """
    config = spec["config"]
    parts = build_bridge_modules(config)
    module = parts[spec["method"]].to(device).train()
    total = sum(p.numel() for p in module.parameters())
    active = total
    if spec["method"] == "moe_adapter":
        active = total - (config["num_experts"] - config["top_k"]) * parts["per_expert"]
    counts = {
        "total": total,
        "trainable": total,
        "trainable_no_head": total,
        "active": active,
        "dense_hidden": parts["dense_hidden"],
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        config["batch_size"], config["time"], config["input_size"], generator=generator
    )
    x = x.to(device)
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    params = list(module.parameters())

    def step():
        """One timed training step."""
        loss = module(x, mask).pow(2).mean() + collect_aux_loss(module)
        loss.backward()
        for param in params:
            param.grad = None

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
