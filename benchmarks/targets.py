"""The performance targets, checked against the JSON reports.

:func:`target_checks` lists, for one report, every target of its suite with
the measured value (median and quartiles of the per-round ratios), the limit
and whether the median meets it; :func:`targets_table` renders the checks of
several reports as one Markdown table (the first table of
``benchmarks/README.md``).

Authors
 * speechbrain-moe contributors 2026
"""

#: (suite, ratio field, limit) of every time target; memory limits below.
TIME_LIMITS = {"table1": 1.10, "scaling": 1.02, "bridge": 0.88}
MEMORY_LIMITS = {"table1": 1.10, "scaling": 1.02, "bridge": 1.0}
SCALING_N64_LIMIT = 1.25


def _ratio_cell(row, field):
    """``median [q1-q3]`` of a ratio field."""
    value, iqr = row.get(field), row.get(field + "_iqr")
    if value is None:
        return "-"
    return f"{value:.3f}" + (f" [{iqr[0]:.3f}-{iqr[1]:.3f}]" if iqr else "")


def _check(what, row, field, limit, extra=""):
    """One check: a dict with ``what``, ``measured``, ``limit``, ``met``."""
    value = row.get(field)
    return {
        "what": what,
        "measured": _ratio_cell(row, field),
        "limit": f"<= {limit:.2f}" + extra,
        "met": None if value is None else value <= limit,
    }


def _ours(rows):
    """Rows of our implementations (not the naive-loop peers)."""
    return [r for r in rows if r["config"].get("implementation") != "naive_loop"]


def target_checks(report):
    """Every target check of one report.

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.

    Returns
    -------
    list of dict
        ``what``, ``measured``, ``limit`` and ``met`` (None when unmeasured).

    Example
    -------
    >>> row = {"method": "soft_moa", "config": {"sweep": "frames", "frames": 100},
    ...        "ratio_to_adapter": 1.01, "ratio_to_adapter_iqr": [1.0, 1.02],
    ...        "mem_ratio_to_adapter": None}
    >>> [c["met"] for c in target_checks({"suite": "scaling", "results": [row]})]
    [True, None]
    """
    suite, rows = report["suite"], report["results"]
    checks = []
    time_limit, mem_limit = TIME_LIMITS.get(suite), MEMORY_LIMITS.get(suite)
    if suite == "table1":
        for row in _ours(rows):
            if row["method"] in ("soft_moa", "dense_moa"):
                name = f"table1 {row['method']} / adapter"
                checks.append(
                    _check(name + " time", row, "ratio_to_adapter", time_limit)
                )
                checks.append(
                    _check(name + " memory", row, "mem_ratio_to_adapter", mem_limit)
                )
        for row in rows:
            if row["config"].get("implementation") == "naive_loop":
                checks.append(
                    {
                        "what": f"table1 naive-loop {row['method']} / ours (time)",
                        "measured": _ratio_cell(row, "ratio_to_ours"),
                        "limit": "(measured, no target)",
                        "met": None,
                    }
                )
    elif suite == "scaling":
        for row in rows:
            cfg = row["config"]
            if row["method"] == "soft_moa" and cfg.get("sweep") == "frames":
                name = f"scaling soft_moa / adapter, {cfg['frames']} frames"
                checks.append(
                    _check(name + " time", row, "ratio_to_adapter", time_limit)
                )
                checks.append(
                    _check(name + " memory", row, "mem_ratio_to_adapter", mem_limit)
                )
            if cfg.get("sweep") == "experts" and cfg.get("num_experts") == 64:
                name = f"scaling {row['method']} r={cfg['bottleneck']} N=64 / N=2 time"
                checks.append(_check(name, row, "ratio_to_n2", SCALING_N64_LIMIT))
    elif suite == "bridge":
        for row in rows:
            if row["method"] != "moe_adapter":
                continue
            cfg = row["config"]
            name = f"bridge {cfg.get('shape')}/{cfg.get('mode')} moe_adapter / dense"
            mac = row.get("macs_ratio")
            extra = f" (MAC limit {mac:.2f})" if mac is not None else ""
            checks.append(
                _check(name + " time", row, "ratio_to_dense", time_limit, extra)
            )
            checks.append(
                _check(name + " memory", row, "mem_ratio_to_dense", mem_limit)
            )
    return checks


def targets_table(reports):
    """Markdown table of the checks of several reports.

    Arguments
    ---------
    reports : list of dict
        Reports, in the order to show them.

    Returns
    -------
    str

    Example
    -------
    >>> print(targets_table([]).splitlines()[0])
    | target | measured: median [IQR] | limit | met |
    """
    lines = ["| target | measured: median [IQR] | limit | met |", "|---|---|---|---|"]
    for report in reports:
        if report.get("config", {}).get("quick"):
            continue  # smoke runs check nothing
        where = run_label(report)
        for check in target_checks(report):
            met = {True: "yes", False: "**no**", None: "-"}[check["met"]]
            what = check["what"] + (f" ({where})" if where else "")
            lines.append(f"| {what} | {check['measured']} | {check['limit']} | {met} |")
    return "\n".join(lines)


def run_label(report):
    """``cuda, bf16``-style label of a ``report`` (as in :func:`target_checks`).

    Empty for a float32 run on the CPU.

    Example
    -------
    >>> run_label({"device": "cpu", "config": {}})
    ''
    >>> run_label({"device": "cuda", "config": {"autocast": "bf16"}})
    'cuda, bf16'
    """
    device = str(report.get("device", "cpu"))
    parts = [] if device == "cpu" else [device]
    autocast = report.get("config", {}).get("autocast")
    return ", ".join(parts + ([autocast] if autocast else []))
