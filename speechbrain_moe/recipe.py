"""Shared plumbing of the classification recipes (``recipes/*/PETL``).

* :func:`load_petl_settings` reads a method's settings from the repository's
  top-level ``hparams/petl/<method>.yaml`` (each method's settings live once,
  shared by every recipe);
* :func:`setup_backbone` applies the recipe's ``petl_method`` to its backbone;
* :class:`CosineLR` is the learning-rate schedule of the paper (cosine decay
  over the whole run, optional linear warm-up);
* :func:`check_audio`, :func:`write_manifest` and :func:`skip_preparation`
  are the pieces every ``<dataset>_prepare.py`` shares: audio that cannot be
  read (or is empty) is reported by name and skipped, manifests are written
  once;
* :func:`classification_datasets` builds the SpeechBrain datasets (audio
  resampled to 16 kHz, integer labels);
* :func:`cross_validate` runs a recipe on every fold and reports mean ± std.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import functools
import json
import math
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
import torchaudio
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.logger import get_logger

from speechbrain_moe.methods import apply_method, available_methods
from speechbrain_moe.summary import count_parameters, format_parameters

logger = get_logger(__name__)

HPARAMS_ENV = "SPEECHBRAIN_MOE_HPARAMS"
MANIFEST_FIELDS = ["ID", "wav", "duration", "class_name"]


def default_hparams_dir():
    """The folder holding ``<method>.yaml`` files.

    ``$SPEECHBRAIN_MOE_HPARAMS`` when set, else the repository's
    ``hparams/petl``.

    Returns
    -------
    pathlib.Path

    Example
    -------
    >>> (default_hparams_dir() / "soft_moa.yaml").is_file()
    True
    """
    env = os.environ.get(HPARAMS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1] / "hparams" / "petl"


def load_petl_settings(method, hparams_dir=None, overrides=None):
    """Reads the settings of PETL method ``method``.

    Arguments
    ---------
    method : str
        A registered method name (``petl_method`` in the recipes).
    hparams_dir : str, optional
        Folder with ``<method>.yaml`` (default :func:`default_hparams_dir`).
    overrides : dict, optional
        Settings replacing those of the file (``petl_overrides`` in the
        recipes), e.g. ``{"num_experts": 8}``.

    Returns
    -------
    dict
        Keyword settings for ``apply_method(backbone, method, **settings)``.

    Example
    -------
    >>> settings = load_petl_settings("soft_moa", overrides={"num_experts": 4})
    >>> settings["num_experts"], settings["bottleneck"], settings["placement"]
    (4, 1, 'pfeiffer_attention')
    >>> load_petl_settings("linear")
    {}
    >>> load_petl_settings("soft_mao")
    Traceback (most recent call last):
    ...
    ValueError: Unknown petl_method 'soft_mao'. Valid methods: adapter, bitfit, ...
    """
    valid = available_methods()
    if method not in valid:
        raise ValueError(
            f"Unknown petl_method {method!r}. Valid methods: {', '.join(valid)}. "
            "Set --petl_method to one of them."
        )
    folder = Path(hparams_dir) if hparams_dir else default_hparams_dir()
    path = folder / f"{method}.yaml"
    if not path.is_file():
        raise FileNotFoundError(
            f"No settings file {path} for PETL method {method!r}. Create it (an "
            f"empty mapping '{{}}' for a method without settings) or point "
            f"${HPARAMS_ENV} to the folder holding <method>.yaml files."
        )
    with open(path) as fin:
        settings = load_hyperpyyaml(fin) or {}
    settings = dict(settings)
    settings.update(dict(overrides or {}))
    return settings


def setup_backbone(hparams, method=None, overrides=None, hparams_dir=None):
    """Applies the recipe's PETL method to ``hparams["backbone"]`` in place.

    Arguments
    ---------
    hparams : dict
        The recipe's hyper-parameters (``backbone``, ``petl_method`` and
        optionally ``petl_overrides`` and ``modules``).
    method : str, optional
        Method name (default ``hparams["petl_method"]``).
    overrides : dict, optional
        Setting overrides (default ``hparams.get("petl_overrides")``).
    hparams_dir : str, optional
        Folder of the method files (default :func:`default_hparams_dir`).

    Returns
    -------
    torch.nn.Module
        The adapted backbone.

    Example
    -------
    >>> from transformers import ASTConfig, ASTModel
    >>> import tempfile
    >>> from speechbrain_moe.lobes.ast import AST
    >>> folder = tempfile.mkdtemp()
    >>> cfg = ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...                 intermediate_size=64, max_length=100)
    >>> ASTModel(cfg).save_pretrained(folder)
    >>> hparams = {"backbone": AST(folder, max_frames=100), "petl_method": "soft_moa",
    ...            "petl_overrides": {"num_experts": 4}}
    >>> backbone = setup_backbone(hparams)
    >>> sum(p.numel() for p in backbone.parameters() if p.requires_grad) > 0
    True
    """
    method = hparams["petl_method"] if method is None else method
    if overrides is None:
        overrides = hparams.get("petl_overrides")
    settings = load_petl_settings(method, hparams_dir, overrides)
    backbone = apply_method(hparams["backbone"], method, **settings)
    backbone.petl_method = method
    backbone.petl_settings = settings
    counts = count_parameters(hparams.get("modules") or {"backbone": backbone})
    logger.info("PETL method %s %s\n%s", method, settings, format_parameters(counts))
    return backbone


class CosineLR:
    """Cosine learning-rate decay over the whole run, optional linear warm-up.

    Stateless: the rate is a function of the training progress alone (epoch
    and step within it, both restored by SpeechBrain's checkpointer), so a
    resumed run follows the same schedule without a recoverable of its own.

    Arguments
    ---------
    lr : float
        Peak learning rate.
    min_lr : float
        Final learning rate.
    warmup_fraction : float
        Share of the run spent warming up linearly from 0 (0 for none).

    Example
    -------
    >>> schedule = CosineLR(lr=1.0, min_lr=0.0, warmup_fraction=0.0)
    >>> [round(schedule(p), 3) for p in (0.0, 0.5, 1.0)]
    [1.0, 0.5, 0.0]
    >>> round(CosineLR(1.0, warmup_fraction=0.5)(0.25), 3)
    0.5
    """

    def __init__(self, lr, min_lr=0.0, warmup_fraction=0.0):
        if lr <= 0 or min_lr < 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(
                f"CosineLR needs lr > 0, min_lr >= 0 and 0 <= warmup_fraction < 1; "
                f"got lr={lr}, min_lr={min_lr}, warmup_fraction={warmup_fraction}."
            )
        self.lr = lr
        self.min_lr = min_lr
        self.warmup_fraction = warmup_fraction

    def __call__(self, progress):
        """The learning rate at ``progress`` in [0, 1] of the run.

        Arguments
        ---------
        progress : float
            Fraction of the training steps done.

        Returns
        -------
        float
        """
        progress = min(max(float(progress), 0.0), 1.0)
        if progress < self.warmup_fraction:
            return self.lr * progress / self.warmup_fraction
        span = 1.0 - self.warmup_fraction
        done = (progress - self.warmup_fraction) / span if span > 0 else 1.0
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (
            1 + math.cos(math.pi * done)
        )


def check_audio(path, scan_samples=True):
    """Duration of an audio file, or why it cannot be used.

    Unusable: unreadable (corrupt or not audio), empty, and, when
    ``scan_samples``, containing NaN/inf samples or digitally silent (every
    sample zero: such a clip carries no information about its label and is
    almost always a broken export, so it is skipped too).

    Arguments
    ---------
    path : str
        Audio file.
    scan_samples : bool
        Read the samples to find NaN/inf and silent files (slower).

    Returns
    -------
    duration : float or None
        Seconds (None when unusable).
    problem : str or None
        Why the file is unusable (None when fine).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> empty = os.path.join(folder, "empty.wav")
    >>> open(empty, "wb").close()
    >>> check_audio(empty)[0] is None
    True
    >>> silent = os.path.join(folder, "silent.wav")
    >>> sf.write(silent, torch.zeros(1600).numpy(), 16000)
    >>> check_audio(silent)
    (None, 'silent (every sample is zero)')
    >>> nan = os.path.join(folder, "nan.wav")
    >>> sf.write(nan, torch.full((1600,), float("nan")).numpy(), 16000, subtype="FLOAT")
    >>> check_audio(nan)
    (None, 'contains NaN/inf samples')
    """
    if not os.path.isfile(path):
        return None, "missing"
    if os.path.getsize(path) == 0:
        return None, "empty (0-byte file)"
    try:
        info = sf.info(path)
    except Exception as err:  # soundfile raises several error types
        return None, f"unreadable ({type(err).__name__}: {err})"
    if info.frames <= 0 or info.samplerate <= 0:
        return None, "empty (no audio samples)"
    if scan_samples:
        try:
            audio, _ = sf.read(path, dtype="float32", always_2d=True)
        except Exception as err:
            return None, f"unreadable ({type(err).__name__}: {err})"
        if audio.size == 0:
            return None, "empty (no audio samples)"
        if not np.isfinite(audio).all():
            return None, "contains NaN/inf samples"
        if not np.any(audio):
            return None, "silent (every sample is zero)"
    return info.frames / info.samplerate, None


def report_skipped(skipped, dataset):
    """Logs the audio files a preparation skipped, by name.

    Arguments
    ---------
    skipped : list of tuple
        ``(path, problem)`` pairs.
    dataset : str
        Data set name (for the message).

    Example
    -------
    >>> report_skipped([], "ESC-50")
    """
    if not skipped:
        return
    lines = "\n".join(f"  {path}: {problem}" for path, problem in skipped)
    logger.warning(
        "%s preparation skipped %d audio file(s) that cannot be used:\n%s",
        dataset,
        len(skipped),
        lines,
    )


def write_manifest(path, rows, fields=None):
    """Writes a SpeechBrain CSV manifest.

    Arguments
    ---------
    path : str
        Output CSV.
    rows : list of dict
        One dict per example, holding at least ``ID``.
    fields : list of str, optional
        Column order (default: ID, wav, duration, class_name, then the rest).

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "x.csv")
    >>> write_manifest(out, [{"ID": "a", "wav": "a.wav", "duration": 1.0,
    ...                       "class_name": "dog"}])
    >>> open(out).read().splitlines()[0]
    'ID,wav,duration,class_name'
    """
    if fields is None:
        extra = sorted({k for row in rows for k in row} - set(MANIFEST_FIELDS))
        fields = MANIFEST_FIELDS + extra
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as fout:
        writer = csv.DictWriter(fout, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def skip_preparation(save_folder, files, options):
    """Whether a preparation already wrote ``files`` with the same ``options``.

    Arguments
    ---------
    save_folder : str
        Where the manifests live (the options are stored in
        ``prepare_options.json`` there).
    files : list of str
        Manifest paths that must all exist.
    options : dict
        JSON-serialisable preparation options.

    Returns
    -------
    bool

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> skip_preparation(folder, [], {"fold": 1})
    False
    >>> save_preparation_options(folder, {"fold": 1})
    >>> skip_preparation(folder, [], {"fold": 1}), skip_preparation(folder, [], {"fold": 2})
    (True, False)
    """
    opt_file = os.path.join(save_folder, "prepare_options.json")
    if not os.path.isfile(opt_file) or not all(os.path.isfile(f) for f in files):
        return False
    with open(opt_file) as fin:
        return json.load(fin) == json.loads(json.dumps(options))


def save_preparation_options(save_folder, options):
    """Records the options a finished preparation used.

    Arguments
    ---------
    save_folder : str
        Manifest folder.
    options : dict
        JSON-serialisable preparation options.
    """
    os.makedirs(save_folder, exist_ok=True)
    with open(os.path.join(save_folder, "prepare_options.json"), "w") as fout:
        json.dump(options, fout, indent=1, sort_keys=True)


def check_data_folder(data_folder, required, dataset, where):
    """Raises a clear error when the data set is not where the recipe looks.

    Arguments
    ---------
    data_folder : str
        The recipe's ``data_folder``.
    required : list of str
        Paths relative to ``data_folder`` that must exist.
    dataset : str
        Data set name.
    where : str
        How to get it.

    Example
    -------
    >>> check_data_folder("/nonexistent", ["meta"], "ESC-50", "see README")
    Traceback (most recent call last):
    ...
    FileNotFoundError: ESC-50 not found in /nonexistent: missing meta. see README ...
    """
    missing = [r for r in required if not os.path.exists(os.path.join(data_folder, r))]
    if missing:
        raise FileNotFoundError(
            f"{dataset} not found in {data_folder}: missing {', '.join(missing)}. "
            f"{where} Then pass --data_folder=/path/to/it."
        )


_WARNED_RATES = set()


def load_audio(path, sample_rate=16000):
    """Reads an audio file as a mono float tensor at ``sample_rate``.

    A file at another rate is resampled; a warning says so once per rate.

    Arguments
    ---------
    path : str
        Audio file (any format ``soundfile`` reads).
    sample_rate : int
        Target rate (resampled when the file's differs).

    Returns
    -------
    torch.Tensor
        ``[samples]``.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, torch.zeros(44100, 2).numpy(), 44100)
    >>> load_audio(path).shape
    torch.Size([16000])
    >>> load_audio("/nonexistent.wav")
    Traceback (most recent call last):
    ...
    FileNotFoundError: Audio file /nonexistent.wav does not exist...
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"Audio file {path} does not exist. The manifest is out of date: "
            "re-run the data preparation (without --skip_prep, after deleting "
            "the manifests) or fix the path."
        )
    try:
        audio, rate = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several error types
        raise RuntimeError(
            f"Cannot read the audio file {path} ({type(err).__name__}: {err}). "
            "Remove it from the manifest or re-run the data preparation, which "
            "reports and skips such files."
        ) from err
    sig = torch.from_numpy(audio).mean(dim=1)
    if rate != sample_rate:
        if (rate, sample_rate) not in _WARNED_RATES:
            _WARNED_RATES.add((rate, sample_rate))
            logger.warning(
                "Audio at %d Hz (e.g. %s) is resampled to %d Hz; this warning "
                "is shown once per rate.",
                rate,
                path,
                sample_rate,
            )
        with torch.no_grad():
            sig = _resampler(rate, sample_rate)(sig)
    return sig


def check_manifest_files(csv_path, column="wav", max_listed=5):
    """Raises a clear error when a manifest names audio files that are missing.

    Arguments
    ---------
    csv_path : str
        A SpeechBrain CSV manifest.
    column : str
        Column holding the audio paths.
    max_listed : int
        How many missing files the message lists.

    Example
    -------
    >>> import tempfile
    >>> out = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> write_manifest(out, [{"ID": "a", "wav": "/gone.wav", "duration": 1.0,
    ...                       "class_name": "dog"}])
    >>> check_manifest_files(out)
    Traceback (most recent call last):
    ...
    FileNotFoundError: 1 of the 1 audio files listed in .../train.csv are missing...
    """
    with open(csv_path, newline="") as fin:
        rows = list(csv.DictReader(fin))
    if rows and column not in rows[0]:
        raise KeyError(f"{csv_path} has no {column!r} column (audio paths).")
    missing = [r[column] for r in rows if not os.path.isfile(r[column])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(rows)} audio files listed in {csv_path} "
            f"are missing, e.g. {missing[:max_listed]}. The manifest is out of "
            "date or the data moved: delete the manifests and re-run the data "
            "preparation (without --skip_prep), or restore the files."
        )


@functools.lru_cache(maxsize=16)
def _resampler(orig, new):
    """A cached resampler (its filter kernel is built once per rate pair)."""
    return torchaudio.transforms.Resample(orig, new)


def classification_datasets(
    csv_files, label_encoder_file, sample_rate=16000, label_column="class_name"
):
    """Datasets yielding ``id``, ``sig`` (16 kHz) and ``label_encoded``.

    Arguments
    ---------
    csv_files : dict
        ``{"train": path, "valid": path, "test": path}`` manifests (columns
        ``ID``, ``wav``, ``duration`` and ``label_column``).
    label_encoder_file : str
        Where the label encoder is saved (created from the training set on
        the main process, loaded elsewhere).
    sample_rate : int
        Rate the audio is resampled to.
    label_column : str
        Manifest column holding the class name.

    Returns
    -------
    datasets : dict
        Split -> ``DynamicItemDataset``.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
    """
    import speechbrain as sb

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Reads, mixes down and resamples one file."""
        return load_audio(wav, sample_rate)

    label_encoder = sb.dataio.encoder.CategoricalEncoder()

    @sb.utils.data_pipeline.takes(label_column)
    @sb.utils.data_pipeline.provides("label", "label_encoded")
    def label_pipeline(label):
        """Class name and its index."""
        yield label
        yield label_encoder.encode_label_torch(label)

    datasets = {}
    for split, path in csv_files.items():
        check_manifest_files(path)
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(path)
        datasets[split].add_dynamic_item(audio_pipeline)
        datasets[split].add_dynamic_item(label_pipeline)
        datasets[split].set_output_keys(["id", "sig", "label", "label_encoded"])
    label_encoder.load_or_create(
        path=label_encoder_file,
        from_didatasets=[datasets["train"]],
        output_key="label",
    )
    return datasets, label_encoder


_ACCURACY = re.compile(r"test accuracy: ([-+0-9.eE]+)")


def read_test_accuracy(train_log):
    """The last test accuracy a recipe wrote to its ``train_log.txt``.

    Arguments
    ---------
    train_log : str
        Path of the log.

    Returns
    -------
    float

    Example
    -------
    >>> import tempfile
    >>> log = os.path.join(tempfile.mkdtemp(), "train_log.txt")
    >>> _ = open(log, "w").write("Epoch loaded: 2 - test loss: 1.0, test accuracy: 0.75\\n")
    >>> read_test_accuracy(log)
    0.75
    """
    with open(train_log) as fin:
        found = _ACCURACY.findall(fin.read())
    if not found:
        raise RuntimeError(f"No test accuracy in {train_log}: did the run finish?")
    return float(found[-1])


def cross_validate(
    script, hparams_file, folds, output_folder, extra_args=(), launcher=None
):
    """Runs ``script`` once per fold and reports test accuracy mean ± std.

    Arguments
    ---------
    script : str
        The recipe's ``train.py``.
    hparams_file : str
        Its YAML.
    folds : list of int
        Fold numbers (``--fold`` of the recipe).
    output_folder : str
        Fold ``k`` writes to ``<output_folder>/fold<k>``; the summary goes to
        ``<output_folder>/cross_validation.json``.
    extra_args : list of str
        Further command-line arguments (``--data_folder=...`` etc.).
    launcher : list of str, optional
        Command prefix (default: this Python; e.g. ``["torchrun",
        "--standalone", "--nproc_per_node=2"]``).

    Returns
    -------
    dict
        ``folds`` (fold -> accuracy), ``mean``, ``std``.
    """
    launcher = list(launcher) if launcher else [sys.executable]
    results = {}
    for fold in folds:
        fold_folder = os.path.join(output_folder, f"fold{fold}")
        cmd = launcher + [
            script,
            hparams_file,
            f"--fold={fold}",
            f"--output_folder={fold_folder}",
            *extra_args,
        ]
        logger.info("Cross-validation fold %s: %s", fold, " ".join(cmd))
        subprocess.run(cmd, check=True)
        results[fold] = read_test_accuracy(os.path.join(fold_folder, "train_log.txt"))
        print(f"fold {fold}: test accuracy {results[fold]:.4f}", flush=True)
    values = list(results.values())
    summary = {
        "folds": results,
        "mean": statistics.fmean(values),
        "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
    }
    os.makedirs(output_folder, exist_ok=True)
    with open(os.path.join(output_folder, "cross_validation.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    print(
        f"{len(values)}-fold cross-validation: test accuracy "
        f"{summary['mean']:.4f} ± {summary['std']:.4f}",
        flush=True,
    )
    return summary


def cross_validation_main(script, default_folds, argv=None):
    """Command line of a recipe's ``cross_validate.py``.

    ``cross_validate.py HPARAMS --output_folder=DIR [--folds=1,2] [--nproc=2]
    [recipe arguments...]``

    Arguments
    ---------
    script : str
        The recipe's ``train.py``.
    default_folds : int
        Number of folds of the data set.
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).

    Returns
    -------
    dict
        See :func:`cross_validate`.
    """
    import argparse

    parser = argparse.ArgumentParser(
        description="Runs every fold of a recipe and reports mean ± std accuracy."
    )
    parser.add_argument("hparams_file")
    parser.add_argument("--output_folder", required=True)
    parser.add_argument(
        "--folds", default=",".join(map(str, range(1, default_folds + 1)))
    )
    parser.add_argument("--nproc", type=int, default=1, help="> 1: torchrun DDP")
    args, rest = parser.parse_known_args(argv)
    launcher = None
    if args.nproc > 1:
        launcher = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={args.nproc}",
        ]
    folds = [int(f) for f in args.folds.split(",") if f.strip()]
    return cross_validate(
        script, args.hparams_file, folds, args.output_folder, rest, launcher
    )
