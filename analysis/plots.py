"""Readable matplotlib figures of the analysis results (Agg backend, PNG).

Each ``plot_*`` function writes the PNG ``path`` and returns it; ``summary`` is
:meth:`~analysis.utilisation.UtilisationAccumulator.summary` output and
``method`` goes into the title.

Authors
 * speechbrain-moe contributors 2026
"""

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.utilisation import short_layer_names  # noqa: E402


def _heatmap(
    matrix,
    rows,
    cols,
    title,
    xlabel,
    ylabel,
    colorbar,
    path,
    vmin=None,
    vmax=None,
    cmap="viridis",
    annotate=None,
):
    """Draws and saves one labelled heatmap."""
    matrix = np.asarray(matrix, dtype=float)
    height = max(3.0, 0.35 * len(rows) + 1.5)
    width = max(4.5, 0.45 * len(cols) + 2.5)
    fig, ax = plt.subplots(figsize=(width, height))
    image = ax.imshow(matrix, aspect="auto", cmap=cmap, vmin=vmin, vmax=vmax)
    ax.set_xticks(
        range(len(cols)),
        cols,
        rotation=45 if len(cols) > 16 else 0,
        ha="right" if len(cols) > 16 else "center",
    )
    ax.set_yticks(range(len(rows)), rows)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if annotate is None:
        annotate = matrix.size <= 150
    if annotate:
        for i in range(matrix.shape[0]):
            for j in range(matrix.shape[1]):
                ax.text(
                    j,
                    i,
                    f"{matrix[i, j]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="w",
                )
    fig.colorbar(image, ax=ax, label=colorbar)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_contribution_per_layer(summary, path, method=""):
    """Heatmap layer x expert of the mean contribution of each expert."""
    layers = list(summary["layers"])
    matrix = [summary["layers"][name]["contribution"] for name in layers]
    experts = [str(i) for i in range(len(matrix[0]))]
    title = (
        f"Mean contribution of each expert per layer {f'({method})' if method else ''}"
    )
    return _heatmap(
        matrix,
        short_layer_names(layers),
        experts,
        title,
        "expert",
        "layer",
        "mean weight per token",
        path,
        vmin=0.0,
    )


def plot_expert_by_class(summary, path, layer=None, method=""):
    """Heatmap class x expert of the contribution, for one layer (default: the last).

    Arguments
    ---------
    summary : dict
        :meth:`UtilisationAccumulator.summary` output with groups.
    path : str
        PNG to write.
    layer : str, optional
        Router name (default: the last one; ``"mean"`` averages all layers).
    method : str
        Shown in the title.

    Returns
    -------
    str
        ``path``.
    """
    by_group = summary["by_group"]
    if not by_group:
        raise ValueError(
            "No per-class statistics were recorded (set_groups was never called)."
        )
    if layer == "mean":
        groups = sorted(next(iter(by_group.values())))
        matrix = np.mean(
            [[by_group[name][g] for g in groups] for name in by_group], axis=0
        )
        label = "all layers (mean)"
    else:
        layer = layer or list(by_group)[-1]
        groups = sorted(by_group[layer])
        matrix = [by_group[layer][g] for g in groups]
        label = short_layer_names([layer])[0]
    experts = [str(i) for i in range(len(matrix[0]))]
    title = (
        f"Expert contribution by class, layer {label} {f'({method})' if method else ''}"
    )
    return _heatmap(
        matrix,
        groups,
        experts,
        title,
        "expert",
        "class",
        "mean weight per token",
        path,
        vmin=0.0,
    )


def plot_balance(summary, path, method=""):
    """Bar charts per layer: coefficient of variation, entropy, busiest share."""
    layers = list(summary["layers"])
    names = short_layer_names(layers)
    fig, axes = plt.subplots(1, 3, figsize=(max(9.0, 0.5 * len(layers) * 3), 3.5))
    for ax, key, label in zip(
        axes,
        ("cv", "entropy", "max_share"),
        (
            "coefficient of variation",
            "routing entropy (normalised)",
            "share of busiest expert",
        ),
    ):
        ax.bar(
            range(len(layers)), [summary["layers"][n]["balance"][key] for n in layers]
        )
        ax.set_xticks(range(len(layers)), names, rotation=90)
        ax.set_title(label)
        ax.set_xlabel("layer")
    fig.suptitle(f"Expert load balance {f'({method})' if method else ''}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_gradient_cosine(names, matrix, path, method=""):
    """Heatmap of the pairwise cosine similarity of group gradients.

    Arguments
    ---------
    names : list of str
        Group names.
    matrix : list of list of float
        Cosine similarities.
    path : str
        PNG to write.
    method : str
        Shown in the title.

    Returns
    -------
    str
        ``path``.
    """
    title = (
        f"Cosine similarity of per-group gradients {f'({method})' if method else ''}"
    )
    return _heatmap(
        matrix,
        names,
        names,
        title,
        "group",
        "group",
        "cosine similarity",
        path,
        vmin=-1.0,
        vmax=1.0,
        cmap="RdBu",
    )
