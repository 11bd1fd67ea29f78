"""Benchmarks: a mixture of adapters at the cost of one adapter.

Command line::

    python -m benchmarks --suite {table1,scaling,bridge} --json OUT.json \\
        [--quick] [--device cpu|cuda] [--plot OUT.png] [--markdown]

Suites (see :mod:`benchmarks.suites`):

* ``table1``: every registered PETL method with the Soft-MoA paper's settings
  on an AST-base-shaped encoder (random weights), Speech Commands input shape
  (100 frames, 110 tokens), batch 8, full training step; ratios to ``adapter``.
* ``scaling``: Soft-/Dense-MoA step time vs number of experts (bottleneck 1
  and 8), and ``adapter``/``soft_moa`` step time vs input length.
* ``bridge``: the MoE-Adapter audio-to-LLM bridge vs a dense projector of equal
  total size, at the paper's shape and at that shape / 8, for a training step
  with a frozen encoder, with an input gradient, and inference; with active
  parameters and the multiply-add limit of each ratio.
* ``table1`` also times Dense-/Soft-MoA written the reference-code way (a
  Python loop over expert modules, :mod:`benchmarks.naive`) side by side.

Every group of compared cases is timed in one process, interleaved (one step
of each case per round) after a warm-up; medians and quartiles are reported,
ratios are medians of per-round ratios. Steps disturbed by other processes
can be re-run (``--max-others``). Peak memory comes from one fresh
subprocess per case.

Example
-------
>>> report = run_suite("bridge", quick=True, memory=False, log=lambda m: None)
>>> [(r["method"], r["implementation"]) for r in report["results"]][:3]
[('moe_adapter', 'kernel'), ('moe_adapter', 'plain'), ('dense', None)]
>>> validate_report(report)
[]

Authors
 * speechbrain-moe contributors 2026
"""

from benchmarks.core import (
    machine_info,
    measure_memory,
    memory_in_subprocess,
    peak_rss_mb,
    time_interleaved,
)
from benchmarks.report import (
    describe,
    format_table,
    plot_report,
    validate_report,
)
from benchmarks.runner import add_ratios, run_suite, run_worker
from benchmarks.suites import SUITES

__all__ = [
    "SUITES",
    "add_ratios",
    "describe",
    "format_table",
    "machine_info",
    "measure_memory",
    "memory_in_subprocess",
    "peak_rss_mb",
    "plot_report",
    "run_suite",
    "run_worker",
    "time_interleaved",
    "validate_report",
]
