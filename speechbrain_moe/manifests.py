"""What every ``<dataset>_prepare.py`` of the recipes shares.

Audio that cannot be used (unreadable, empty, NaN/inf, digitally silent) is
reported by name and skipped; manifests are written atomically, once, and the
preparation is skipped when they exist for the same options.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import json
import os

import numpy as np
import soundfile as sf
import torch  # noqa: F401  (used by the doctests)
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

logger = get_logger(__name__)

MANIFEST_FIELDS = ["ID", "wav", "duration", "class_name"]


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


def split_files(save_folder):
    """The train/valid/test manifests of a preparation.

    Arguments
    ---------
    save_folder : str
        Where the manifests go.

    Returns
    -------
    dict
        Split -> CSV path.

    Example
    -------
    >>> sorted(split_files("out"))
    ['test', 'train', 'valid']
    """
    return {
        s: os.path.join(save_folder, f"{s}.csv") for s in ("train", "valid", "test")
    }


def fold_options(data_folder, test_fold, valid_fold, num_folds):
    """Checks a cross-validation split and returns its preparation options.

    Arguments
    ---------
    data_folder : str
        The data set's folder.
    test_fold : int
        Fold used for testing.
    valid_fold : int or None
        Fold used for validation (None: the fold after ``test_fold``).
    num_folds : int
        Folds of the data set.

    Returns
    -------
    dict

    Example
    -------
    >>> fold_options("/data", 5, None, 5)["valid_fold"]
    1
    >>> fold_options("/data", 6, None, 5)
    Traceback (most recent call last):
    ...
    ValueError: test_fold must be between 1 and 5, got 6; set --fold ...
    """
    if valid_fold is None:
        valid_fold = int(test_fold) % num_folds + 1
    for name, fold in (("test_fold", test_fold), ("valid_fold", valid_fold)):
        if not 1 <= int(fold) <= num_folds:
            raise ValueError(
                f"{name} must be between 1 and {num_folds}, got {fold}; set "
                "--fold (and --valid_fold) accordingly."
            )
    if int(test_fold) == int(valid_fold):
        raise ValueError(f"valid_fold and test_fold must differ (both {test_fold}).")
    return {
        "data_folder": os.path.abspath(data_folder),
        "test_fold": int(test_fold),
        "valid_fold": int(valid_fold),
    }


def scan_clips(clips, dataset):
    """Keeps the usable clips, with their duration; reports the others.

    Arguments
    ---------
    clips : list of dict
        One per clip, with ``wav`` (path) and any manifest columns.
    dataset : str
        Data set name (for messages).

    Returns
    -------
    list of dict
        The usable clips with ``duration`` added.
    """
    kept, skipped = [], []
    for clip in tqdm(clips, desc=f"{dataset}: checking audio", unit="file"):
        duration, problem = check_audio(clip["wav"])
        if problem:
            skipped.append((clip["wav"], problem))
        else:
            kept.append({**clip, "wav": os.path.abspath(clip["wav"])})
            kept[-1]["duration"] = round(duration, 3)
    logger.info(
        "%s: kept %d audio files, skipped %d.", dataset, len(kept), len(skipped)
    )
    report_skipped(skipped, dataset)
    return kept


def fold_split(options):
    """The split of a clip in a cross-validation preparation.

    Arguments
    ---------
    options : dict
        From :func:`fold_options`.

    Returns
    -------
    callable
        ``clip -> "train" | "valid" | "test"`` from the clip's ``fold``.

    Example
    -------
    >>> split = fold_split({"test_fold": 1, "valid_fold": 2})
    >>> [split({"fold": f}) for f in (1, 2, 3)]
    ['test', 'valid', 'train']
    """

    def split(clip):
        """Test fold, validation fold, or training."""
        fold = int(clip["fold"])
        if fold == options["test_fold"]:
            return "test"
        return "valid" if fold == options["valid_fold"] else "train"

    return split


def write_manifests(clips, save_folder, options, dataset, split_of):
    """Writes the train/valid/test manifests and records the options.

    Arguments
    ---------
    clips : list of dict
        Usable clips (from :func:`scan_clips`).
    save_folder : str
        Where the manifests go.
    options : dict
        The preparation's options (saved, so that an identical preparation is
        skipped next time).
    dataset : str
        Data set name (for messages).
    split_of : callable
        ``clip -> split name``.

    Returns
    -------
    dict
        Split -> CSV path.
    """
    files = split_files(save_folder)
    rows = {split: [] for split in files}
    for clip in clips:
        rows[split_of(clip)].append(clip)
    for split, path in files.items():
        if not rows[split]:
            raise RuntimeError(
                f"{dataset} preparation found no usable audio for {split} "
                f"(options {options}); check the data folder."
            )
        write_manifest(path, rows[split])
        logger.info("Wrote %s (%d clips)", path, len(rows[split]))
    save_preparation_options(save_folder, options)
    return files
