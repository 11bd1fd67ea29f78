"""Command line of the benchmark tool: ``python -m benchmarks``.

Example
-------
>>> parse_args(["--suite", "bridge", "--json", "out.json", "--quick"]).quick
True

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import os
import sys

from benchmarks.core import AUTOCAST_DTYPES
from benchmarks.report import (
    describe,
    format_table,
    implementation_table,
    plot_report,
)
from benchmarks.runner import run_suite, run_worker
from benchmarks.suites import SUITES
from benchmarks.targets import baseline_record, targets_table


def parse_args(argv=None):
    """Parses the command line.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    argparse.Namespace
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="Step-time and memory benchmarks of the PETL methods.",
    )
    parser.add_argument(
        "--suite",
        choices=[*SUITES, "accuracy"],
        help="Which suite to run (accuracy: benchmarks/accuracy.py, its own options).",
    )
    parser.add_argument("--json", help="Write the report to this JSON file.")
    parser.add_argument(
        "--quick", action="store_true", help="Tiny shapes: a smoke test."
    )
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu).")
    parser.add_argument(
        "--autocast",
        choices=sorted(AUTOCAST_DTYPES),
        help="Run forward passes and losses under torch.autocast (default: float32).",
    )
    parser.add_argument(
        "--plot", help="Draw the report to this image file (matplotlib)."
    )
    parser.add_argument(
        "--markdown", action="store_true", help="Print a Markdown table too."
    )
    parser.add_argument("--warmup", type=int, help="Warm-up steps per case.")
    parser.add_argument(
        "--repeats", type=int, help="Timed interleaved rounds of every group."
    )
    parser.add_argument(
        "--rounds",
        action="append",
        metavar="GROUP=N",
        default=[],
        help="Timed rounds of one group (repeatable; e.g. --rounds frames=1000=7 "
        "--rounds experts=5); --repeats overrides it. The groups of a suite are "
        "listed by --estimate.",
    )
    parser.add_argument(
        "--estimate",
        metavar="PREVIOUS_JSON",
        help="Print the estimated wall time of this run (suite, --warmup, "
        "--repeats, --rounds, --no-memory) from the step times of an earlier "
        "report of the suite, and exit without running anything.",
    )
    parser.add_argument(
        "--no-memory",
        action="store_true",
        help="Skip the per-case memory subprocesses.",
    )
    parser.add_argument(
        "--threads", type=int, help="torch.set_num_threads (default: torch's)."
    )
    parser.add_argument(
        "--max-others",
        type=float,
        help="Re-run a timed step during which other processes used more than "
        "this share of the CPUs (default 0.15; 1 keeps every step; --quick: 1).",
    )
    parser.add_argument(
        "--baseline",
        metavar="EARLIER_JSON",
        help="Report whose target values this run is compared with (the 3 %% "
        "rule of benchmarks/targets.py; default: the --json file being replaced, "
        "when it holds a full report of the same suite, device and autocast).",
    )
    parser.add_argument("--memory-worker", metavar="SPEC", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def parse_rounds(values):
    """``GROUP=N`` options as a dict (the group name may contain ``=``).

    Arguments
    ---------
    values : list of str
        The ``--rounds`` values.

    Returns
    -------
    dict
        ``group -> rounds``.

    Example
    -------
    >>> parse_rounds(["frames=1000=7", "experts=5"])
    {'frames=1000': 7, 'experts': 5}
    """
    out = {}
    for value in values:
        group, _, count = value.rpartition("=")
        if not group or not count.isdigit() or int(count) < 1:
            raise SystemExit(
                f"error: --rounds {value!r}: write GROUP=N with N a positive "
                "integer, e.g. --rounds frames=1000=7."
            )
        out[group] = int(count)
    return out


def load_baseline(args):
    """The earlier report a run is compared with, or None.

    ``--baseline`` if given (it must hold a report of the same suite);
    else the ``--json`` file about to be replaced, when it holds a full
    (not ``--quick``) report of the same suite, device and autocast.

    Arguments
    ---------
    args : argparse.Namespace
        Parsed command line.

    Returns
    -------
    dict or None

    Example
    -------
    >>> load_baseline(parse_args(["--suite", "bridge", "--json", "/nonexistent.json"])) is None
    True
    """
    path = args.baseline or args.json
    if not path or not os.path.exists(path):
        if args.baseline:
            raise SystemExit(f"error: --baseline {path}: no such file.")
        return None
    with open(path) as handle:
        previous = json.load(handle)
    same = (
        isinstance(previous, dict)
        and previous.get("suite") == args.suite
        and previous.get("device") == args.device
        and previous.get("config", {}).get("autocast") == args.autocast
    )
    if args.baseline and not same:
        raise SystemExit(
            f"error: --baseline {path} holds no {args.suite} report on "
            f"{args.device} (autocast {args.autocast}); give the earlier JSON of "
            "the same suite and device."
        )
    if not same or previous["config"].get("quick"):
        return None
    return previous


def main(argv=None):
    """Runs a suite (or, internally, one memory worker).

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments.

    Returns
    -------
    int
        Exit status.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "accuracy" in argv and argv[argv.index("accuracy") - 1] == "--suite":
        # Real-weights accuracy (its own options: --seeds, --methods, --tasks, ...).
        from benchmarks.accuracy import main as accuracy_main

        at = argv.index("accuracy")
        accuracy_main(argv[: at - 1] + argv[at + 1 :])
        return 0
    args = parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    if args.memory_worker:
        print(json.dumps(run_worker(json.loads(args.memory_worker))))
        return 0
    if not args.suite:
        print(
            "error: --suite is required (table1, scaling or bridge).", file=sys.stderr
        )
        return 2

    rounds = parse_rounds(args.rounds)
    if args.estimate:
        from benchmarks.runner import estimate_seconds

        with open(args.estimate) as handle:
            previous = json.load(handle)
        warmup = 2 if args.warmup is None else args.warmup
        estimate = estimate_seconds(
            args.suite, previous, warmup, args.repeats, rounds, not args.no_memory
        )
        for group, (cases, n_rounds, seconds) in estimate["groups"].items():
            print(f"{group}: {cases} cases, {n_rounds} rounds, ~{seconds / 60:.1f} min")
        print(f"memory workers: ~{estimate['memory_s'] / 60:.1f} min")
        print(f"total (with margin): ~{estimate['total_min']} min")
        return 0

    baseline = None if args.quick else load_baseline(args)

    def log(message):
        """Progress line on stderr."""
        print(message, file=sys.stderr, flush=True)

    max_others = args.max_others
    if max_others is None:
        max_others = None if args.quick else 0.15
    if max_others is not None and max_others >= 1:
        max_others = None
    report = run_suite(
        args.suite,
        quick=args.quick,
        device=args.device,
        warmup=args.warmup,
        repeats=args.repeats,
        memory=not args.no_memory,
        log=log,
        max_others=max_others,
        command=list(sys.argv[1:] if argv is None else argv),
        autocast=args.autocast,
        rounds=rounds,
    )
    if args.threads:
        report["config"]["threads"] = args.threads
    if baseline is not None:
        report["baseline"] = baseline_record(baseline)
    print(format_table(report))
    side_by_side = implementation_table(report)
    if side_by_side:
        print()
        print(side_by_side)
    if args.markdown:
        print()
        print(describe(report))
        print()
        print(format_table(report, markdown=True))
        if side_by_side:
            print()
            print(implementation_table(report, markdown=True))
    if not args.quick:
        print()
        print(targets_table([report]))
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
            handle.write("\n")
        log(f"wrote {args.json}")
    if args.plot:
        plot_report(report, args.plot)
        log(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
