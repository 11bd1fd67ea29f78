"""The performance targets, checked against the JSON reports.

:func:`target_checks` lists, for one report, every target of its suite with
the measured value (median and quartiles of the per-round ratios), the limit
and whether the median meets it; :func:`targets_table` renders the checks of
several reports as one Markdown table (the first table of
``benchmarks/README.md``).

Each target is also compared with the measurement it replaces: a report
written by ``python -m benchmarks --json FILE`` records, under
``baseline``, the target values of the report that ``FILE`` held before
(or of ``--baseline OTHER.json``), and the table gives, per target, the
change and the verdict of the rule that no committed target may get worse
by more than :data:`REGRESSION_TOLERANCE` (3 %). The plain-path peers
(``implementation: plain``) have their ratios listed beside the targets,
measured, with no limit of their own: the targets are those of the default
``implementation: auto``.

Authors
 * speechbrain-moe contributors 2026
"""

#: (suite, ratio field, limit) of every time target; memory limits below.
TIME_LIMITS = {"table1": 1.10, "scaling": 1.02, "bridge": 0.88}
MEMORY_LIMITS = {"table1": 1.10, "scaling": 1.02, "bridge": 1.0}
SCALING_N64_LIMIT = 1.25
#: Largest tolerated worsening of a target against the measurement it
#: replaces (a ratio 3 % higher than before fails the verdict).
REGRESSION_TOLERANCE = 0.03


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
        "value": value,
        "measured": _ratio_cell(row, field),
        "limit": f"<= {limit:.2f}" + extra,
        "met": None if value is None else value <= limit,
    }


def _measured(what, row, field):
    """A measured value with no limit (peers shown beside the targets)."""
    return {
        "what": what,
        "value": row.get(field),
        "measured": _ratio_cell(row, field),
        "limit": "(measured, no target)",
        "met": None,
    }


def _ours(rows):
    """Rows of the default implementation (not the naive-loop or plain peers)."""
    return [
        r
        for r in rows
        if r["config"].get("implementation") not in ("naive_loop", "plain")
    ]


def _plain(rows):
    """Rows of the ``implementation: plain`` peers."""
    return [r for r in rows if r["config"].get("implementation") == "plain"]


def target_checks(report):
    """Every target check of one report.

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.

    Returns
    -------
    list of dict
        ``what``, ``value`` (the median), ``measured`` (median and
        quartiles, as text), ``limit`` and ``met`` (None when unmeasured or
        without a limit).

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
        for row in _plain(rows):
            name = f"table1 {row['method']} (plain) / adapter"
            checks.append(_measured(name + " time", row, "ratio_to_adapter"))
            checks.append(_measured(name + " memory", row, "mem_ratio_to_adapter"))
            checks.append(
                _measured(
                    f"table1 {row['method']} plain / auto time", row, "ratio_to_auto"
                )
            )
        for row in rows:
            if row["config"].get("implementation") == "naive_loop":
                checks.append(
                    _measured(
                        f"table1 naive-loop {row['method']} / ours (time)",
                        row,
                        "ratio_to_ours",
                    )
                )
    elif suite == "scaling":
        for row in _ours(rows):
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
        for row in _plain(rows):
            cfg = row["config"]
            if cfg.get("sweep") == "frames":
                name = f"scaling soft_moa (plain) / adapter, {cfg['frames']} frames"
                checks.append(_measured(name + " time", row, "ratio_to_adapter"))
                checks.append(_measured(name + " memory", row, "mem_ratio_to_adapter"))
            if cfg.get("num_experts") in (2, 64) and cfg.get("sweep") == "experts":
                name = (
                    f"scaling {row['method']} (plain) r={cfg['bottleneck']} "
                    f"N={cfg['num_experts']}"
                )
                if cfg["num_experts"] == 64:
                    checks.append(_measured(name + " / N=2 time", row, "ratio_to_n2"))
                checks.append(
                    _measured(name + " plain / auto time", row, "ratio_to_auto")
                )
    elif suite == "bridge":
        for row in _ours(rows):
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
        for row in _plain(rows):
            cfg = row["config"]
            name = f"bridge {cfg.get('shape')}/{cfg.get('mode')} moe_adapter (plain)"
            checks.append(_measured(name + " / dense time", row, "ratio_to_dense"))
            checks.append(
                _measured(name + " / dense memory", row, "mem_ratio_to_dense")
            )
            checks.append(_measured(name + " plain / auto time", row, "ratio_to_auto"))
    return checks


def baseline_record(previous):
    """What a new report keeps of the report it replaces: the provenance and
    the value of every target check (see :func:`regression_verdict`).

    Arguments
    ---------
    previous : dict
        The earlier report of the same suite (same device and autocast).

    Returns
    -------
    dict or None
        ``git_commit``, ``date``, ``command`` and ``targets``
        (``what -> median``); None for a smoke (``--quick``) report.

    Example
    -------
    >>> row = {"method": "moe_adapter", "config": {"shape": "small", "mode": "train"},
    ...        "ratio_to_dense": 0.8, "mem_ratio_to_dense": 0.9}
    >>> baseline_record({"suite": "bridge", "results": [row]})["targets"]
    {'bridge small/train moe_adapter / dense time': 0.8, 'bridge small/train moe_adapter / dense memory': 0.9}
    """
    if previous.get("config", {}).get("quick"):
        return None
    prov = previous.get("provenance") or {}
    return {
        "git_commit": prov.get("git_commit"),
        "date": prov.get("date"),
        "command": prov.get("command"),
        "targets": {
            check["what"]: check["value"]
            for check in target_checks(previous)
            if check["value"] is not None
        },
    }


def regression_verdict(check, before):
    """Whether a target kept within :data:`REGRESSION_TOLERANCE` of ``before``.

    Every target is a ratio where lower is better, so a change of ``+x %``
    is a worsening.

    Arguments
    ---------
    check : dict
        One entry of :func:`target_checks`.
    before : float or None
        The value the target had in the report replaced.

    Returns
    -------
    tuple of str
        ``(change, verdict)``: the relative change (``-`` without a value
        before) and ``kept`` / ``**worse by more than 3 %**`` for a target
        with a limit, ``-`` for a value measured without one.

    Example
    -------
    >>> regression_verdict({"value": 1.02, "met": True}, 1.0)
    ('+2.0 %', 'kept')
    >>> regression_verdict({"value": 1.05, "met": True}, 1.0)
    ('+5.0 %', '**worse by more than 3 %**')
    >>> regression_verdict({"value": 1.05, "met": None}, None)
    ('-', '-')
    """
    value = check.get("value")
    if before is None or value is None or before <= 0:
        return "-", "-"
    change = value / before - 1.0
    text = f"{100 * change:+.1f} %"
    if check.get("met") is None:  # measured beside the targets, no limit
        return text, "-"
    if change > REGRESSION_TOLERANCE:
        return text, f"**worse by more than {100 * REGRESSION_TOLERANCE:.0f} %**"
    return text, "kept"


def targets_table(reports):
    """Markdown table of the checks of several reports.

    For a report with a ``baseline`` (see :func:`baseline_record`) each
    target also shows its value before, the change and the verdict of
    :func:`regression_verdict`.

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
    | target | measured: median [IQR] | limit | met | before | change | within 3 % of before |
    """
    lines = [
        "| target | measured: median [IQR] | limit | met | before | change "
        f"| within {100 * REGRESSION_TOLERANCE:.0f} % of before |",
        "|---|---|---|---|---|---|---|",
    ]
    for report in reports:
        if report.get("config", {}).get("quick"):
            continue  # smoke runs check nothing
        where = run_label(report)
        before = (report.get("baseline") or {}).get("targets", {})
        for check in target_checks(report):
            met = {True: "yes", False: "**no**", None: "-"}[check["met"]]
            what = check["what"] + (f" ({where})" if where else "")
            old = before.get(check["what"])
            change, verdict = regression_verdict(check, old)
            old_text = "-" if old is None else f"{old:.3f}"
            lines.append(
                f"| {what} | {check['measured']} | {check['limit']} | {met} "
                f"| {old_text} | {change} | {verdict} |"
            )
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
