"""Line counts of the package against its budget (``make loc``).

Budget: at most 6,000 lines of Python in ``speechbrain_moe/``, no file over
450 lines, no class over 200 lines (blank lines and docstrings included, as
``wc -l`` counts them).

Authors
 * speechbrain-moe contributors 2026
"""

import ast
import glob
import os
import sys

TOTAL, FILE, CLASS = 6000, 450, 200


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


def budget_problems(counts, total=TOTAL, file=FILE, cls=CLASS):
    """What exceeds the budget.

    Arguments
    ---------
    counts : dict
        From :func:`count_lines`.
    total, file, cls : int
        The limits.

    Returns
    -------
    list of str
    """
    problems = [
        f"{path}: {n} lines > {file}" for path, n in counts["files"].items() if n > file
    ]
    problems += [
        f"{name}: {n} lines > {cls}" for name, n in counts["classes"].items() if n > cls
    ]
    lines = sum(counts["files"].values())
    if lines > total:
        problems.append(f"total: {lines} lines > {total}")
    return problems


def main(folder):
    """Prints the counts and exits non-zero when over budget.

    Arguments
    ---------
    folder : str
        Package folder.
    """
    counts = count_lines(folder)
    for path, n in sorted(counts["files"].items(), key=lambda item: -item[1]):
        print(f"{n:6d}  {path}")
    biggest = max(counts["classes"].items(), key=lambda item: item[1])
    print(f"{sum(counts['files'].values()):6d}  total (budget {TOTAL})")
    print(f"largest class: {biggest[0]} ({biggest[1]} lines, budget {CLASS})")
    problems = budget_problems(counts)
    for problem in problems:
        print("OVER BUDGET:", problem)
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "speechbrain_moe")
