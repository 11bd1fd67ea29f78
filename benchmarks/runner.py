"""Runs a suite: memory workers, interleaved timing, ratios, JSON report.

Authors
 * speechbrain-moe contributors 2026
"""

import shutil

import torch

from benchmarks.core import (
    machine_info,
    measure_memory,
    memory_in_subprocess,
    time_interleaved,
)
from benchmarks.suites import (
    CASE_LISTS,
    SUITES,
    build_step,
    save_random_ast,
)


def run_worker(spec):
    """Entry point of a memory worker: builds ``spec`` and measures its peak.

    Arguments
    ---------
    spec : dict
        A case spec with ``device`` and ``checkpoint`` added, plus ``warmup``
        and ``repeats``.

    Returns
    -------
    dict
        ``peak_mem_mb`` and ``step_mem_mb``.

    Example
    -------
    >>> from benchmarks.suites import bridge_cases
    >>> spec = dict(bridge_cases(quick=True)[1], device="cpu", warmup=1, repeats=1)
    >>> sorted(run_worker(spec))
    ['peak_mem_mb', 'step_mem_mb']
    """
    device = spec.get("device", "cpu")
    return measure_memory(
        lambda: build_step(spec, spec.get("checkpoint"), device)[0],
        warmup=spec.get("warmup", 1),
        repeats=spec.get("repeats", 2),
        device=device,
    )


def _ratio(value, reference):
    """``value / reference`` rounded, or None."""
    if value is None or not reference:
        return None
    return round(value / reference, 4)


def add_ratios(results, suite):
    """Fills the ratio fields of every result row (in place).

    ``ratio_to_adapter`` / ``mem_ratio_to_adapter``: to the ``adapter`` row
    with the same frames (null when the suite has none, as ``bridge``);
    ``ratio_to_dense`` in ``bridge``; ``ratio_to_n2`` for the expert sweep of
    ``scaling`` (to the N = 2 row of the same method and bottleneck).

    Arguments
    ---------
    results : list of dict
        Result rows.
    suite : str
        Suite name.

    Returns
    -------
    list of dict
        The same rows.

    Example
    -------
    >>> rows = [{"method": "adapter", "config": {"frames": 100}, "step_ms_median": 2.0,
    ...          "peak_mem_mb": 10.0},
    ...         {"method": "soft_moa", "config": {"frames": 100}, "step_ms_median": 2.1,
    ...          "peak_mem_mb": 10.5}]
    >>> add_ratios(rows, "table1")[1]["ratio_to_adapter"]
    1.05
    """
    adapters = {
        r["config"].get("frames"): r for r in results if r["method"] == "adapter"
    }
    for row in results:
        ref = adapters.get(row["config"].get("frames"))
        row["ratio_to_adapter"] = _ratio(
            row["step_ms_median"], ref and ref["step_ms_median"]
        )
        row["mem_ratio_to_adapter"] = _ratio(
            row["peak_mem_mb"], ref and ref["peak_mem_mb"]
        )
    if suite == "bridge":
        dense = next((r for r in results if r["method"] == "dense"), None)
        for row in results:
            row["ratio_to_dense"] = _ratio(
                row["step_ms_median"], dense and dense["step_ms_median"]
            )
            row["mem_ratio_to_dense"] = _ratio(
                row["peak_mem_mb"], dense and dense["peak_mem_mb"]
            )
    if suite == "scaling":
        for row in results:
            cfg = row["config"]
            if cfg.get("sweep") != "experts":
                continue
            ref = next(
                (
                    r
                    for r in results
                    if r["method"] == row["method"]
                    and r["config"].get("sweep") == "experts"
                    and r["config"]["bottleneck"] == cfg["bottleneck"]
                    and r["config"]["num_experts"] == 2
                ),
                None,
            )
            row["ratio_to_n2"] = _ratio(
                row["step_ms_median"], ref and ref["step_ms_median"]
            )
    return results


def run_suite(
    suite, quick=False, device="cpu", warmup=None, repeats=None, memory=True, log=print
):
    """Runs one suite and returns its report (the JSON document).

    Arguments
    ---------
    suite : str
        ``table1``, ``scaling`` or ``bridge``.
    quick : bool
        Tiny shapes, one warm-up step and two timed rounds (smoke test).
    device : str
        ``cpu`` or ``cuda``.
    warmup : int, optional
        Warm-up steps per case (default 1 quick, 2 full).
    repeats : int, optional
        Timed rounds (default 2 quick, 7 full).
    memory : bool
        Measure peak memory (one fresh subprocess per case); else null.
    log : callable
        Progress messages.

    Returns
    -------
    dict
        ``suite``, ``device``, ``torch``, ``machine``, ``config``, ``results``.
    """
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; choose one of {', '.join(SUITES)}.")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was given but CUDA is not available; use --device cpu."
        )
    warmup = (1 if quick else 2) if warmup is None else warmup
    repeats = (2 if quick else 7) if repeats is None else repeats
    cases = CASE_LISTS[suite](quick=quick)
    checkpoint = None
    if any(c["kind"] == "ast" for c in cases):
        checkpoint = save_random_ast(cases[0]["model"])
    try:
        memories = {}
        if memory:
            # Memory first: the workers must not be children of a process
            # that already holds every case.
            for index, spec in enumerate(cases):
                log(f"[{suite}] memory {index + 1}/{len(cases)}: {_label(spec)}")
                worker = dict(spec, device=device, checkpoint=checkpoint)
                worker.update(warmup=1, repeats=1 if quick else 2)
                memories[index] = memory_in_subprocess(worker)
        steps, counts = {}, {}
        bases = {}
        for index, spec in enumerate(cases):
            base = None
            if spec["kind"] == "ast":
                frames = spec["config"]["frames"]
                if frames not in bases:
                    from speechbrain_moe.lobes.ast import AST

                    bases[frames] = AST(checkpoint, max_frames=frames)
                base = bases[frames]
            steps[index], counts[index] = build_step(spec, checkpoint, device, base)
        log(
            f"[{suite}] timing {len(cases)} cases interleaved: {warmup} warm-up, {repeats} rounds"
        )
        timings = time_interleaved(
            {str(i): s for i, s in steps.items()},
            warmup=warmup,
            repeats=repeats,
            device=device,
        )
    finally:
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
    results = []
    for index, spec in enumerate(cases):
        timing = timings[str(index)]
        memory_row = memories.get(index, {})
        row = {
            "method": spec["method"],
            "config": spec["config"],
            "settings": spec.get("settings", {}),
            "total_params": counts[index]["total"],
            "trainable_params": counts[index]["trainable"],
            "trainable_params_no_head": counts[index]["trainable_no_head"],
            "step_ms_median": round(timing["median_ms"], 3),
            "step_ms_min": round(timing["min_ms"], 3),
            "step_ms_all": [round(t, 3) for t in timing["times_ms"]],
            "peak_mem_mb": memory_row.get("peak_mem_mb"),
            "step_mem_mb": memory_row.get("step_mem_mb"),
        }
        if "active" in counts[index]:
            row["active_params"] = counts[index]["active"]
            row["config"] = dict(
                row["config"], dense_hidden=counts[index]["dense_hidden"]
            )
        results.append(row)
    add_ratios(results, suite)
    first = cases[0]
    config = {
        "quick": quick,
        "warmup": warmup,
        "repeats": repeats,
        "memory": "subprocess VmHWM (ru_maxrss)"
        if torch.device(device).type == "cpu"
        else "subprocess torch.cuda.max_memory_allocated",
        "timing": "interleaved rounds, median",
    }
    if first["kind"] == "ast":
        config.update(
            model=first["model"],
            step="forward + backward + AdamW step (random fbank input, all tokens valid)",
            num_classes=first["num_classes"],
        )
    else:
        config.update(step="forward + backward (bridge alone, all frames valid)")
    return {
        "suite": suite,
        "device": str(device),
        "torch": torch.__version__,
        "machine": machine_info(device),
        "config": config,
        "results": results,
    }


def _label(spec):
    """Short description of a case for progress messages."""
    cfg = spec["config"]
    parts = [spec["method"]] + [
        f"{k}={cfg[k]}"
        for k in ("num_experts", "bottleneck", "frames")
        if cfg.get(k) is not None
    ]
    return " ".join(parts)
