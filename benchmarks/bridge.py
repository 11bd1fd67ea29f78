"""The ``bridge`` suite: the MoE-Adapter bridge against a dense projector.

Both bridges have the same total parameter count; the MoE-Adapter uses only
``top_k`` of its ``num_experts`` experts per token. Cases cover two shapes
(the paper's, Whisper-large 1280 x 4 stacked frames -> LLM width 2048, and
the same divided by 8) and three kinds of step:

* ``train``: forward + backward with a frozen encoder (the recipe's case:
  the bridge input needs no gradient, so neither bridge computes the
  gradient of its first layer's input);
* ``train_input_grad``: forward + backward with a gradient to the encoder
  (encoder fine-tuned, or adapters inside it);
* ``forward``: inference (``torch.no_grad``).

:func:`bridge_macs` counts the multiply-adds of each, so every row carries the
arithmetic limit of its ratio next to the measured one.

Authors
 * speechbrain-moe contributors 2026
"""

import torch

from benchmarks.core import forward_context
from speechbrain_moe.adapters.bridges import DenseProjector, MoEAdapterBridge
from speechbrain_moe.routing import routing_context

#: The paper's bridge: Whisper-large (1280) x 4 stacked -> LLM width 2048.
BRIDGE_PAPER = {
    "input_size": 5120,
    "fused_size": 2560,
    "num_experts": 8,
    "top_k": 4,
    "expert_hidden": 1280,
    "aggregation_hidden": 10240,
    "output_size": 2048,
}
#: Step kinds of the suite.
BRIDGE_MODES = ("train", "train_input_grad", "forward")
#: (name, width divisor, batch) of the full suite; 375 = 30 s of Whisper frames / 4.
BRIDGE_SHAPES = (("small", 8, 8), ("paper", 1, 4))
#: The ``--quick`` shape (smoke runs and tests).
QUICK_SHAPE = ("quick", 64, 2)


def bridge_shape(name):
    """``(width divisor, batch)`` of a named shape (``small``, ``paper``, ``quick``).

    Example
    -------
    >>> bridge_shape("small")
    (8, 8)
    """
    for shape, divisor, batch in (*BRIDGE_SHAPES, QUICK_SHAPE):
        if shape == name:
            return divisor, batch
    names = ", ".join(s[0] for s in (*BRIDGE_SHAPES, QUICK_SHAPE))
    raise ValueError(f"Unknown bridge shape {name!r}; choose one of {names}.")


def scaled_bridge_shape(divisor):
    """The paper's bridge shape with every width divided by ``divisor``.

    Arguments
    ---------
    divisor : int
        Width divisor (1: the paper's shape).

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


def stage_macs(config, dense_hidden):
    """Forward multiply-adds per token of each layer group of both bridges.

    Arguments
    ---------
    config : dict
        A bridge case config (widths, experts, top-k).
    dense_hidden : int
        Hidden width of the dense projector.

    Returns
    -------
    dict
        ``dense.first``, ``dense.rest`` (its two layers), ``moe.fuse``,
        ``moe.sparse`` (router + the ``top_k`` experts) and ``moe.aggregate``.

    Example
    -------
    >>> stage_macs(scaled_bridge_shape(8), 1783)["moe.fuse"]
    204800
    """
    c = config
    expert = (
        c["fused_size"] * c["expert_hidden"] + c["expert_hidden"] * c["output_size"]
    )
    aggregation = c["output_size"] ** 2
    if c.get("aggregation_hidden"):
        aggregation = 2 * c["output_size"] * c["aggregation_hidden"]
    return {
        "dense.first": c["input_size"] * dense_hidden,
        "dense.rest": dense_hidden * c["output_size"],
        "moe.fuse": c["input_size"] * c["fused_size"],
        "moe.sparse": c["fused_size"] * c["num_experts"] + c["top_k"] * expert,
        "moe.aggregate": aggregation,
    }


def bridge_macs(config, dense_hidden):
    """Multiply-adds per token of each bridge, for each step kind.

    Backward = weight gradients (as many as the forward) + input gradients of
    every layer but the first (+ the first with ``train_input_grad``).

    Arguments
    ---------
    config, dense_hidden : dict, int
        As in :func:`stage_macs`, which counts each layer group's share.

    Returns
    -------
    dict
        ``{method: {mode: macs}}``.

    Example
    -------
    >>> macs = bridge_macs(scaled_bridge_shape(1), 14270)
    >>> round(macs["moe_adapter"]["forward"] / macs["dense"]["forward"], 3)
    0.769
    >>> round(macs["moe_adapter"]["train"] / macs["dense"]["train"], 3)
    0.953
    """
    stages = stage_macs(config, dense_hidden)
    first = {"moe_adapter": stages["moe.fuse"], "dense": stages["dense.first"]}
    rest = {
        "moe_adapter": stages["moe.sparse"] + stages["moe.aggregate"],
        "dense": stages["dense.rest"],
    }
    out = {}
    for method in first:
        forward = first[method] + rest[method]
        out[method] = {
            "forward": forward,
            "train": 2 * forward + rest[method],
            "train_input_grad": 3 * forward,
        }
    return out


def bridge_cases(quick=False):
    """Both bridges at both shapes, for every step kind.

    Arguments
    ---------
    quick : bool
        One shape, widths divided by 64, short sequences (smoke test).

    Returns
    -------
    list of dict

    Example
    -------
    >>> [(c["method"], c["config"]["mode"]) for c in bridge_cases(quick=True)][:2]
    [('moe_adapter', 'train'), ('dense', 'train')]
    """
    shapes = (QUICK_SHAPE,) if quick else BRIDGE_SHAPES
    cases = []
    for shape_name, divisor, batch in shapes:
        for mode in BRIDGE_MODES:
            config = {
                "shape": shape_name,
                "mode": mode,
                "batch_size": batch,
                "time": 25 if quick else 375,
                **scaled_bridge_shape(divisor),
            }
            group = f"{shape_name}/{mode}"
            for method in ("moe_adapter", "dense"):
                cases.append(
                    {
                        "kind": "bridge",
                        "suite": "bridge",
                        "group": group,
                        "rounds": 15,
                        "method": method,
                        "config": dict(config),
                    }
                )
    return cases


def build_bridge_modules(config, only=None):
    """The two bridges of a ``bridge`` case, equal in total size.

    Arguments
    ---------
    config : dict
        A ``bridge`` case config (widths, experts, top-k; ``implementation``
        of the MoE-Adapter, default ``auto``).
    only : str, optional
        ``moe_adapter`` or ``dense``: return only that one (the other is
        None), and never hold the weights of both, so that a memory worker's
        peak is its own step's (at the paper's shape both held 390 MB more,
        which hid the forward step's peak). The MoE-Adapter is always built
        first: its size sets the dense projector's width.

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
    torch.manual_seed(0)
    moe = MoEAdapterBridge(
        config["input_size"],
        config["output_size"],
        fused_size=config["fused_size"],
        num_experts=config["num_experts"],
        top_k=config["top_k"],
        expert_hidden=config["expert_hidden"],
        aggregation_hidden=config["aggregation_hidden"],
        implementation=config.get("implementation", "auto"),
    )
    total = sum(p.numel() for p in moe.parameters())
    hidden = dense_hidden_for(total, config["input_size"], config["output_size"])
    per_expert = (
        sum(p.numel() for p in moe.moe.experts.parameters()) // config["num_experts"]
    )
    if only == "dense":
        moe = None  # freed before the dense projector is built
    dense = None
    if only != "moe_adapter":
        dense = DenseProjector(
            config["input_size"], config["output_size"], hidden_size=hidden
        )
    return {
        "moe_adapter": moe,
        "dense": dense,
        "per_expert": per_expert,
        "dense_hidden": hidden,
    }


def build_bridge_step(spec, device="cpu"):
    """Builds one bridge case; returns its step function and counts.

    Arguments
    ---------
    spec : dict
        A ``kind="bridge"`` case.
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    step : callable
        One step of the case's kind (gradients cleared after each step).
    counts : dict
        ``total``, ``trainable``, ``trainable_no_head``, ``active``,
        ``dense_hidden``, ``macs_per_token`` and ``macs_ratio`` (to the
        dense projector, same kind of step).

    Example
    -------
    >>> step, counts = build_bridge_step(bridge_cases(quick=True)[0])
    >>> step()
    >>> counts["active"] < counts["total"]
    True
    """
    config = spec["config"]
    mode = config.get("mode", "train")
    parts = build_bridge_modules(config, only=spec["method"])
    module = parts[spec["method"]].to(device).train()
    total = sum(p.numel() for p in module.parameters())
    active = total
    if spec["method"] == "moe_adapter":
        active = total - (config["num_experts"] - config["top_k"]) * parts["per_expert"]
    macs = bridge_macs(config, parts["dense_hidden"])
    counts = {
        "total": total,
        "trainable": total,
        "trainable_no_head": total,
        "active": active,
        "dense_hidden": parts["dense_hidden"],
        "macs_per_token": macs[spec["method"]][mode],
        "macs_ratio": macs[spec["method"]][mode] / macs["dense"][mode],
    }
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        config["batch_size"], config["time"], config["input_size"], generator=generator
    )
    x = x.to(device).requires_grad_(mode == "train_input_grad")
    mask = torch.ones(x.shape[:2], dtype=torch.bool, device=device)
    params = list(module.parameters())

    def step():
        """One timed step."""
        if mode == "forward":
            with torch.no_grad(), forward_context(spec, device):
                module(x, mask)
            return
        with forward_context(spec, device), routing_context(module) as routing:
            loss = module(x, mask).float().pow(2).mean() + routing.aux_loss
        loss.backward()
        x.grad = None
        for param in params:
            param.grad = None

    return step, counts
