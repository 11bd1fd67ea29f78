"""Figures of the LLM-bridge gradient analysis (Agg backend, PNG).

``report`` is the merged form ``{"bridges": {name: {"points": [...]}}}``
of :func:`analysis.bridge_gradients.bridge_gradient_analysis` results (one
entry per point: ``step``, ``cosine``, ``within``, and ``routing`` for routed
bridges), as ``benchmarks/results/bridge_real_gradients.json`` holds it.

Authors
 * speechbrain-moe contributors 2026
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

#: The MoE-Adapter paper's gradient cosines between audio types.
PAPER = {"dense": -0.020, "moe_adapter": 0.029}


def plot_cosine_over_training(report, path, title=""):
    """Between-task gradient cosine vs training step, one line per bridge,
    with the within-task (split-half) cosines dotted and the paper's values
    marked.

    Arguments
    ---------
    report : dict
        Merged report (see the module docstring).
    path : str
        PNG to write.
    title : str
        Figure title.

    Returns
    -------
    str
        ``path``.

    Example
    -------
    >>> import tempfile, os
    >>> report = {"bridges": {"dense": {"points": [
    ...     {"step": 0, "cosine": {"asr|sound": 0.1}, "within": {"asr": 0.5}},
    ...     {"step": 12, "cosine": {"asr|sound": -0.1}, "within": {"asr": 0.4}}]}}}
    >>> path = plot_cosine_over_training(report, os.path.join(tempfile.mkdtemp(), "c.png"))
    >>> os.path.getsize(path) > 0
    True
    """
    fig, ax = plt.subplots(figsize=(10.0, 4.4))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, entry) in enumerate(report["bridges"].items()):
        colour = colours[i % len(colours)]
        steps = [p["step"] for p in entry["points"]]
        between = [next(iter(p["cosine"].values())) for p in entry["points"]]
        ax.plot(steps, between, "o-", color=colour, label=f"{name}: between tasks")
        tasks = sorted({t for p in entry["points"] for t in p["within"]})
        for task, style in zip(tasks, (":", "--", "-.")):
            values = [p["within"].get(task, np.nan) for p in entry["points"]]
            ax.plot(
                steps,
                values,
                style,
                color=colour,
                alpha=0.6,
                label=f"{name}: within {task} (split halves)",
            )
        if name in PAPER:
            ax.axhline(PAPER[name], color=colour, lw=0.8, alpha=0.5)
            ax.annotate(
                f"paper {name} {PAPER[name]:+.3f}",
                (max(steps), PAPER[name]),
                color=colour,
                fontsize=7,
                ha="right",
                va="bottom",
            )
    ax.axhline(0.0, color="black", lw=0.6)
    ax.set_xlabel("training step")
    ax.set_ylabel("cosine of the mean gradients")
    ax.set_title(title or "Task-gradient cosine w.r.t. the bridge parameters")
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_routing_by_task(report, path, title=""):
    """Per-expert mean routing weight of each task, for every routed bridge
    (columns) at every point of training (rows).

    Arguments
    ---------
    report : dict
        Merged report (see the module docstring).
    path : str
        PNG to write.
    title : str
        Figure title.

    Returns
    -------
    str or None
        ``path``, or None when no bridge is routed.

    Example
    -------
    >>> import tempfile, os
    >>> report = {"bridges": {"moe_adapter": {"points": [{"step": 0, "routing": {
    ...     "moe": {"asr": [0.5, 0.5], "sound": [0.9, 0.1]}}}]}}}
    >>> path = plot_routing_by_task(report, os.path.join(tempfile.mkdtemp(), "r.png"))
    >>> os.path.getsize(path) > 0
    True
    """
    routed = {
        name: entry
        for name, entry in report["bridges"].items()
        if any("routing" in p for p in entry["points"])
    }
    if not routed:
        return None
    rows = max(len(entry["points"]) for entry in routed.values())
    fig, axes = plt.subplots(
        rows,
        len(routed),
        figsize=(4.2 * len(routed), 1.9 * rows + 0.6),
        squeeze=False,
        sharey=True,
    )
    for column, (name, entry) in enumerate(routed.items()):
        for row in range(rows):
            ax = axes[row][column]
            if row >= len(entry["points"]) or "routing" not in entry["points"][row]:
                ax.axis("off")
                continue
            point = entry["points"][row]
            (router,) = point["routing"].values()
            tasks = sorted(router)
            experts = len(router[tasks[0]])
            width = 0.8 / len(tasks)
            for k, task in enumerate(tasks):
                ax.bar(
                    np.arange(experts) + (k - (len(tasks) - 1) / 2) * width,
                    router[task],
                    width,
                    label=task,
                )
            ax.axhline(1.0 / experts, color="black", lw=0.6, ls=":")
            ax.set_xticks(range(experts))
            ax.set_title(f"{name}, step {point['step']}", fontsize=9)
            if column == 0:
                ax.set_ylabel("mean weight")
            if row == 0 and column == 0:
                ax.legend(fontsize=7)
        axes[-1][column].set_xlabel("expert")
    fig.suptitle(title or "Routing weight per expert, by task (dotted: uniform)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
