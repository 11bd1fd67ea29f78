"""Runs a recipe's ``train.py`` several times in one process, one command line
after the other, and writes how each ended as JSON.

Used by the tests whose runs are refused before training: Python's and the
libraries' start-up is paid once for all of them::

    python tests/argv_runner.py SCRIPT RESULT.json ARGV.json

``ARGV.json`` holds a list of argument lists (without the script);
``RESULT.json`` receives one ``{"exit": code, "error": type, "message": text}``
per run, with the exit status Python would give it (0, a ``SystemExit``
code, or 1 for an exception).
"""

import json
import os
import runpy
import sys


def main(argv):
    """Runs every command line; writes their outcomes."""
    script, result_file, argv_file = argv
    sys.path.insert(0, os.path.dirname(os.path.abspath(script)))
    with open(argv_file, encoding="utf-8") as fin:
        runs = json.load(fin)
    outcomes = []
    for args in runs:
        sys.argv = [script, *args]
        outcome = {"exit": 0, "error": None, "message": ""}
        try:
            runpy.run_path(script, run_name="__main__")
        except SystemExit as err:
            code = err.code
            outcome["exit"] = (
                code if isinstance(code, int) else (0 if code is None else 1)
            )
            outcome.update(error="SystemExit", message=str(code))
        except BaseException as err:  # noqa: B036 - every outcome is reported
            outcome.update(exit=1, error=type(err).__name__, message=str(err))
        outcomes.append(outcome)
        print(f"=== {args}: {outcome}", flush=True)
    with open(result_file, "w", encoding="utf-8") as fout:
        json.dump(outcomes, fout, indent=1)


if __name__ == "__main__":
    main(sys.argv[1:])
