"""Line counts of the package (``make loc``): a map of where the code is.

The package once had a line budget (6,000 lines, 450 per file, 200 per class).
It was retired (issue 22): it cut documentation, not complexity. The counts are
printed for orientation only; the measure of a file is whether a newcomer
understands it, which the docstring checks in ``tests/test_docstrings.py`` and
review decide, not a number.

Authors
 * speechbrain-moe contributors 2026
"""

import ast
import glob
import os
import sys


def count_lines(folder):
    """Lines of every ``.py`` file under ``folder`` and of every class in it.

    Arguments
    ---------
    folder : str
        Package folder.

    Returns
    -------
    dict
        ``files`` (path -> lines) and ``classes`` (``path:Class`` -> lines).

    Example
    -------
    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     with open(os.path.join(folder, "m.py"), "w") as fout:
    ...         _ = fout.write("class A:\\n    x = 1\\n")
    ...     count_lines(folder)
    {'files': {'m.py': 2}, 'classes': {'m.py:A': 2}}
    """
    files, classes = {}, {}
    for path in sorted(glob.glob(os.path.join(folder, "**", "*.py"), recursive=True)):
        with open(path, encoding="utf-8") as fin:
            text = fin.read()
        rel = os.path.relpath(path, folder)
        files[rel] = len(text.splitlines())
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.ClassDef):
                classes[f"{rel}:{node.name}"] = node.end_lineno - node.lineno + 1
    return {"files": files, "classes": classes}


def main(folder):
    """Prints the line count of every file (largest first), the total and the
    largest class.

    Arguments
    ---------
    folder : str
        Package folder.
    """
    counts = count_lines(folder)
    for path, n in sorted(counts["files"].items(), key=lambda item: -item[1]):
        print(f"{n:6d}  {path}")
    biggest = max(counts["classes"].items(), key=lambda item: item[1])
    print(f"{sum(counts['files'].values()):6d}  total")
    print(f"largest class: {biggest[0]} ({biggest[1]} lines)")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "speechbrain_moe")
