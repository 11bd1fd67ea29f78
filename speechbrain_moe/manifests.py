"""What every ``<dataset>_prepare.py`` of the recipes shares: unusable audio is
reported by name and skipped; manifests are written atomically, once.
"""

import csv
import json
import os

import numpy as np
import soundfile as sf
from speechbrain.utils.logger import get_logger
from tqdm import tqdm

logger = get_logger(__name__)

MANIFEST_FIELDS = ["ID", "wav", "duration", "class_name"]
OPTIONS_FILE = "prepare_options.json"


def _check_audio(path):
    """``(duration, None)`` for a usable audio file, ``(None, why)`` otherwise."""
    if not os.path.isfile(path):
        return None, "missing"
    if os.path.getsize(path) == 0:
        return None, "empty (0-byte file)"
    try:
        info = sf.info(path)
        if info.frames <= 0 or info.samplerate <= 0:
            return None, "empty (no audio samples)"
        audio, _ = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:  # soundfile raises several error types
        return None, f"unreadable ({type(err).__name__}: {err})"
    if audio.size == 0:
        return None, "empty (no audio samples)"
    if not np.isfinite(audio).all():
        return None, "contains NaN/inf samples"
    if not np.any(audio):
        return None, "silent (every sample is zero)"
    return info.frames / info.samplerate, None


def _already_prepared(save_folder, files, options):
    """Whether a preparation already wrote ``files`` with the same ``options``."""
    opt_file = os.path.join(save_folder, OPTIONS_FILE)
    if not os.path.isfile(opt_file) or not all(os.path.isfile(f) for f in files):
        return False
    with open(opt_file) as fin:
        return json.load(fin) == json.loads(json.dumps(options))


def check_data_folder(data_folder, required, dataset, where):
    """Raises a clear error when the data set is not where the recipe looks.

    Arguments
    ---------
    data_folder : str
        The recipe's ``data_folder``.
    required : list of str
        Paths relative to ``data_folder`` that must exist.
    dataset, where : str
        Data set name, and how to get it.

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


def _split_files(save_folder):
    """The train/valid/test manifest paths of a preparation, by split."""
    return {
        s: os.path.join(save_folder, f"{s}.csv") for s in ("train", "valid", "test")
    }


def fold_options(data_folder, test_fold, valid_fold, num_folds):
    """Checks a cross-validation split and returns its preparation options.

    Arguments
    ---------
    data_folder : str
        The data set's folder.
    test_fold, valid_fold : int
        Folds used for testing and validation (None: the one after test_fold).
    num_folds : int
        Folds of the data set.

    Example
    -------
    >>> fold_options("/data", 5, None, 5)
    {'data_folder': '/data', 'test_fold': 5, 'valid_fold': 1}
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
    """Keeps the usable clips, with their duration; logs the others by name
    (unreadable, empty, NaN/inf, or digitally silent: a broken export).

    Arguments
    ---------
    clips : list of dict
        One per clip, with ``wav`` (path) and any manifest columns.
    dataset : str
        Data set name, for messages.

    Returns
    -------
    list of dict

    Example
    -------
    >>> import tempfile
    >>> folder, clips = tempfile.mkdtemp(), []
    >>> for name, value in [("ok", 0.1), ("silent", 0.0), ("nan", np.nan)]:
    ...     clips.append({"ID": name, "wav": os.path.join(folder, name + ".wav")})
    ...     sf.write(clips[-1]["wav"], np.full(1600, value), 16000, subtype="FLOAT")
    >>> [(clip["ID"], clip["duration"]) for clip in scan_clips(clips, "Demo")]
    [('ok', 0.1)]
    """
    kept, skipped = [], []
    for clip in tqdm(clips, desc=f"{dataset}: checking audio", unit="file"):
        duration, problem = _check_audio(clip["wav"])
        if problem:
            skipped.append(f"  {clip['wav']}: {problem}")
        else:
            wav, duration = os.path.abspath(clip["wav"]), round(duration, 3)
            kept.append({**clip, "wav": wav, "duration": duration})
    logger.info(
        "%s: kept %d audio files, skipped %d.", dataset, len(kept), len(skipped)
    )
    if skipped:
        logger.warning(
            "%s preparation skipped %d audio file(s) that cannot be used:\n%s",
            dataset,
            len(skipped),
            "\n".join(skipped),
        )
    return kept


def fold_split(options):
    """The split of a clip in a cross-validation preparation, from its ``fold``.

    Arguments
    ---------
    options : dict
        From :func:`fold_options`.

    Returns
    -------
    callable

    Example
    -------
    >>> split = fold_split({"test_fold": 1, "valid_fold": 2})
    >>> [split({"fold": f}) for f in (1, 2, 3)]
    ['test', 'valid', 'train']
    """
    names = {options["valid_fold"]: "valid", options["test_fold"]: "test"}
    return lambda clip: names.get(int(clip["fold"]), "train")


def prepare_manifests(save_folder, options, list_clips, dataset, split_of, **kwargs):
    """Writes the train/valid/test manifests, unless they exist for ``options``.

    Arguments
    ---------
    save_folder : str
        Where the manifests go.
    options : dict
        The preparation's options (recorded; an identical preparation is skipped).
    list_clips : callable
        ``() -> list of dict``: every clip of the data set, with its manifest
        columns (``ID``, ``wav``, ``class_name``, ...).
    dataset : str
        Data set name, for messages.
    split_of : callable
        ``clip -> split name``, e.g. from :func:`fold_split`.
    **kwargs
        ``skip_prep`` (do nothing) and ``clips`` (already scanned clips,
        e.g. shared by the folds of a cross-validation).

    Returns
    -------
    dict
        Split -> CSV path.
    """
    files = _split_files(save_folder)
    if kwargs.get("skip_prep"):
        return files
    if _already_prepared(save_folder, list(files.values()), options):
        logger.info("%s manifests already in %s, skipping.", dataset, save_folder)
        return files
    clips = kwargs.get("clips") or scan_clips(list_clips(), dataset)
    rows = {split: [] for split in files}
    for clip in clips:
        rows[split_of(clip)].append(clip)
    for split, path in files.items():
        if not rows[split]:
            raise RuntimeError(
                f"{dataset} preparation found no usable audio for {split} "
                f"(options {options}); check the data folder."
            )
        extra = sorted({k for row in rows[split] for k in row} - set(MANIFEST_FIELDS))
        os.makedirs(save_folder, exist_ok=True)
        with open(f"{path}.tmp", "w", newline="") as fout:  # atomic
            writer = csv.DictWriter(fout, fieldnames=MANIFEST_FIELDS + extra)
            writer.writeheader()
            writer.writerows(rows[split])
        os.replace(f"{path}.tmp", path)
        logger.info("Wrote %s (%d clips)", path, len(rows[split]))
    with open(os.path.join(save_folder, OPTIONS_FILE), "w") as fout:
        json.dump(options, fout, indent=1, sort_keys=True)
    return files
