"""Runs a suite: memory workers, interleaved timing, ratios, JSON report.

Authors
 * speechbrain-moe contributors 2026
"""

import datetime
import gc
import os
import shutil
import subprocess

import torch

from benchmarks.core import (
    check_autocast,
    keep_freed_memory,
    machine_info,
    measure_memory,
    memory_in_subprocess,
    quartiles,
    reset_peak_rss,
    time_interleaved,
)
from benchmarks.suites import (
    CASE_LISTS,
    SUITES,
    build_step,
    resolved_implementation,
    save_random_ast,
)


def run_worker(spec):
    """Entry point of a memory worker: builds case(s) and measures the peak.

    Arguments
    ---------
    spec : dict
        A case spec with ``device`` and ``checkpoint`` added, plus ``warmup``
        and ``repeats``; or ``{"cases": [spec, ...]}`` to measure several
        cases one after the other in this process (``--quick``: the peak is
        reset between cases, so later cases may reuse freed memory).

    Returns
    -------
    dict or list of dict
        ``peak_mem_mb`` and ``step_mem_mb`` (one per case for a list).

    Example
    -------
    >>> from benchmarks.bridge import bridge_cases
    >>> spec = dict(bridge_cases(quick=True)[1], device="cpu", warmup=1, repeats=1)
    >>> sorted(run_worker(spec))
    ['peak_mem_mb', 'step_mem_mb']
    """
    if "cases" in spec:
        results = []
        for case in spec["cases"]:
            reset_peak_rss()
            results.append(run_worker(case))
        return results
    device = spec.get("device", "cpu")
    return measure_memory(
        lambda: build_step(spec, spec.get("checkpoint"), device)[0],
        warmup=spec.get("warmup", 1),
        repeats=spec.get("repeats", 2),
        device=device,
    )


def paired_ratio(times, reference):
    """Median and quartiles of the per-round ratios ``times[r] / reference[r]``.

    Interleaved rounds make each ratio a side-by-side comparison; its median
    is robust to a round where the machine slowed down for everyone.

    Arguments
    ---------
    times : list of float
        Step times of a case, one per round.
    reference : list of float
        Step times of the reference case, same rounds.

    Returns
    -------
    tuple
        ``(median, q1, q3)`` of the ratios.

    Example
    -------
    >>> paired_ratio([2.0, 2.2, 1.8], [1.0, 1.1, 0.9])
    (2.0, 2.0, 2.0)
    """
    ratios = [t / r for t, r in zip(times, reference)]
    q1, median, q3 = quartiles(ratios)
    return median, q1, q3


def _without_implementation(config):
    """``config`` without its ``implementation`` entry (to pair peers)."""
    return {k: v for k, v in config.items() if k != "implementation"}


def _reference(row, rows):
    """The row ``row`` is compared with, and the name of its ratio field.

    A naive-loop peer is compared with the ``auto`` case of its method
    (``ratio_to_ours``), a plain-path peer with the ``auto`` case of the same
    method and settings (``ratio_to_auto``); other rows have no peer.
    """
    implementation = row["config"].get("implementation")
    if implementation not in ("naive_loop", "plain"):
        return None, None
    same_group = [r for r in rows if r["group"] == row["group"] and r is not row]
    ours = [
        r
        for r in same_group
        if r["method"] == row["method"]
        and r["config"].get("implementation", "auto") == "auto"
        and (
            implementation == "naive_loop"
            or _without_implementation(r["config"])
            == _without_implementation(row["config"])
        )
    ]
    name = "ratio_to_ours" if implementation == "naive_loop" else "ratio_to_auto"
    return (ours[0] if ours else None), name


def _set_ratio(row, name, ref):
    """Fills ``name`` (paired median), ``name_iqr`` and ``mem_name`` on ``row``."""
    if ref is None:
        row[name], row[name + "_iqr"], row["mem_" + name] = None, None, None
        return
    median, q1, q3 = paired_ratio(row["step_ms_all"], ref["step_ms_all"])
    row[name] = round(median, 4)
    row[name + "_iqr"] = [round(q1, 4), round(q3, 4)]
    mem, ref_mem = row.get("peak_mem_mb"), ref.get("peak_mem_mb")
    row["mem_" + name] = round(mem / ref_mem, 4) if mem and ref_mem else None


def add_ratios(results, suite):
    """Fills the ratio fields of every result row (in place).

    Every time ratio is the median of per-round ratios between two cases of
    the same interleaved group (with its quartiles in ``<field>_iqr``):
    ``ratio_to_adapter`` (to the ``adapter`` row with the same frames; null in
    ``bridge``), ``ratio_to_dense`` (``bridge``), ``ratio_to_ours`` (a
    naive-loop peer to our implementation of the same method, with
    ``implementation: auto``), ``ratio_to_auto`` (a plain-path peer to the
    ``auto`` case of the same method and settings: on a device where
    ``auto`` runs the kernels, the plain path's cost relative to them) and
    ``ratio_to_n2`` (the expert sweep of ``scaling``, to N = 2 of the same
    method, bottleneck and implementation). Memory ratios (``mem_<field>``)
    divide peaks.

    Arguments
    ---------
    results : list of dict
        Result rows (with ``group`` and ``step_ms_all``).
    suite : str
        Suite name.

    Returns
    -------
    list of dict
        The same rows.

    Example
    -------
    >>> rows = [{"method": "adapter", "group": "g", "config": {"frames": 100},
    ...          "step_ms_all": [2.0, 2.0], "peak_mem_mb": 10.0},
    ...         {"method": "soft_moa", "group": "g", "config": {"frames": 100},
    ...          "step_ms_all": [2.1, 2.1], "peak_mem_mb": 10.5}]
    >>> add_ratios(rows, "table1")[1]["ratio_to_adapter"]
    1.05
    """
    for row in results:
        cfg = row["config"]
        adapter = next(
            (
                r
                for r in results
                if r["method"] == "adapter"
                and r["group"] == row["group"]
                and r["config"].get("frames") == cfg.get("frames")
            ),
            None,
        )
        _set_ratio(row, "ratio_to_adapter", adapter)
        ref, name = _reference(row, results)
        if name:
            _set_ratio(row, name, ref)
        if suite == "bridge":
            dense = next(
                (
                    r
                    for r in results
                    if r["method"] == "dense" and r["group"] == row["group"]
                ),
                None,
            )
            _set_ratio(row, "ratio_to_dense", dense)
        if suite == "scaling" and cfg.get("sweep") == "experts":
            n2 = next(
                (
                    r
                    for r in results
                    if r["method"] == row["method"]
                    and r["config"].get("sweep") == "experts"
                    and r["config"]["bottleneck"] == cfg["bottleneck"]
                    and r["config"]["num_experts"] == 2
                    and r["config"].get("implementation") == cfg.get("implementation")
                ),
                None,
            )
            _set_ratio(row, "ratio_to_n2", n2)
    return results


#: Rough allowances of :func:`estimate_seconds` (not measured, chosen wide):
#: seconds to start a memory worker (Python, torch and transformers imports,
#: building the case) per case kind, to build a case in the timing process,
#: and to save the random AST checkpoint once per suite.
WORKER_START_S = {"ast": 12.0, "bridge": 6.0}
BUILD_S = {"ast": 1.5, "bridge": 0.5}
CHECKPOINT_S = 10.0
#: Safety margin of an estimate (plain peers are costed at their ``auto``
#: sibling's step time, which the committed reports hold).
ESTIMATE_MARGIN = 1.15


def group_repeats(cases, quick=False, repeats=None, rounds=None):
    """Timed rounds of every group of a suite.

    Arguments
    ---------
    cases : list of dict
        The suite's case specs (each with ``group`` and ``rounds``).
    quick : bool
        Smoke run: 2 rounds everywhere (unless ``repeats`` says otherwise).
    repeats : int, optional
        Rounds of every group (``--repeats``), overriding everything else.
    rounds : dict, optional
        ``group -> rounds`` for some groups (``--rounds GROUP=N``).

    Returns
    -------
    dict
        ``group -> rounds``, in the order the groups are timed.

    Example
    -------
    >>> cases = [{"group": "a", "rounds": 21}, {"group": "b", "rounds": 11}]
    >>> group_repeats(cases, rounds={"b": 5})
    {'a': 21, 'b': 5}
    >>> group_repeats(cases, rounds={"c": 5})
    Traceback (most recent call last):
        ...
    ValueError: --rounds names an unknown group 'c'; this suite's groups are: a, b.
    """
    groups = list(dict.fromkeys(c["group"] for c in cases))
    for group in rounds or {}:
        if group not in groups:
            raise ValueError(
                f"--rounds names an unknown group {group!r}; this suite's groups "
                f"are: {', '.join(groups)}."
            )
    out = {}
    for group in groups:
        if repeats:
            out[group] = repeats
        elif quick:
            out[group] = 2
        elif rounds and group in rounds:
            out[group] = rounds[group]
        else:
            out[group] = next(c["rounds"] for c in cases if c["group"] == group)
    return out


def _step_key(row):
    """What pairs a case with a row of an earlier report: its group, method
    and settings except ``implementation`` (a plain peer is costed at its
    ``auto`` sibling's step), naive-loop peers apart."""
    cfg = {
        k: v
        for k, v in row["config"].items()
        if k not in ("implementation", "dense_hidden")
    }
    naive = row["config"].get("implementation") == "naive_loop"
    return row["group"], row["method"], repr(sorted(cfg.items())), naive


def estimate_seconds(suite, previous, warmup=2, repeats=None, rounds=None, memory=True):
    """Estimated wall time of a full run of ``suite``, from an earlier report.

    Timing: per group, the sum of the earlier median step times of its cases
    times (warm-up + rounds), plus :data:`BUILD_S` per case; memory: per
    measured case, :data:`WORKER_START_S` plus three steps (one warm-up, two
    measured); plus :data:`CHECKPOINT_S`; all times :data:`ESTIMATE_MARGIN`.
    A case the earlier report lacks (a new plain peer) is costed at the
    matching row without ``implementation`` (its ``auto`` sibling), else at
    the median step of its group.

    Arguments
    ---------
    suite : str
        Suite name.
    previous : dict
        An earlier full report of the same suite on the same machine.
    warmup : int
        Warm-up steps per case.
    repeats : int, optional
        As ``--repeats``.
    rounds : dict, optional
        As ``--rounds``.
    memory : bool
        Whether the memory workers run.

    Returns
    -------
    dict
        ``groups`` (``group -> [cases, rounds, seconds]``), ``memory_s``,
        ``total_s`` and ``total_min``.

    Example
    -------
    >>> from benchmarks.suites import bridge_suite_cases
    >>> rows = [dict(c, step_ms_median=100.0) for c in bridge_suite_cases()
    ...         if c["config"].get("implementation") != "plain"]
    >>> out = estimate_seconds("bridge", {"suite": "bridge", "results": rows},
    ...                        memory=False, repeats=8)
    >>> out["groups"]["small/train"]
    [3, 8, 4.5]
    """
    if previous.get("suite") != suite:
        raise ValueError(
            f"--estimate needs an earlier {suite} report (got a "
            f"{previous.get('suite')!r} report)."
        )
    cases = CASE_LISTS[suite](quick=False)
    known = {_step_key(r): r["step_ms_median"] / 1000.0 for r in previous["results"]}
    by_group = {}
    for r in previous["results"]:
        by_group.setdefault(r["group"], []).append(r["step_ms_median"] / 1000.0)
    step_s = []
    for case in cases:
        key = _step_key(case)
        if key in known:
            step_s.append(known[key])
        else:
            times = sorted(by_group.get(case["group"], [1.0]))
            step_s.append(times[len(times) // 2])
    plan = group_repeats(cases, False, repeats, rounds)
    groups = {}
    for group, n_rounds in plan.items():
        members = [i for i, c in enumerate(cases) if c["group"] == group]
        seconds = sum(step_s[i] for i in members) * (warmup + n_rounds)
        seconds += sum(BUILD_S[cases[i]["kind"]] for i in members)
        groups[group] = [len(members), n_rounds, round(seconds, 1)]
    memory_s = 0.0
    if memory:
        memory_s = sum(
            WORKER_START_S[c["kind"]] + 3 * step_s[i]
            for i, c in enumerate(cases)
            if c.get("memory", True)
        )
    checkpoint = CHECKPOINT_S if any(c["kind"] == "ast" for c in cases) else 0.0
    total = ESTIMATE_MARGIN * (
        sum(g[2] for g in groups.values()) + memory_s + checkpoint
    )
    return {
        "groups": groups,
        "memory_s": round(memory_s, 1),
        "total_s": round(total, 1),
        "total_min": round(total / 60.0, 1),
    }


def provenance(command=None):
    """Date, code version and command line of a report.

    Arguments
    ---------
    command : list of str, optional
        The command-line arguments.

    Returns
    -------
    dict

    Example
    -------
    >>> sorted(provenance(["--suite", "bridge"]))
    ['command', 'date', 'git_commit']
    """
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    commit = None
    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty", "--abbrev=12"],
            capture_output=True,
            text=True,
            cwd=repo,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
            timespec="seconds"
        ),
        "git_commit": commit,
        "command": None
        if command is None
        else "python -m benchmarks " + " ".join(command),
    }


def _measure_memories(cases, suite, quick, device, checkpoint, log):
    """Peak memory of every case that wants it: ``index -> result``."""
    wanted = [i for i, spec in enumerate(cases) if spec.get("memory", True)]
    workers = [
        dict(cases[i], device=device, checkpoint=checkpoint, warmup=1) for i in wanted
    ]
    for worker in workers:
        worker["repeats"] = 1 if quick else 2
    if quick:
        log(f"[{suite}] memory: {len(workers)} cases in one subprocess (quick)")
        return dict(zip(wanted, memory_in_subprocess({"cases": workers})))
    memories = {}
    for count, (index, worker) in enumerate(zip(wanted, workers)):
        log(f"[{suite}] memory {count + 1}/{len(wanted)}: {_label(worker)}")
        memories[index] = memory_in_subprocess(worker)
    return memories


def _build_steps(cases, members, checkpoint, device):
    """Step functions and parameter counts of ``cases[i]`` for ``i`` in
    ``members`` (one group; AST lobes of equal length share their frozen
    weights)."""
    steps, counts, bases = {}, {}, {}
    for index in members:
        spec, base = cases[index], None
        if spec["kind"] == "ast":
            frames = spec["config"]["frames"]
            if frames not in bases:
                from speechbrain_moe.lobes.ast import AST

                bases[frames] = AST(checkpoint, max_frames=frames)
            base = bases[frames]
        steps[index], counts[index] = build_step(spec, checkpoint, device, base)
    return steps, counts


def run_suite(
    suite,
    quick=False,
    device="cpu",
    warmup=None,
    repeats=None,
    memory=True,
    log=print,
    max_others=None,
    command=None,
    autocast=None,
    rounds=None,
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
        Timed rounds of every group (default: 2 quick, else each group's
        ``rounds``, see :mod:`benchmarks.suites`).
    memory : bool
        Measure peak memory (one fresh subprocess per case; ``--quick``: one
        for all); else null.
    log : callable
        Progress messages.
    max_others : float, optional
        Contention gate of :func:`benchmarks.core.time_interleaved`.
    command : list of str, optional
        Command-line arguments, recorded in the report.
    autocast : str, optional
        ``bf16`` or ``fp16``: every case's forward pass and loss run under
        ``torch.autocast`` (see :func:`benchmarks.core.forward_context`).
    rounds : dict, optional
        ``group -> timed rounds`` for some groups (``--rounds GROUP=N``);
        ``repeats`` overrides it, and it overrides the suite's own rounds.

    Returns
    -------
    dict
        ``suite``, ``device``, ``torch``, ``machine``, ``provenance``,
        ``config``, ``results``; ``config["implementations"]`` says what
        ``implementation: auto`` ran on this device, and every row's
        ``implementation`` which code it ran (``kernel``, ``plain``,
        ``naive_loop``; null for a method without mixture code).
    """
    if suite not in SUITES:
        raise ValueError(f"Unknown suite {suite!r}; choose one of {', '.join(SUITES)}.")
    if torch.device(device).type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "--device cuda was given but CUDA is not available; use --device cpu."
        )
    warmup = (1 if quick else 2) if warmup is None else warmup
    fixed_repeats = repeats
    check_autocast(autocast)  # before any memory worker starts
    cases = [dict(c, autocast=autocast) for c in CASE_LISTS[suite](quick=quick)]
    group_rounds = group_repeats(cases, quick, repeats, rounds)
    origin = provenance(command)  # the code that is measured, before it runs
    checkpoint = None
    if any(c["kind"] == "ast" for c in cases):
        checkpoint = save_random_ast(cases[0]["model"])
    try:
        memories = {}
        if memory:
            # Memory first: the workers must not be children of a process
            # that already holds every case.
            memories = _measure_memories(cases, suite, quick, device, checkpoint, log)
        # Full CPU runs time steady-state steps (see keep_freed_memory); a
        # quick run, often inside a test process, keeps the system allocator.
        cpu = torch.device(device).type == "cpu"
        allocator = keep_freed_memory() if cpu and not quick else None
        timings, counts = {}, {}
        groups = list(dict.fromkeys(c["group"] for c in cases))
        for group in groups:
            members = [i for i, c in enumerate(cases) if c["group"] == group]
            # Only this group's models are alive while it is timed: the
            # allocator state (and so page faults) does not depend on the
            # other groups' cases.
            steps, group_counts = _build_steps(cases, members, checkpoint, device)
            counts.update(group_counts)
            repeats = group_rounds[group]
            log(
                f"[{suite}] timing group {group}: {len(members)} cases interleaved, "
                f"{warmup} warm-up, {repeats} rounds"
            )
            timings.update(
                time_interleaved(
                    {i: steps[i] for i in members},
                    warmup=warmup,
                    repeats=repeats,
                    device=device,
                    max_others=max_others,
                )
            )
            del steps
            gc.collect()
    finally:
        if checkpoint is not None:
            shutil.rmtree(checkpoint, ignore_errors=True)
    results = [
        _row(spec, timings[i], memories.get(i, {}), counts[i], device)
        for i, spec in enumerate(cases)
    ]
    add_ratios(results, suite)
    first = cases[0]
    config = {
        "quick": quick,
        "warmup": warmup,
        "repeats": fixed_repeats or group_rounds,
        "memory": (
            "subprocess VmHWM (ru_maxrss), glibc mmap threshold 64 KiB"
            if torch.device(device).type == "cpu"
            else "subprocess torch.cuda.max_memory_allocated"
        )
        + ("; quick: one subprocess for all cases" if quick else ""),
        "timing": "interleaved rounds per group, each group built just before "
        "its rounds and freed after (order reversed on odd rounds); "
        "ratios: median of per-round ratios",
        "max_others": max_others,
        "autocast": autocast,
        "allocator": allocator
        or ("system default" if cpu else "PyTorch CUDA caching allocator"),
        "implementations": {
            "auto": resolved_implementation("auto", device),
            "note": "implementation: auto runs the kernels of speechbrain_moe.kernels "
            "on the devices of KERNEL_DEVICES, the plain PyTorch path elsewhere; "
            "each row's 'implementation' is the code it ran",
        },
    }
    if first["kind"] == "ast":
        config.update(
            model=first["model"],
            step="forward + backward + AdamW step (random fbank input, all tokens valid)",
            num_classes=first["num_classes"],
        )
    else:
        config.update(
            step="bridge alone, all frames valid: train = forward + backward with a "
            "frozen encoder (no input gradient); train_input_grad = with the input "
            "gradient; forward = inference"
        )
    return {
        "suite": suite,
        "device": str(device),
        "torch": torch.__version__,
        "machine": machine_info(device),
        "provenance": origin,
        "config": config,
        "results": results,
    }


def _row(spec, timing, memory_row, count, device="cpu"):
    """The JSON row of one case."""
    row = {
        "method": spec["method"],
        "implementation": resolved_implementation(
            spec["config"].get("implementation"), device
        ),
        "group": spec["group"],
        "config": spec["config"],
        "settings": spec.get("settings", {}),
        "total_params": count["total"],
        "trainable_params": count["trainable"],
        "trainable_params_no_head": count["trainable_no_head"],
        "step_ms_median": round(timing["median_ms"], 3),
        "step_ms_min": round(timing["min_ms"], 3),
        "step_ms_iqr": [round(timing["q1_ms"], 3), round(timing["q3_ms"], 3)],
        "step_ms_all": [round(t, 3) for t in timing["times_ms"]],
        "others_cpu": timing["others"],
        "retries": timing["retries"],
        "kept_disturbed": timing["kept_disturbed"],
        "peak_mem_mb": memory_row.get("peak_mem_mb"),
        "step_mem_mb": memory_row.get("step_mem_mb"),
    }
    if "active" in count:
        row["active_params"] = count["active"]
        row["active_ratio"] = round(count["active"] / count["total"], 4)
        row["macs_per_token"] = count["macs_per_token"]
        row["macs_ratio"] = round(count["macs_ratio"], 4)
        row["config"] = dict(row["config"], dense_hidden=count["dense_hidden"])
    return row


def _label(spec):
    """Short description of a case for progress messages."""
    cfg = spec["config"]
    parts = [spec["method"]] + [
        f"{k}={cfg[k]}"
        for k in ("num_experts", "bottleneck", "frames", "shape", "mode")
        if cfg.get(k) is not None
    ]
    if spec.get("naive"):
        parts.append("(naive loop)")
    elif cfg.get("implementation") == "plain":
        parts.append("(plain)")
    return " ".join(parts)
