"""K-fold cross-validation of a recipe (ESC-50: 5 folds, UrbanSound8K: 10).

``<output_folder>/cross_validation.json`` accumulates: every finished fold's
test accuracy is kept there across invocations (a failing fold leaves the
finished ones), so the remaining folds can run later (``--folds=3,4,5``),
and the mean ± std is always computed over every recorded fold. A fold with
a recorded result is not run again unless ``--rerun_finished`` is given.
Before anything runs, the experiment of every recorded or requested fold
(``fold<k>/experiment.json``, see :mod:`speechbrain_moe.experiment`) is
compared with what this command line asks for: results of another
configuration are never mixed into one mean.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys

import speechbrain as sb

from speechbrain_moe.experiment import Experiment, ExperimentMismatch

SUMMARY = "cross_validation.json"

ACCURACY = re.compile(r"test accuracy: ([-+0-9.eE]+)")


def _parse_folds(text, num_folds):
    """The distinct fold numbers of ``--folds`` (e.g. ``"1,3"``), checked."""
    try:
        folds = [int(f) for f in str(text).split(",") if f.strip()]
    except ValueError:
        folds = []
    valid = all(1 <= f <= num_folds for f in folds)
    if not folds or not valid or len(set(folds)) != len(folds):
        raise ValueError(
            f"--folds={text}: folds must be whole numbers from 1 to {num_folds}, "
            f"comma-separated and distinct, e.g. --folds=1,2 (default: all "
            f"{num_folds})."
        )
    return folds


def read_test_accuracy(train_log):
    """The last test accuracy a recipe wrote to its ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        Path of the log.

    Returns
    -------
    float
        The accuracy of the last ``test accuracy:`` entry.

    Example
    -------
    >>> import tempfile
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(log, "w").write("test loss: 1.0, test accuracy: 0.75\\n")
    >>> read_test_accuracy(log)
    0.75
    """
    with open(train_log, encoding="utf-8") as fin:
        found = ACCURACY.findall(fin.read())
    if not found:
        raise RuntimeError(f"No test accuracy in {train_log}: did the run finish?")
    return float(found[-1])


def _write_summary(path, results, **extra):
    """Writes (atomically) and returns the folds' accuracies, their mean and
    sample standard deviation (n - 1 in the denominator; 0 for one fold).

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cv.json")
    >>> _write_summary(path, {1: 0.5, 2: 0.7})["std"]
    0.1414...
    """
    values = list(results.values())
    summary = {
        "folds": dict(results),
        "mean": statistics.fmean(values) if values else None,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "std_kind": "sample (n - 1)",
        **extra,
    }
    with open(f"{path}.tmp", "w", encoding="utf-8") as fout:
        json.dump(summary, fout, indent=1)
    os.replace(f"{path}.tmp", path)
    return summary


def _read_summary(path):
    """Fold -> test accuracy recorded in ``cross_validation.json`` (empty when
    there is none); a damaged file is refused, naming it.

    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "cv.json")
    >>> _read_summary(path)
    {}
    >>> _ = _write_summary(path, {2: 0.5, 1: 0.7})
    >>> _read_summary(path)
    {1: 0.7, 2: 0.5}
    """
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as fin:
            folds = json.load(fin)["folds"]
        return {int(fold): float(acc) for fold, acc in sorted(folds.items())}
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise SystemExit(
            f"Cannot read {path} ({type(err).__name__}: {err}), the results of the "
            "folds run so far. Restore it, or move it away to start the "
            "cross-validation over (its fold<k> folders then resume or refuse "
            "as train.py does)."
        ) from err


def _fold_command(hparams_file, fold, fold_folder, extra_args):
    """The ``train.py`` arguments of one fold."""
    return [
        hparams_file,
        f"--fold={fold}",
        f"--output_folder={fold_folder}",
        *extra_args,
    ]


def _check_folds(hparams_file, output_folder, extra_args, folds):
    """Refuses (before anything runs) folds whose recorded experiment differs
    from this command line's, or whose result cannot be checked.

    Arguments
    ---------
    hparams_file : str
        The recipe YAML.
    output_folder : str
        The cross-validation folder.
    extra_args : list of str
        The other ``train.py`` arguments.
    folds : dict
        Fold -> whether it has a recorded result.

    Returns
    -------
    overwrite : bool
        Whether the command line asks to overwrite the experiments
        (``--overwrite_experiment=True``).
    problems : dict
        Fold -> what is wrong with it (one line).
    """
    problems, overwrite = {}, False
    for fold, has_result in sorted(folds.items()):
        fold_folder = os.path.join(output_folder, f"fold{fold}")
        argv = _fold_command(hparams_file, fold, fold_folder, extra_args)
        _, run_opts, overrides = sb.parse_arguments(argv)
        try:
            experiment = Experiment(hparams_file, overrides, run_opts)
            recorded, lines = experiment.compare_with_record()
        except ExperimentMismatch as err:
            problems[fold] = str(err)
            continue
        overwrite = experiment.settings.get("overwrite_experiment") is True
        if lines:
            problems[fold] = f"{fold_folder}: " + "; ".join(lines)
        elif has_result and not recorded:
            problems[fold] = (
                f"a result is recorded but {fold_folder} has no experiment.json, "
                "so its configuration cannot be checked"
            )
    return overwrite, problems


def _run_folds(script, hparams_file, folds, output_folder, extra_args, launcher):
    """Runs ``script`` once per fold; returns the summary over every recorded fold."""
    summary_file = os.path.join(output_folder, SUMMARY)
    results = _read_summary(summary_file)
    os.makedirs(output_folder, exist_ok=True)
    for fold in folds:
        fold_folder = os.path.join(output_folder, f"fold{fold}")
        cmd = [*launcher, script, *_fold_command(hparams_file, fold, fold_folder, [])]
        cmd += extra_args
        print(f"fold {fold}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            _write_summary(summary_file, results, failed_fold=fold)
            raise SystemExit(
                f"Fold {fold} failed (exit {proc.returncode}); the finished folds "
                f"are in {summary_file}. Fix the error above and re-run with "
                f"--folds set to the remaining folds (the recorded ones are kept)."
            )
        results[fold] = read_test_accuracy(os.path.join(fold_folder, "train_log.txt"))
        results = dict(sorted(results.items()))
        _write_summary(summary_file, results)
        print(f"fold {fold}: test accuracy {results[fold]:.4f}", flush=True)
    summary = _write_summary(summary_file, results)
    if results:
        print(
            f"{len(results)}-fold cross-validation (folds "
            f"{','.join(map(str, results))}): test accuracy {summary['mean']:.4f} "
            f"± {summary['std']:.4f} (sample std)",
            flush=True,
        )
    return summary


def _fold_arguments(rest):
    """The arguments of ``rest`` that would set the fold of every run."""
    names = [arg.split("=", 1)[0] for arg in rest if arg.startswith("--")]
    return [name for name in names if len(name) > 4 and "--folds".startswith(name)]


def cross_validation_main(script, num_folds, prepare_folds=None, argv=None):
    """Runs the folds of a recipe into ``<output_folder>/fold<k>`` and reports
    test accuracy mean ± std over every recorded fold: the command line of
    its ``cross_validate.py``, ``HPARAMS --output_folder=DIR --data_folder=DATA
    [--folds=1,2] [--rerun_finished] [--nproc=2] [train.py arguments]``.

    Arguments
    ---------
    script : str
        The recipe's ``train.py``.
    num_folds : int
        Folds of the data set.
    prepare_folds : callable, optional
        ``prepare_folds(data_folder, {fold: fold_folder})`` writes every
        fold's manifests at once (for the folds that run).
    argv : list of str, optional
        Default: ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``folds`` (fold -> test accuracy, every recorded fold), ``mean``,
        ``std``, ``std_kind``.

    Example
    -------
    >>> cross_validation_main("train.py", 5, argv=["h.yaml", "--output_folder=o",
    ...                       "--data_folder=d", "--fol=3"])
    Traceback (most recent call last):
    ...
    SystemExit: 2
    """
    parser = argparse.ArgumentParser(
        description="Runs the folds of a recipe and reports mean ± std accuracy "
        "over every fold recorded in <output_folder>/cross_validation.json.",
        allow_abbrev=False,
    )
    parser.add_argument("hparams_file")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--data_folder", required=True)
    parser.add_argument(
        "--folds",
        default=",".join(map(str, range(1, num_folds + 1))),
        help="comma-separated folds to run (default: all); folds with a recorded "
        "result are kept, not run again",
    )
    parser.add_argument(
        "--rerun_finished",
        action="store_true",
        help="run the requested folds that have a recorded result again and "
        "replace it (add --overwrite_experiment=True to train them afresh)",
    )
    parser.add_argument("--nproc", type=int, default=1, help="> 1: torchrun DDP")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    fold_args = _fold_arguments(rest)
    if fold_args:
        parser.error(
            f"{fold_args[0]} is not an option of cross_validate.py: it sets the "
            "fold of each run itself (fold k trains in <output_folder>/fold<k>). "
            "Choose the folds with --folds, e.g. --folds=3 or --folds=1,2."
        )
    try:
        folds = _parse_folds(args.folds, num_folds)
    except ValueError as err:
        parser.error(str(err))
    extra = [f"--data_folder={args.data_folder}", *rest]
    recorded = _read_summary(os.path.join(args.output_folder, SUMMARY))
    checked = {fold: fold in recorded for fold in sorted(set(recorded) | set(folds))}
    overwrite, problems = _check_folds(
        args.hparams_file, args.output_folder, extra, checked
    )
    if overwrite:  # the requested folds start over: only the others are checked
        problems = {f: why for f, why in problems.items() if f not in folds}
    if problems:
        parser.exit(
            1,
            f"{args.output_folder} holds folds of another experiment than this "
            "command line asks for (recorded -> this command line):\n  "
            + "\n  ".join(f"fold {f}: {why}" for f, why in problems.items())
            + "\nNothing was changed. Give another --output_folder to "
            "cross-validate this configuration, or repeat the arguments those "
            "folds were run with; to train the requested folds afresh, add "
            "--overwrite_experiment=True.\n",
        )
    to_run = [f for f in folds if f not in recorded or args.rerun_finished or overwrite]
    for fold in folds:
        if fold not in to_run:
            print(
                f"fold {fold}: keeps its recorded test accuracy {recorded[fold]:.4f} "
                "(--rerun_finished runs it again)",
                flush=True,
            )
    if prepare_folds is not None and to_run:
        prepare_folds(
            args.data_folder,
            {f: os.path.join(args.output_folder, f"fold{f}") for f in to_run},
        )
    launcher = [sys.executable]
    if args.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher.append(f"--nproc_per_node={args.nproc}")
    return _run_folds(
        script, args.hparams_file, to_run, args.output_folder, extra, launcher
    )
