"""Renders the benchmark tables of ``benchmarks/README.md`` from the JSON reports.

Usage::

    python -m benchmarks.make_table                      # print Markdown
    python -m benchmarks.make_table --update benchmarks/README.md

``--update`` replaces the text between ``<!-- bench:start -->`` and
``<!-- bench:end -->`` in the given file.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import glob
import json
import os
import sys

from benchmarks.report import (
    SUITE_ORDER,
    describe,
    format_table,
    implementation_table,
)
from benchmarks.targets import targets_table

HERE = os.path.dirname(os.path.abspath(__file__))
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def render(results_dir):
    """Markdown for every suite's ``*.json`` report in ``results_dir``, in order.

    Arguments
    ---------
    results_dir : str
        Folder with the reports.

    Returns
    -------
    str
    """
    reports = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as handle:
            report = json.load(handle)
        # Suite reports only (``layers.json`` of benchmarks.layers is cited, not tabled).
        if isinstance(report, dict) and report.get("suite") in SUITE_ORDER:
            reports.append((os.path.basename(path), report))
    reports.sort(key=lambda item: (SUITE_ORDER.get(item[1]["suite"], 99), item[0]))
    if not reports:
        return "_No results yet._"
    blocks = [
        "### Targets\n\nComputed from the reports below (`benchmarks/targets.py`): "
        "the median of the per-round ratios against the limit.\n\n"
        + targets_table([report for _, report in reports])
    ]
    for name, report in reports:
        blocks.append(
            f"### {report['suite']} (`{name}`)\n\n{describe(report)}\n\n{format_table(report, markdown=True)}"
        )
        side_by_side = implementation_table(report, markdown=True)
        if side_by_side:
            blocks.append(
                f"Kernel and plain path side by side ({report['suite']}): what "
                "`implementation: auto` ran here, and the cost of "
                "`implementation: plain` in the same rounds.\n\n" + side_by_side
            )
    return "\n\n".join(blocks)


def update(path, text, start=START, end=END):
    """Replaces the block of ``path`` between two markers with ``text`` (the
    one way every generated README table is written: speed, accuracy and
    real-weights bridge tables).

    Arguments
    ---------
    path : str
        Markdown file containing the two markers.
    text : str
        New content.
    start, end : str
        The markers (default: the speed tables').

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "README.md")
    >>> _ = open(path, "w").write("a\\n<!-- x -->\\nold\\n<!-- /x -->\\nb\\n")
    >>> update(path, "new", "<!-- x -->", "<!-- /x -->")
    >>> print(open(path).read(), end="")
    a
    <!-- x -->
    new
    <!-- /x -->
    b
    """
    with open(path) as handle:
        content = handle.read()
    if start not in content or end not in content:
        sys.exit(f"{path}: add the markers {start} and {end} where the tables go.")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    with open(path, "w") as handle:
        handle.write(f"{head}{start}\n{text}\n{end}{tail}")


def main(argv=None):
    """Command-line entry.

    Arguments
    ---------
    argv : list of str, optional
        Arguments.
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default=os.path.join(HERE, "results"))
    parser.add_argument("--update", help="Markdown file whose marked block to replace.")
    args = parser.parse_args(argv)
    text = render(args.results)
    if args.update:
        update(args.update, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
