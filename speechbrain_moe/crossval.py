"""K-fold cross-validation of a recipe (ESC-50: 5 folds, UrbanSound8K: 10); a
failing fold leaves the finished ones in ``cross_validation.json``."""

import argparse
import json
import logging
import os
import re
import statistics
import subprocess
import sys

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


def _run_folds(script, hparams_file, folds, output_folder, extra_args, launcher):
    """Runs ``script`` once per fold; returns the summary of the test accuracies."""
    summary_file = os.path.join(output_folder, "cross_validation.json")
    os.makedirs(output_folder, exist_ok=True)
    results = {}
    for fold in folds:
        fold_folder = os.path.join(output_folder, f"fold{fold}")
        cmd = [*launcher, script, hparams_file, f"--fold={fold}"]
        cmd += [f"--output_folder={fold_folder}", *extra_args]
        print(f"fold {fold}: {' '.join(cmd)}", flush=True)
        proc = subprocess.run(cmd, check=False)
        if proc.returncode != 0:
            _write_summary(summary_file, results, failed_fold=fold)
            raise SystemExit(
                f"Fold {fold} failed (exit {proc.returncode}); the finished folds "
                f"are in {summary_file}. Fix the error above and re-run with "
                f"--folds set to the remaining folds."
            )
        results[fold] = read_test_accuracy(os.path.join(fold_folder, "train_log.txt"))
        summary = _write_summary(summary_file, results)
        print(f"fold {fold}: test accuracy {results[fold]:.4f}", flush=True)
    print(
        f"{len(results)}-fold cross-validation: test accuracy {summary['mean']:.4f} "
        f"± {summary['std']:.4f} (sample std)",
        flush=True,
    )
    return summary


def cross_validation_main(script, num_folds, prepare_folds=None, argv=None):
    """Runs every fold of a recipe into ``<output_folder>/fold<k>`` and reports
    test accuracy mean ± std: the command line of its ``cross_validate.py``,
    ``HPARAMS --output_folder=DIR --data_folder=DATA [--folds=1,2] [--nproc=2]
    [train.py arguments]``.

    Arguments
    ---------
    script : str
        The recipe's ``train.py``.
    num_folds : int
        Folds of the data set.
    prepare_folds : callable, optional
        ``prepare_folds(data_folder, {fold: fold_folder})`` writes every
        fold's manifests at once.
    argv : list of str, optional
        Default: ``sys.argv[1:]``.

    Returns
    -------
    dict
        ``folds`` (fold -> test accuracy), ``mean``, ``std``, ``std_kind``.
    """
    parser = argparse.ArgumentParser(
        description="Runs every fold of a recipe and reports mean ± std accuracy."
    )
    parser.add_argument("hparams_file")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument("--data_folder", required=True)
    parser.add_argument("--folds", default=",".join(map(str, range(1, num_folds + 1))))
    parser.add_argument("--nproc", type=int, default=1, help="> 1: torchrun DDP")
    args, rest = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        folds = _parse_folds(args.folds, num_folds)
    except ValueError as err:
        parser.error(str(err))
    if prepare_folds is not None:
        prepare_folds(
            args.data_folder,
            {f: os.path.join(args.output_folder, f"fold{f}") for f in folds},
        )
    launcher = [sys.executable]
    if args.nproc > 1:
        launcher += ["-m", "torch.distributed.run", "--standalone"]
        launcher.append(f"--nproc_per_node={args.nproc}")
    extra = [f"--data_folder={args.data_folder}", *rest]
    return _run_folds(
        script, args.hparams_file, folds, args.output_folder, extra, launcher
    )
