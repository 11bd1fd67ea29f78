"""Rendering of benchmark reports: console table, Markdown, plots, schema check.

Authors
 * speechbrain-moe contributors 2026
"""

REPORT_KEYS = ("suite", "device", "torch", "config", "results")
ROW_KEYS = (
    "method",
    "config",
    "trainable_params",
    "trainable_params_no_head",
    "step_ms_median",
    "step_ms_min",
    "peak_mem_mb",
    "ratio_to_adapter",
)
#: The issue's targets, per suite.
TARGETS = {
    "table1": "soft_moa, dense_moa: step time and peak memory <= 1.10x adapter; "
    "naive-loop peers (reference-code style) timed side by side",
    "scaling": "soft_moa step time and peak memory <= 1.02x adapter at 100, 400 "
    "and 1000 frames; Soft-/Dense-MoA step time at N=64 <= 1.25x N=2",
    "bridge": "moe_adapter step time <= 0.88x dense and peak memory <= 1.0x "
    "dense (equal total parameters), at both shapes",
}
#: Order of the suites in rendered documents.
SUITE_ORDER = {"table1": 0, "scaling": 1, "bridge": 2}
#: Methods with a plain and a kernel path (an ``implementation`` setting):
#: the mixtures of adapters and the mixtures of LoRA experts (those
#: registered; ``benchmarks.suites`` gives each case of them a plain peer).
MIXTURE_METHODS = (
    "dense_moa",
    "soft_moa",
    "moe_adapter",
    "dense_lora",
    "soft_lora",
    "moe_lora",
)
#: Paper Table 1 ratios to the single adapter (GPU, ms 513 / 626 / 1689).
PAPER_RATIOS = {"adapter": 1.0, "soft_moa": 1.22, "dense_moa": 3.29, "lora": 1.02}


def validate_report(report):
    """Checks a report against the JSON schema of the benchmark tool.

    Arguments
    ---------
    report : dict
        A loaded JSON report.

    Returns
    -------
    list of str
        Problems found (empty when the report is valid).

    Example
    -------
    >>> validate_report({"suite": "bridge"})[0]
    "missing top-level key 'device'"
    """
    problems = [f"missing top-level key {k!r}" for k in REPORT_KEYS if k not in report]
    for i, row in enumerate(report.get("results", [])):
        problems += [f"row {i}: missing key {k!r}" for k in ROW_KEYS if k not in row]
        for key in ("step_ms_median", "step_ms_min"):
            value = row.get(key)
            if not isinstance(value, (int, float)) or value <= 0:
                problems.append(
                    f"row {i}: {key} must be a positive number, got {value!r}"
                )
        if not isinstance(row.get("config", {}), dict):
            problems.append(f"row {i}: config must be a dict")
    if "results" in report and not report["results"]:
        problems.append("no results")
    return problems


def _fmt(value, spec=".2f"):
    """Formats numbers, shows missing values as ``-``."""
    if value is None:
        return "-"
    return format(value, spec)


def _spread(row, key, spec=".2f"):
    """``median [q1-q3]`` of a field with an ``_iqr`` companion."""
    value, iqr = row.get(key), row.get(key + "_iqr")
    if value is None:
        return "-"
    if not iqr:
        return format(value, spec)
    return f"{value:{spec}} [{iqr[0]:{spec}}-{iqr[1]:{spec}}]"


def _step_ms(row):
    """Median step time with its quartiles."""
    iqr = row.get("step_ms_iqr")
    if not iqr:
        return _fmt(row["step_ms_median"], ".1f")
    return f"{row['step_ms_median']:.1f} [{iqr[0]:.1f}-{iqr[1]:.1f}]"


def _row_label(row):
    """Method plus the varying settings of a row."""
    cfg = row["config"]
    extra = []
    if cfg.get("sweep") in ("experts", "frames"):
        if cfg.get("num_experts") is not None:
            extra.append(f"N={cfg['num_experts']}")
        if cfg.get("bottleneck") is not None:
            extra.append(f"r={cfg['bottleneck']}")
        extra.append(f"frames={cfg['frames']}")
    if cfg.get("implementation") == "naive_loop":
        extra.append("naive loop")
    elif cfg.get("implementation") == "plain":
        extra.append("plain")
    return row["method"] + (f" ({', '.join(extra)})" if extra else "")


def implementation_ran(row):
    """Which code a row ran: ``kernel``, ``plain``, ``naive loop`` or ``-``.

    Reports written before the plain paths existed have no ``implementation``
    field: their mixture rows ran the kernels (the only path then).

    Arguments
    ---------
    row : dict
        A result row.

    Returns
    -------
    str

    Example
    -------
    >>> implementation_ran({"method": "soft_moa", "implementation": "plain", "config": {}})
    'plain'
    >>> implementation_ran({"method": "soft_moa", "config": {}})
    'kernel'
    >>> implementation_ran({"method": "adapter", "config": {}})
    '-'
    """
    if row["config"].get("implementation") == "naive_loop":
        return "naive loop"
    if "implementation" in row:
        return row["implementation"] or "-"
    return "kernel" if row["method"] in MIXTURE_METHODS else "-"


def _columns(report):
    """(header, cell function) pairs for a suite's table."""
    suite = report["suite"]
    if suite == "bridge":
        return [
            ("shape", lambda r: r["config"].get("shape", "-")),
            ("step", lambda r: r["config"].get("mode", "train")),
            ("method", _row_label),
            ("ran", implementation_ran),
            ("total params", lambda r: f"{r['total_params']:,}"),
            ("active / total", lambda r: _fmt(r.get("active_ratio"))),
            ("MAC limit", lambda r: _fmt(r.get("macs_ratio"))),
            ("step ms [IQR]", _step_ms),
            ("peak MB", lambda r: _fmt(r["peak_mem_mb"], ".0f")),
            ("time / dense [IQR]", lambda r: _spread(r, "ratio_to_dense", ".3f")),
            ("mem / dense", lambda r: _fmt(r.get("mem_ratio_to_dense"), ".3f")),
            ("plain / auto [IQR]", lambda r: _spread(r, "ratio_to_auto", ".3f")),
        ]
    cols = [
        ("method", _row_label),
        ("ran", implementation_ran),
        ("trainable (no head)", lambda r: f"{r['trainable_params_no_head']:,}"),
        ("step ms [IQR]", _step_ms),
        ("peak MB", lambda r: _fmt(r["peak_mem_mb"], ".0f")),
        ("time / adapter [IQR]", lambda r: _spread(r, "ratio_to_adapter", ".3f")),
        ("mem / adapter", lambda r: _fmt(r.get("mem_ratio_to_adapter"), ".3f")),
        ("plain / auto [IQR]", lambda r: _spread(r, "ratio_to_auto", ".3f")),
    ]
    if suite == "scaling":
        cols.append(("time / N=2 [IQR]", lambda r: _spread(r, "ratio_to_n2", ".3f")))
    if suite == "table1":
        cols += [
            ("naive / ours [IQR]", lambda r: _spread(r, "ratio_to_ours", ".2f")),
            ("paper time / adapter", lambda r: _fmt(PAPER_RATIOS.get(r["method"]))),
        ]
    return cols


def format_table(report, markdown=False):
    """The results of a report as a table: fixed-width for the console, or
    Markdown (what ``benchmarks/README.md`` shows).

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.
    markdown : bool
        Markdown rows instead of padded columns under a title line.

    Returns
    -------
    str

    Example
    -------
    >>> rep = {"suite": "bridge", "device": "cpu", "results": [{"method": "dense",
    ...        "config": {"shape": "small", "mode": "train"}, "total_params": 10,
    ...        "active_ratio": 1.0, "macs_ratio": 1.0, "step_ms_median": 1.0,
    ...        "step_ms_iqr": [0.9, 1.1], "step_ms_min": 0.9, "peak_mem_mb": None,
    ...        "ratio_to_adapter": None, "ratio_to_dense": 1.0}]}
    >>> print(format_table(rep, markdown=True).splitlines()[2])
    | small | train | dense | - | 10 | 1.00 | 1.00 | 1.0 [0.9-1.1] | - | 1.000 | - | - |
    >>> print(format_table(rep).splitlines()[2].split()[:3])
    ['small', 'train', 'dense']
    """
    cols = _columns(report)
    rows = [[h for h, _ in cols]]
    rows += [[fn(r) for _, fn in cols] for r in report["results"]]
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in cols) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(cols))]
    title = f"suite {report['suite']} on {report['device']}"
    if report.get("config", {}).get("quick"):
        title += "  ** QUICK SMOKE RUN: tiny shapes, timings not comparable **"
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    return "\n".join([title] + lines)


def implementation_pairs(report):
    """The ``(auto row, plain row)`` pairs of a report: every mixture case
    and its ``implementation: plain`` peer (same group, method and settings).

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.

    Returns
    -------
    list of tuple
        In the order of the ``auto`` rows; empty for a report without plain
        peers (written before they existed).

    Example
    -------
    >>> auto = {"method": "soft_moa", "group": "g", "config": {"implementation": "auto"}}
    >>> plain = {"method": "soft_moa", "group": "g", "config": {"implementation": "plain"}}
    >>> implementation_pairs({"results": [auto, plain]}) == [(auto, plain)]
    True
    """

    def key(row):
        cfg = {k: v for k, v in row["config"].items() if k != "implementation"}
        return row["group"], row["method"], repr(sorted(cfg.items()))

    plain = {
        key(r): r
        for r in report["results"]
        if r["config"].get("implementation") == "plain"
    }
    return [
        (r, plain[key(r)])
        for r in report["results"]
        if r["config"].get("implementation") == "auto" and key(r) in plain
    ]


def implementation_table(report, markdown=False):
    """Kernel and plain path side by side: one line per mixture case.

    Each line gives what ``implementation: auto`` ran on the report's device,
    both step times, the plain path's time relative to ``auto`` (median of
    the per-round ratios, timed in the same rounds), each one's time and
    peak memory relative to the suite's reference (the single adapter; the
    dense projector in ``bridge``), so that a user on another device can see
    what each path costs.

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.
    markdown : bool
        Markdown rows instead of padded columns.

    Returns
    -------
    str
        The table; empty when the report has no plain peers.

    Example
    -------
    >>> rows = [{"method": "soft_moa", "group": "g", "implementation": impl,
    ...          "config": {"implementation": setting}, "step_ms_median": ms,
    ...          "ratio_to_adapter": ratio, "mem_ratio_to_adapter": 1.0,
    ...          "ratio_to_auto": None if setting == "auto" else 1.2}
    ...         for impl, setting, ms, ratio in (("kernel", "auto", 10.0, 1.0),
    ...                                          ("plain", "plain", 12.0, 1.2))]
    >>> rep = {"suite": "table1", "device": "cpu", "results": rows}
    >>> print(implementation_table(rep, markdown=True).splitlines()[2])
    | soft_moa | kernel | 10.0 | 12.0 | 1.200 | 1.000 | 1.200 | 1.000 | 1.000 |
    """
    pairs = implementation_pairs(report)
    if not pairs:
        return ""
    ref = "dense" if report["suite"] == "bridge" else "adapter"
    field = f"ratio_to_{ref}"

    def label(row):
        cfg = row["config"]
        if report["suite"] == "bridge":
            return f"{cfg.get('shape')}/{cfg.get('mode')} {row['method']}"
        return _row_label(row)

    rows = [
        [
            "case",
            "auto ran",
            "auto ms",
            "plain ms",
            "plain / auto [IQR]",
            f"auto / {ref}",
            f"plain / {ref}",
            f"auto mem / {ref}",
            f"plain mem / {ref}",
        ]
    ]
    for auto, plain in pairs:
        rows.append(
            [
                label(auto),
                implementation_ran(auto),
                _fmt(auto["step_ms_median"], ".1f"),
                _fmt(plain["step_ms_median"], ".1f"),
                _spread(plain, "ratio_to_auto", ".3f"),
                _fmt(auto.get(field), ".3f"),
                _fmt(plain.get(field), ".3f"),
                _fmt(auto.get("mem_" + field), ".3f"),
                _fmt(plain.get("mem_" + field), ".3f"),
            ]
        )
    if markdown:
        lines = ["| " + " | ".join(row) + " |" for row in rows]
        lines.insert(1, "|" + "|".join("---" for _ in rows[0]) + "|")
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    title = f"{report['suite']}: kernel and plain path side by side"
    return "\n".join(
        [title] + ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    )


def describe(report):
    """One Markdown paragraph naming the machine, settings and target.

    Arguments
    ---------
    report : dict

    Returns
    -------
    str

    Example
    -------
    >>> describe({"suite": "bridge", "device": "cpu", "torch": "2.11", "config": {}})[:22]
    '**bridge** (cpu, torch'
    """
    machine = report.get("machine", {})
    cfg = report.get("config", {})
    parts = [f"**{report['suite']}** ({report['device']}, torch {report['torch']}"]
    if machine:
        parts.append(
            f", {machine.get('cpu')}, {machine.get('cpu_count')} cores, "
            f"{machine.get('torch_threads')} threads"
            + (f", {machine['gpu']}" if machine.get("gpu") else "")
        )
    prov = report.get("provenance") or {}
    if prov.get("date"):
        parts.append(f"; {prov['date'][:10]}, code {prov.get('git_commit')}")
    parts.append(")")
    if cfg:
        rounds = cfg.get("repeats")
        if isinstance(rounds, dict):
            rounds = ", ".join(f"{n} ({g})" for g, n in rounds.items())
        parts.append(
            f". Step: {cfg.get('step', '-')}; {cfg.get('warmup')} warm-up, "
            f"interleaved rounds: {rounds}; memory: {cfg.get('memory')}"
        )
        if cfg.get("autocast"):
            parts.append(f"; forward under torch.autocast {cfg['autocast']}")
        if cfg.get("allocator"):
            parts.append(f"; timing allocator: {cfg['allocator']}")
        if cfg.get("implementations"):
            parts.append(
                f"; `implementation: auto` ran the "
                f"{cfg['implementations']['auto']} path on this device, and every "
                "mixture was also timed with `implementation: plain` in the same "
                "rounds (rows marked plain)"
            )
        rows = report.get("results", [])
        if cfg.get("max_others") is not None and rows:
            retries = sum(r.get("retries", 0) for r in rows)
            kept = sum(r.get("kept_disturbed", 0) for r in rows)
            parts.append(
                f"; steps during which other processes used more than "
                f"{cfg['max_others']:.0%} of the CPUs were re-run ({retries} "
                f"re-runs, {kept} kept after 10 re-runs)"
            )
        if cfg.get("quick"):
            parts.append(" **(quick smoke run: shapes shrunk, timings meaningless)**")
    if prov.get("command"):
        parts.append(f". Command: `{prov['command']}`")
    base = report.get("baseline")
    if base:
        parts.append(
            f". Targets compared with the report this one replaced (code "
            f"{base.get('git_commit')}, {str(base.get('date'))[:10]})"
        )
    parts.append(
        f". Cells: median [first-third quartile]; ratios are medians of per-round "
        f"ratios. Target: {TARGETS.get(report['suite'], '-')}."
    )
    return "".join(parts)


def plot_report(report, path):
    """Draws a report with matplotlib and saves it to ``path``.

    ``table1`` and ``bridge``: one bar per case (median step time, with the
    ratio to the reference written on each bar; mixtures in orange, their
    ``implementation: plain`` peers in green, naive-loop peers in grey). ``scaling``: step time vs
    number of experts (one line per method, bottleneck and implementation,
    dashed for the plain path) and step time vs frames.

    Arguments
    ---------
    report : dict
        A report of :func:`benchmarks.run_suite`.
    path : str
        Output image file (``.png``, ``.pdf``, ...).

    Returns
    -------
    str
        ``path``.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    suite = report["suite"]
    title_tail = f"({report['device']}, torch {report['torch']})"
    if suite == "scaling":
        fig, (ax_n, ax_f) = plt.subplots(1, 2, figsize=(11, 4.2))
        sweeps = {}
        for r in rows:
            if r["config"].get("sweep") == "experts":
                key = f"{r['method']} r={r['config']['bottleneck']}"
                if r["config"].get("implementation") == "plain":
                    key += " (plain)"
                sweeps.setdefault(key, []).append(
                    (r["config"]["num_experts"], r["step_ms_median"])
                )
        for key, points in sorted(sweeps.items()):
            points.sort()
            ax_n.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=key,
                linestyle="--" if key.endswith("(plain)") else "-",
            )
        ax_n.set_xscale("log", base=2)
        ax_n.set_xlabel("number of experts N")
        ax_n.set_ylabel("training step time (ms, median)")
        ax_n.set_title("Step time vs number of experts")
        ax_n.legend()
        lengths = {}
        for r in rows:
            if r["config"].get("sweep") == "frames":
                name = r["method"]
                if r["config"].get("implementation") == "plain":
                    name += " (plain)"
                lengths.setdefault(name, []).append(
                    (r["config"]["frames"], r["step_ms_median"])
                )
        for key, points in sorted(lengths.items()):
            points.sort()
            ax_f.plot(
                [p[0] for p in points],
                [p[1] for p in points],
                marker="o",
                label=key,
                linestyle="--" if key.endswith("(plain)") else "-",
            )
        ax_f.set_xlabel("input frames (fbank)")
        ax_f.set_ylabel("training step time (ms, median)")
        ax_f.set_title("Step time vs sequence length")
        ax_f.legend()
        fig.suptitle(f"scaling {title_tail}")
    else:
        fig, ax = plt.subplots(figsize=(max(6, 0.8 * len(rows) + 2), 4.2))
        names = [
            f"{r['config'].get('shape')}/{r['config'].get('mode')}\n{r['method']}"
            + (" (plain)" if r["config"].get("implementation") == "plain" else "")
            if suite == "bridge"
            else _row_label(r)
            for r in rows
        ]
        values = [r["step_ms_median"] for r in rows]
        # Mixtures: orange where auto ran (the kernels on the CPU), green for
        # their plain-path peers; other methods blue.
        colors = [
            "tab:green"
            if r["config"].get("implementation") == "plain"
            else "tab:gray"
            if r["config"].get("implementation") == "naive_loop"
            else "tab:orange"
            if r["method"] in MIXTURE_METHODS
            else "tab:blue"
            for r in rows
        ]
        bars = ax.bar(names, values, color=colors)
        if "tab:green" in colors:
            from matplotlib.patches import Patch

            auto = report.get("config", {}).get("implementations", {}).get("auto")
            ax.legend(
                handles=[
                    Patch(color="tab:orange", label=f"mixture, auto ({auto})"),
                    Patch(color="tab:green", label="mixture, plain"),
                    Patch(color="tab:blue", label="other"),
                ]
                + (
                    [Patch(color="tab:gray", label="naive loop (reference-code style)")]
                    if "tab:gray" in colors
                    else []
                ),
                fontsize=8,
            )
        ratio_key = "ratio_to_dense" if suite == "bridge" else "ratio_to_adapter"
        ref = "dense" if suite == "bridge" else "adapter"
        for bar, r in zip(bars, rows):
            if r.get(ratio_key) is not None:
                ax.annotate(
                    f"{r[ratio_key]:.2f}x",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                )
        ax.set_xlabel("method")
        ax.set_ylabel("step time (ms, median)")
        what = "forward + backward" if suite == "bridge" else "training step"
        ax.set_title(
            f"{suite}: {what} time per method\n(ratio to {ref}; {title_tail[1:-1]})"
        )
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
