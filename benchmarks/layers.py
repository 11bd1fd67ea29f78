"""Layer-level costs behind two step-level ratios of the suites.

``python -m benchmarks.layers [--json benchmarks/results/layers.json]``

* ``soft_moa``: one Soft-MoA layer (14 experts of bottleneck 1) against one
  bottleneck-24 adapter, the module alone, forward + backward, AST-base width
  (768), batch 8, at the ``scaling`` suite's token counts. Twelve times the
  per-layer difference, over the adapter step of ``scaling``, is the step
  ratio the Soft-MoA layers themselves account for.
* ``bridge``: each stage of the MoE-Adapter bridge (fuse, sparse layer,
  aggregation MLP, LayerNorm) and the dense projector, forward + backward
  with the input gradient, with the multiply-adds of each and the rate at
  which it runs them (GMAC/s): where the sparse bridge loses to the dense
  projector at a given shape. Two more rows bound what any implementation
  of the sparse layer can reach: ``moe.sparse products``, its expert
  products alone on rows already sorted by expert
  (:func:`expert_products_step`), and ``moe floor``, the whole MoE-Adapter
  with that in place of its sparse layer (per round, the sum of the
  ``FLOOR_STAGES``). The dense projector and the floor's stages are timed a
  second time each on its own, rounds back to back (suffix
  ``(back-to-back)``, ratios to the dense projector timed the same way):
  a stage repeated right after itself finds its data and weights in cache,
  which the interleaved rounds do not give it.

Both are timed like the suites (:func:`benchmarks.core.time_interleaved`,
interleaved rounds, contention gate; ratios are medians of per-round
ratios).

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import sys

import torch

from benchmarks.bridge import (
    bridge_shape,
    build_bridge_modules,
    scaled_bridge_shape,
    stage_macs,
)
from benchmarks.core import (
    keep_freed_memory,
    machine_info,
    quartiles,
    time_interleaved,
)
from benchmarks.runner import paired_ratio, provenance
from speechbrain_moe.adapters import BottleneckAdapter, SoftMoA

#: Tokens of the scaling suite's 100, 400 and 1000 fbank frames (AST patches + 2).
SOFT_MOA_TOKENS = (110, 410, 1190)


def backward_step(module, x, *args):
    """Forward + backward of ``module`` on ``x`` (which needs a gradient).

    Arguments
    ---------
    module : torch.nn.Module
        The layer.
    x : torch.Tensor
        Its input (``requires_grad=True``).
    *args
        Further arguments of ``module``.

    Returns
    -------
    callable
        One step; gradients are cleared after it.

    Example
    -------
    >>> step = backward_step(torch.nn.Linear(3, 2), torch.randn(4, 3, requires_grad=True))
    >>> step()
    """
    out = module(x, *args)
    grad = torch.randn_like(out)
    params = list(module.parameters())

    def step():
        module(x, *args).backward(grad)
        x.grad = None
        for param in params:
            param.grad = None

    return step


def soft_moa_rows(rounds, tokens=SOFT_MOA_TOKENS, batch=8, width=768, **timing):
    """Soft-MoA layer vs bottleneck-24 adapter, module alone, per length.

    Arguments
    ---------
    rounds : int
        Timed interleaved rounds.
    tokens : tuple of int
        Sequence lengths.
    batch, width : int
        Batch size and token width.
    **timing
        Further options of :func:`time_interleaved`.

    Returns
    -------
    list of dict
    """
    rows = []
    for length in tokens:
        torch.manual_seed(0)
        x = torch.randn(batch, length, width, requires_grad=True)
        steps = {
            "adapter": backward_step(BottleneckAdapter(width, 24), x),
            "soft_moa": backward_step(SoftMoA(width, 14, bottleneck=1), x),
        }
        times = time_interleaved(steps, repeats=rounds, **timing)
        ratio = paired_ratio(
            times["soft_moa"]["times_ms"], times["adapter"]["times_ms"]
        )
        for method, t in times.items():
            rows.append(
                {
                    "part": "soft_moa",
                    "tokens": length,
                    "method": method,
                    "ms": t["median_ms"],
                    "ms_iqr": [t["q1_ms"], t["q3_ms"]],
                    "ratio_to_adapter": 1.0 if method == "adapter" else ratio[0],
                    "extra_ms_12_layers": 12
                    * (t["median_ms"] - times["adapter"]["median_ms"]),
                }
            )
    return rows


#: Stages whose times add up to the floor of the whole MoE-Adapter.
FLOOR_STAGES = ("fuse", "sparse products", "aggregate", "norm")
#: Suffix of the stages timed each on its own, rounds back to back.
BACK_TO_BACK = "(back-to-back)"


def expert_products_step(moe, tokens):
    """The expert products of ``moe`` alone, on rows already sorted by expert.

    ``moe`` routes ``tokens`` once (its real top-k choices); the step then
    runs, for each expert's block of rows, the six products of a forward +
    backward with the input gradient (``x W_down``, ``h W_up``, the hidden
    gradient, both weight gradients, the row gradient) on contiguous rows and
    the bank's weight views. No LayerNorm, router, activation, gather or
    scatter: a floor under any implementation of the sparse layer.

    Arguments
    ---------
    moe : speechbrain_moe.adapters.SparseMoE
        The sparse layer (its router picks the blocks' sizes).
    tokens : torch.Tensor
        Its input, ``[batch, time, input_size]``.

    Returns
    -------
    step : callable
        One step.
    rows : int
        Rows (token, choice pairs) of the step.

    Example
    -------
    >>> from speechbrain_moe.adapters import SparseMoE
    >>> step, rows = expert_products_step(SparseMoE(8, 4, 2, 6), torch.randn(2, 3, 8))
    >>> step(); rows
    12
    """
    with torch.no_grad():
        flat = moe.norm(tokens).reshape(-1, tokens.shape[-1])
        _, experts = moe.route(moe.router(flat).float())
    counts = torch.bincount(experts.reshape(-1), minlength=moe.num_experts).tolist()
    bank = moe.experts
    down, up = bank.down_weight.detach(), bank.up_weight.detach()
    x = flat.index_select(0, experts.reshape(-1).argsort(stable=True) // moe.top_k)
    grad = torch.randn(x.shape[0], bank.output_size)

    def step():
        start = 0
        for i, count in enumerate(counts):
            rows, grad_rows = x[start : start + count], grad[start : start + count]
            hidden = rows @ down[:, i]
            hidden @ up[i]
            grad_hidden = grad_rows @ up[i].t()
            hidden.t() @ grad_rows
            rows.t() @ grad_hidden
            grad_hidden @ down[:, i].t()
            start += count

    return step, x.shape[0]


def bridge_rows(rounds, shape="small", **timing):
    """Each stage of the MoE-Adapter bridge and the dense projector.

    Arguments
    ---------
    rounds : int
        Timed interleaved rounds.
    shape : str
        A shape of the ``bridge`` suite (``small`` or ``paper``).
    **timing
        Further options of :func:`time_interleaved`.

    Returns
    -------
    list of dict
    """
    divisor, batch = bridge_shape(shape)
    config = {**scaled_bridge_shape(divisor), "time": 375}
    parts = build_bridge_modules(config)
    moe, dense = parts["moe_adapter"], parts["dense"]
    torch.manual_seed(0)
    x = torch.randn(batch, config["time"], config["input_size"], requires_grad=True)
    steps, inputs = {"dense": backward_step(dense, x)}, x
    for name in ("fuse", "sparse", "aggregate", "norm"):
        stage = moe.moe if name == "sparse" else getattr(moe, name)
        steps[f"moe.{name}"] = backward_step(stage, inputs)
        inputs = stage(inputs).detach().requires_grad_()
    steps["moe (whole)"] = backward_step(moe, x)
    with torch.no_grad():
        fused = moe.fuse(x)
    steps["moe.sparse products"], choices = expert_products_step(moe.moe, fused)
    times = time_interleaved(steps, repeats=rounds, **timing)
    times["moe floor"] = floor_times(times)
    # The same stages, each repeated on its own (caches warm from its own
    # previous call), to show how much the floor depends on the timing.
    for name in ("dense", *(f"moe.{n}" for n in FLOOR_STAGES)):
        alone = time_interleaved({name: steps[name]}, repeats=rounds, **timing)
        times[f"{name} {BACK_TO_BACK}"] = alone[name]
    times[f"moe floor {BACK_TO_BACK}"] = floor_times(times, f" {BACK_TO_BACK}")
    macs = stage_macs(config, parts["dense_hidden"])
    macs["dense"] = macs.pop("dense.first") + macs.pop("dense.rest")
    macs["moe.norm"] = 0
    macs["moe (whole)"] = sum(v for k, v in macs.items() if k.startswith("moe."))
    tokens = batch * config["time"]
    per_choice = config["expert_hidden"] * (
        config["fused_size"] + config["output_size"]
    )
    macs["moe.sparse products"] = per_choice * choices / tokens
    macs["moe floor"] = macs["moe (whole)"] - macs["moe.sparse"]
    macs["moe floor"] += macs["moe.sparse products"]
    rows = []
    for name, t in times.items():
        base = name.removesuffix(f" {BACK_TO_BACK}")
        dense_name = "dense" if base == name else f"dense {BACK_TO_BACK}"
        gmac = 3 * macs[base] * tokens / 1e9  # forward + both gradients
        rows.append(
            {
                "part": "bridge",
                "shape": shape,
                "stage": name,
                "ms": t["median_ms"],
                "ms_iqr": [t["q1_ms"], t["q3_ms"]],
                "gmac": gmac,
                "gmac_per_s": gmac / (t["median_ms"] / 1000) if gmac else None,
                "ratio_to_dense": paired_ratio(
                    t["times_ms"], times[dense_name]["times_ms"]
                )[0],
            }
        )
    return rows


def floor_times(times, suffix=""):
    """Per round, the sum of the :data:`FLOOR_STAGES` times.

    The whole MoE-Adapter as it would cost if its sparse layer cost only its
    expert products.

    Arguments
    ---------
    times : dict
        From :func:`time_interleaved`, with every ``moe.<stage><suffix>``.
    suffix : str
        Suffix of the stage names.

    Returns
    -------
    dict
        ``median_ms``, ``q1_ms``, ``q3_ms`` and ``times_ms`` of the sums.

    Example
    -------
    >>> times = {f"moe.{n}": {"times_ms": [1.0, 2.0]} for n in FLOOR_STAGES}
    >>> floor_times(times)["times_ms"]
    [4.0, 8.0]
    """
    stages = (times[f"moe.{n}{suffix}"]["times_ms"] for n in FLOOR_STAGES)
    floor = [sum(per_round) for per_round in zip(*stages)]
    q1, median, q3 = quartiles(floor)
    return {"median_ms": median, "q1_ms": q1, "q3_ms": q3, "times_ms": floor}


def format_rows(rows):
    """Console table of the rows.

    Arguments
    ---------
    rows : list of dict
        From :func:`soft_moa_rows` and :func:`bridge_rows`.

    Returns
    -------
    str

    Example
    -------
    >>> print(format_rows([{"part": "bridge", "shape": "small", "stage": "dense",
    ...     "ms": 10.0, "ms_iqr": [9.0, 11.0], "gmac": 1.0, "gmac_per_s": 100.0,
    ...     "ratio_to_dense": 1.0}]))
    bridge small    dense                               10.0 ms [9.0-11.0]  1.00 GMAC  100 GMAC/s  1.000 x dense
    """
    lines = []
    for r in rows:
        cell = f"{r['ms']:.1f} ms [{r['ms_iqr'][0]:.1f}-{r['ms_iqr'][1]:.1f}]"
        if r["part"] == "soft_moa":
            lines.append(
                f"soft_moa {r['tokens']:>5} tokens  {r['method']:<9} {cell:<24}"
                f" {r['ratio_to_adapter']:.3f} x adapter  "
                f"12 layers: {r['extra_ms_12_layers']:+.1f} ms"
            )
        else:
            rate = f"{r['gmac_per_s']:.0f} GMAC/s" if r["gmac_per_s"] else "-"
            lines.append(
                f"bridge {r['shape']:<8} {r['stage']:<34} {cell:<19} "
                f"{r['gmac']:.2f} GMAC  {rate}  {r['ratio_to_dense']:.3f} x dense"
            )
    return "\n".join(lines)


def main(argv=None):
    """Runs both parts, prints the table, writes the JSON report."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.layers")
    parser.add_argument("--json", help="Write the report to this JSON file.")
    parser.add_argument("--rounds", type=int, default=21, help="Bridge rounds.")
    parser.add_argument(
        "--soft-rounds", type=int, default=101, help="Soft-MoA rounds (short steps)."
    )
    parser.add_argument("--shapes", default="small,paper", help="Bridge shapes.")
    parser.add_argument("--max-others", type=float, default=0.15)
    args = parser.parse_args(argv)
    timing = {"warmup": 2, "max_others": args.max_others}
    allocator = keep_freed_memory()  # steady-state steps, as the suites time
    rows = soft_moa_rows(args.soft_rounds, **timing)
    for shape in args.shapes.split(","):
        rows += bridge_rows(args.rounds, shape, **timing)
    print(format_rows(rows))
    if args.json:
        report = {
            "suite": "layers",
            "torch": torch.__version__,
            "machine": machine_info(),
            "provenance": provenance(),
            "config": {
                "rounds": args.rounds,
                "soft_rounds": args.soft_rounds,
                **timing,
                "allocator": allocator or "system default",
            },
            "results": rows,
        }
        argv = sys.argv[1:] if argv is None else argv
        report["provenance"]["command"] = " ".join(
            ["python -m benchmarks.layers", *argv]
        )
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
