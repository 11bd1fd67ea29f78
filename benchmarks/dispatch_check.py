"""The grouped top-k dispatch against the dense one, on any device and dtype.

``python -m benchmarks.dispatch_check [--device cuda] [--autocast bf16]``

Builds the bridge's sparse layer (:class:`~speechbrain_moe.adapters.SparseMoE`)
at a ``bridge`` suite shape, once with ``dispatch="grouped"`` (each expert
multiplies only its own rows, :class:`~speechbrain_moe.experts.ExpertBank`'s
hand-written backward) and once, with the same weights, with
``dispatch="dense"`` (every expert on every token, mixed by the gates: the
brute-force reference). Runs forward and backward with the input gradient on
the same tokens and compares the outputs and every gradient, relative to the
reference's largest magnitude. It also checks that every parameter of the
grouped layer got a gradient tensor (DDP needs one even for an expert that
received no row). The tests run it on the CPU; on a GPU it is the equality
check of the GPU benchmark runs.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import copy
import json
import sys

import torch

from benchmarks.bridge import bridge_shape, scaled_bridge_shape
from benchmarks.core import AUTOCAST_DTYPES, forward_context, machine_info
from benchmarks.runner import provenance
from speechbrain_moe.adapters import SparseMoE
from speechbrain_moe.routing import routing_context

#: Largest relative difference accepted: float32, and under autocast.
TOLERANCE = {None: 1e-4, "bf16": 3e-2, "fp16": 5e-3}


def _run(layer, x, grad, device, autocast):
    """Output, input gradient and parameter gradients of one forward + backward."""
    x = x.detach().clone().requires_grad_()
    with forward_context({"autocast": autocast}, device), routing_context(layer):
        out = layer(x)  # (the aux loss is reported, not compared)
    out.float().backward(grad)
    grads = {name: p.grad for name, p in layer.named_parameters()}
    return out.detach().float(), x.grad, grads


def compare_dispatch(shape="small", device="cpu", autocast=None, batch=None, time=375):
    """Relative differences between the grouped and the dense dispatch.

    Arguments
    ---------
    shape : str
        A ``bridge`` suite shape (``small``, ``paper``) or ``quick`` (widths / 64).
    device : str
        ``cpu`` or ``cuda``.
    autocast : str, optional
        ``bf16`` or ``fp16``.
    batch : int, optional
        Batch size (default: the suite's for that shape).
    time : int
        Frames per example.

    Returns
    -------
    dict
        ``differences`` (``name -> max |grouped - dense| / max |dense|`` for
        the output, the input gradient and every parameter gradient),
        ``missing_grads`` (parameters of the grouped layer without one),
        ``tolerance`` and ``ok``.

    Example
    -------
    >>> result = compare_dispatch("quick", time=20)
    >>> result["ok"], result["missing_grads"]
    (True, [])
    """
    divisor, default_batch = bridge_shape(shape)
    config = scaled_bridge_shape(divisor)
    torch.manual_seed(0)
    grouped = SparseMoE(
        config["fused_size"],
        num_experts=config["num_experts"],
        top_k=config["top_k"],
        hidden_size=config["expert_hidden"],
        output_size=config["output_size"],
        zero_init_output=False,
        dispatch="grouped",
    ).to(device)
    dense = copy.deepcopy(grouped)
    dense.dispatch = "dense"
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(
        batch or default_batch, time, config["fused_size"], generator=generator
    )
    grad = torch.randn(x.shape[0], time, config["output_size"], generator=generator)
    x, grad = x.to(device), grad.to(device)
    ours = _run(grouped, x, grad, device, autocast)
    reference = _run(dense, x, grad, device, autocast)

    def relative(a, b):
        scale = b.abs().max().clamp(min=1e-12)
        return float((a.float() - b.float()).abs().max() / scale)

    differences = {
        "output": relative(ours[0], reference[0]),
        "input grad": relative(ours[1], reference[1]),
    }
    missing = [name for name, g in ours[2].items() if g is None]
    for name, g in ours[2].items():
        if g is not None and reference[2][name] is not None:
            differences[f"grad {name}"] = relative(g, reference[2][name])
    tolerance = TOLERANCE[autocast]
    return {
        "differences": differences,
        "missing_grads": missing,
        "tolerance": tolerance,
        "ok": not missing and max(differences.values()) <= tolerance,
    }


def main(argv=None):
    """Runs the check at every shape; exit status 1 on a mismatch."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.dispatch_check")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    parser.add_argument("--autocast", choices=sorted(AUTOCAST_DTYPES))
    parser.add_argument(
        "--shapes", default="small,paper", help="Bridge shapes (small, paper, quick)."
    )
    parser.add_argument("--json", help="Write the results to this JSON file.")
    args = parser.parse_args(argv)
    results, ok = {}, True
    for shape in args.shapes.split(","):
        result = compare_dispatch(shape, args.device, args.autocast)
        results[shape] = result
        ok = ok and result["ok"]
        worst = max(result["differences"].items(), key=lambda item: item[1])
        print(
            f"{shape:<6} {args.device} {args.autocast or 'float32'}: "
            f"{'equal' if result['ok'] else 'DIFFERENT'} (largest relative "
            f"difference {worst[1]:.2e} in {worst[0]}, tolerance "
            f"{result['tolerance']:.0e}; parameters without a gradient: "
            f"{result['missing_grads'] or 'none'})"
        )
    if args.json:
        report = {
            "suite": "dispatch_check",
            "device": args.device,
            "autocast": args.autocast,
            "torch": torch.__version__,
            "machine": machine_info(args.device),
            "provenance": provenance(list(sys.argv[1:] if argv is None else argv)),
            "results": results,
        }
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=1)
        print(f"wrote {args.json}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
