"""Renders the README tables of the real-weights LLM bridge runs from their JSON.

Usage::

    python -m benchmarks.make_bridge_real_table            # print Markdown
    python -m benchmarks.make_bridge_real_table --update README.md

``--update`` replaces the text between ``<!-- bridge-real:start -->`` and
``<!-- bridge-real:end -->``. The reports are
``benchmarks/results/bridge_real.json`` (``python -m benchmarks.bridge_real
collect``) and ``benchmarks/results/bridge_real_gradients.json``.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import os

from benchmarks.make_table import update as replace_block

HERE = os.path.dirname(os.path.abspath(__file__))
RESULTS = os.path.join(HERE, "results", "bridge_real.json")
GRADIENTS = os.path.join(HERE, "results", "bridge_real_gradients.json")
START, END = "<!-- bridge-real:start -->", "<!-- bridge-real:end -->"


def _number(value, fmt):
    """``value`` formatted, or a dash when it is missing."""
    return "–" if value is None else format(value, fmt)


def render_bridges(report):
    """The bridge table: test WER/CER, sound accuracy, parameters.

    Arguments
    ---------
    report : dict
        ``bridge_real.json``.

    Returns
    -------
    str
        Markdown.

    Example
    -------
    >>> print(render_bridges({"commit": "abc", "date": "2026-12-03T16:00:00Z",
    ...     "settings": {"batch_size": 8, "epochs": 1, "lr": 0.002, "seed": 1},
    ...     "steps": 36, "bridges": {"dense": {"total": 9160431,
    ...     "active": 9160431, "active_ratio": 1.0, "test_WER": 90.5,
    ...     "test_CER": 60.25, "test_accuracy_sound": 0.3}}}))
    | bridge | test WER (%) | test CER (%) | sound accuracy | total parameters | active per token | active / total |
    |---|---|---|---|---|---|---|
    | dense | 90.50 | 60.25 | 0.300 | 9.16M | 9.16M | 1.00 |
    <BLANKLINE>
    Commit abc, started 2026-12-03T16:00:00Z; one seed (1), 36 steps of batch 8 (1 epoch), lr 0.002.
    """
    lines = [
        "| bridge | test WER (%) | test CER (%) | sound accuracy | total parameters "
        "| active per token | active / total |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in report["bridges"].items():
        lines.append(
            f"| {name} | {_number(row.get('test_WER'), '.2f')} "
            f"| {_number(row.get('test_CER'), '.2f')} "
            f"| {_number(row.get('test_accuracy_sound'), '.3f')} "
            f"| {row['total'] / 1e6:.2f}M | {row['active'] / 1e6:.2f}M "
            f"| {row['active_ratio']:.2f} |"
        )
    settings = report["settings"]
    lines.append("")
    lines.append(
        f"Commit {report['commit']}"
        f"{' (plus uncommitted changes)' if report.get('working_tree_modified') else ''}"
        f", started {report['date']}; one seed ({settings['seed']}), "
        f"{report.get('steps', '?')} steps of batch {settings['batch_size']} "
        f"({settings['epochs']} epoch{'s' if settings['epochs'] != 1 else ''}), "
        f"lr {settings['lr']}."
    )
    return "\n".join(lines)


def render_gradients(report):
    """The gradient table: per bridge and point of training, the cosine
    between the tasks' gradients and, for comparison, within each task.

    Arguments
    ---------
    report : dict
        ``bridge_real_gradients.json``: ``bridges`` -> bridge -> ``points``
        (each with ``step``, ``cosine``, ``within``, ``samples``).

    Returns
    -------
    str
        Markdown.

    Example
    -------
    >>> print(render_gradients({"bridges": {"dense": {"points": [
    ...     {"step": 0, "cosine": {"asr|sound": -0.02},
    ...      "within": {"asr": 0.5, "sound": 0.7}, "samples": {"asr": 16, "sound": 16}}]}}}))
    | bridge | step | cosine asr / sound | within asr | within sound | samples per task |
    |---|---|---|---|---|---|
    | dense | 0 | -0.020 | 0.500 | 0.700 | 16 |
    """
    lines = [
        "| bridge | step | cosine asr / sound | within asr | within sound "
        "| samples per task |",
        "|---|---|---|---|---|---|",
    ]
    for name, entry in report["bridges"].items():
        for point in entry["points"]:
            (between,) = point["cosine"].values()
            within = point["within"]
            samples = sorted(set(point["samples"].values()))
            lines.append(
                f"| {name} | {point['step']} | {between:.3f} "
                f"| {_number(within.get('asr'), '.3f')} "
                f"| {_number(within.get('sound'), '.3f')} "
                f"| {'/'.join(str(s) for s in samples)} |"
            )
    return "\n".join(lines)


def render(results=RESULTS, gradients=GRADIENTS):
    """Both tables, from the committed JSON files.

    Arguments
    ---------
    results : str
        ``bridge_real.json``.
    gradients : str
        ``bridge_real_gradients.json`` (left out when absent).

    Returns
    -------
    str
        Markdown.
    """
    if not os.path.isfile(results):
        return "_No results yet._"
    with open(results) as fin:
        blocks = [render_bridges(json.load(fin))]
    if os.path.isfile(gradients):
        with open(gradients) as fin:
            blocks.append(render_gradients(json.load(fin)))
    return "\n\n".join(blocks)


def update(path, text):
    """Replaces the real-weights bridge block of ``path`` with ``text``
    (:func:`benchmarks.make_table.update` with this table's markers).

    Arguments
    ---------
    path : str
        Markdown file holding the two markers.
    text : str
        New content.
    """
    replace_block(path, text, START, END)


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.make_bridge_real_table",
        description=__doc__.split("\n")[0],
    )
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--gradients", default=GRADIENTS)
    parser.add_argument("--update", metavar="MARKDOWN", default=None)
    args = parser.parse_args(argv)
    text = render(args.results, args.gradients)
    if args.update:
        update(args.update, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
