"""What every ``<dataset>_prepare.py`` of the recipes shares: unusable audio is
reported by name and skipped; manifests are written atomically, once.

Honest preparation:

- A preparation records its options and a signature (size and modification
  time) of its input files (the metadata CSV, the split lists, ...) in
  ``prepare_options.json``; a rerun is skipped only when both are the same,
  so fixing a CSV or changing an option rebuilds the manifests (the log says
  what changed).
- Every skipped audio file and metadata line is counted and named in the log:
  unreadable, empty, NaN/inf, digitally silent, or shorter than
  :data:`MIN_SECONDS` (25 ms, one analysis window: a shorter clip is a
  broken export, not a sound event or a word).
- Metadata CSVs are read with or without a UTF-8 byte-order mark; a missing
  column names the file, the expected and the found columns; duplicate ids
  name the ids and the file.
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
#: Shortest usable clip, in seconds: shorter audio files are skipped (named in
#: the log). 25 ms is one analysis window of the backbones' front ends (the
#: 400-sample Kaldi fbank window of AST, Whisper's 400-sample STFT window, the
#: 400-sample receptive field of WavLM's convolutions at 16 kHz): a shorter
#: file is a broken export (e.g. a 100-byte WAV), not a sound. It is kept this
#: low on purpose: real UrbanSound8K slices can be a few tens of milliseconds
#: long, and each backbone pads a short clip to what it needs.
MIN_SECONDS = 0.025


def _check_audio(path, min_seconds=MIN_SECONDS):
    """``(duration, None)`` for a usable audio file, ``(None, why)`` otherwise."""
    if not os.path.isfile(path):
        return None, "missing"
    if os.path.getsize(path) == 0:
        return None, "empty (0-byte file)"
    try:
        info = sf.info(path)
        if info.frames <= 0 or info.samplerate <= 0:
            return None, "empty (no audio samples)"
        duration = info.frames / info.samplerate
        if duration < min_seconds:
            return None, (
                f"too short ({duration * 1000:.1f} ms; the minimum is {min_seconds} s)"
            )
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


def input_signature(paths):
    """A cheap signature of a preparation's input files: each one's size and
    modification time (ns), so that an edited metadata file is noticed
    without hashing the audio.

    Arguments
    ---------
    paths : list of str
        Input files or folders (a folder's time changes when entries are
        added or removed).

    Returns
    -------
    dict
        Absolute path -> ``[size, mtime_ns]`` (``None`` for a missing path).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "meta.csv")
    >>> _ = open(path, "w").write("a,b\\n")
    >>> list(input_signature([path]).values())[0][0]
    4
    """
    signature = {}
    for path in paths:
        path = os.path.abspath(path)
        if os.path.exists(path):
            stat = os.stat(path)
            signature[path] = [stat.st_size, stat.st_mtime_ns]
        else:
            signature[path] = None
    return signature


def already_prepared(save_folder, files, options):
    """Whether a preparation already wrote ``files`` with the same
    ``options`` (input signatures included), as recorded in
    ``<save_folder>/prepare_options.json``.

    Arguments
    ---------
    save_folder : str
        Where the manifests and the options file are.
    files : list of str
        The manifests.
    options : dict
        The options of this preparation (JSON-serialisable).

    Returns
    -------
    done : bool
        True: nothing to do.
    why : str
        What differs (empty when ``done``).

    Example
    -------
    >>> import tempfile
    >>> already_prepared(tempfile.mkdtemp(), [], {"fold": 1})
    (False, 'prepare_options.json missing')
    """
    opt_file = os.path.join(save_folder, OPTIONS_FILE)
    if not all(os.path.isfile(f) for f in files):
        return False, "manifests missing"
    if not os.path.isfile(opt_file):
        return False, f"{OPTIONS_FILE} missing"
    with open(opt_file) as fin:
        try:
            recorded = json.load(fin)
        except json.JSONDecodeError:
            return False, f"{OPTIONS_FILE} unreadable"
    wanted = json.loads(json.dumps(options))
    if recorded == wanted:
        return True, ""
    changed = sorted(
        key
        for key in set(recorded) | set(wanted)
        if recorded.get(key) != wanted.get(key)
    )
    if changed == ["inputs"] and isinstance(recorded.get("inputs"), dict):
        old, new = recorded["inputs"], wanted["inputs"]
        changed = [p for p in sorted(set(old) | set(new)) if old.get(p) != new.get(p)]
        return False, f"input file(s) changed: {', '.join(changed)}"
    return False, f"option(s) changed: {', '.join(changed)}"


def read_metadata(path, columns, dataset, converters=None):
    """The rows of a data set's metadata CSV (with or without a UTF-8
    byte-order mark); lines with an empty or malformed required value are
    skipped, counted and named in the log.

    Arguments
    ---------
    path : str
        The CSV.
    columns : list of str
        Columns the preparation needs.
    dataset : str
        Data set name, for messages.
    converters : dict, optional
        Column -> function applied to its value (e.g. ``{"fold": int}``); a
        value it refuses skips the line.

    Returns
    -------
    list of dict
        One per kept line (converted values).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "meta.csv")
    >>> _ = open(path, "w", encoding="utf-8-sig").write("filename,fold\\na.wav,1\\nb.wav,\\n")
    >>> read_metadata(path, ["filename", "fold"], "Demo", {"fold": int})
    [{'filename': 'a.wav', 'fold': 1}]
    >>> read_metadata(path, ["file", "fold"], "Demo")
    Traceback (most recent call last):
    ...
    ValueError: Demo metadata file ... lacks the column(s) ['file']: ...
    """
    converters = converters or {}
    with open(path, newline="", encoding="utf-8-sig") as fin:
        reader = csv.DictReader(fin)
        found = [name.strip() for name in reader.fieldnames or []]
        missing = [c for c in columns if c not in found]
        if missing:
            raise ValueError(
                f"{dataset} metadata file {path} lacks the column(s) {missing}: "
                f"expected {columns}, found {found}. Restore the data set's "
                "official file (or rename the columns of yours to these names)."
            )
        reader.fieldnames = found
        rows, skipped = [], []
        for line, row in enumerate(reader, start=2):
            empty = [c for c in columns if not (row.get(c) or "").strip()]
            if empty:
                skipped.append(f"  {path}:{line}: empty {', '.join(empty)}")
                continue
            try:
                for column, convert in converters.items():
                    row[column] = convert(row[column].strip())
            except ValueError as err:
                skipped.append(f"  {path}:{line}: {column} {err}")
                continue
            rows.append(row)
    if skipped:
        logger.warning(
            "%s preparation skipped %d line(s) of %s:\n%s",
            dataset,
            len(skipped),
            path,
            "\n".join(skipped),
        )
    return rows


def check_unique_ids(clips, source, dataset):
    """Raises ``ValueError`` when two clips share an ``ID``.

    Arguments
    ---------
    clips : list of dict
        Clips with an ``ID``.
    source : str
        The file they come from (named in the message).
    dataset : str
        Data set name.

    Example
    -------
    >>> check_unique_ids([{"ID": "a"}, {"ID": "a"}], "meta.csv", "Demo")
    Traceback (most recent call last):
    ...
    ValueError: Demo: 1 id(s) appear more than once in meta.csv: ['a']. ...
    """
    seen, duplicates = set(), []
    for clip in clips:
        if clip["ID"] in seen and clip["ID"] not in duplicates:
            duplicates.append(clip["ID"])
        seen.add(clip["ID"])
    if duplicates:
        raise ValueError(
            f"{dataset}: {len(duplicates)} id(s) appear more than once in {source}: "
            f"{duplicates[:10]}. Each clip must be listed once: remove the "
            "duplicated lines (or rename the files) and re-run the preparation."
        )


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

    Returns
    -------
    dict
        ``data_folder`` (absolute), ``test_fold`` and ``valid_fold``, the
        keyword arguments of the data preparation.

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


def scan_clips(clips, dataset, min_seconds=MIN_SECONDS):
    """Keeps the usable clips, with their duration; logs the others by name
    (unreadable, empty, NaN/inf, digitally silent or too short: a broken
    export).

    Arguments
    ---------
    clips : list of dict
        One per clip, with ``wav`` (path) and any manifest columns.
    dataset : str
        Data set name, for messages.

    min_seconds : float
        Shorter clips are skipped (:data:`MIN_SECONDS`).

    Returns
    -------
    list of dict

    Example
    -------
    >>> import tempfile
    >>> folder, clips = tempfile.mkdtemp(), []
    >>> for name, value, n in [("ok", 0.1, 1600), ("silent", 0.0, 1600),
    ...                        ("nan", np.nan, 1600), ("short", 0.1, 16)]:
    ...     clips.append({"ID": name, "wav": os.path.join(folder, name + ".wav")})
    ...     sf.write(clips[-1]["wav"], np.full(n, value), 16000, subtype="FLOAT")
    >>> [(clip["ID"], clip["duration"]) for clip in scan_clips(clips, "Demo")]
    [('ok', 0.1)]
    """
    kept, skipped = [], []
    for clip in tqdm(clips, desc=f"{dataset}: checking audio", unit="file"):
        duration, problem = _check_audio(clip["wav"], min_seconds)
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
        ``skip_prep`` (do nothing), ``clips`` (already scanned clips, e.g.
        shared by the folds of a cross-validation) and ``inputs`` (the input
        files whose :func:`input_signature` is recorded with the options;
        the first one is named when ids are duplicated).

    Returns
    -------
    dict
        Split -> CSV path.

    Example
    -------
    >>> import tempfile
    >>> import numpy as np, soundfile
    >>> folder, clips = tempfile.mkdtemp(), []
    >>> for split in ("train", "valid", "test"):
    ...     wav = os.path.join(folder, f"{split}.wav")
    ...     soundfile.write(wav, np.full(1600, 0.1), 16000)
    ...     clips.append({"ID": split, "wav": wav, "class_name": "dog"})
    >>> files = prepare_manifests(
    ...     folder, {"seed": 1}, lambda: clips, "Toy", lambda clip: clip["ID"])
    >>> sorted(files), open(files["test"]).readline().strip()
    (['test', 'train', 'valid'], 'ID,wav,duration,class_name')
    """
    files = _split_files(save_folder)
    if kwargs.get("skip_prep"):
        return files
    inputs = list(kwargs.get("inputs") or [])
    if inputs:
        options = {**options, "inputs": input_signature(inputs)}
    done, why = already_prepared(save_folder, list(files.values()), options)
    if done:
        logger.info("%s manifests already in %s, skipping.", dataset, save_folder)
        return files
    if os.path.isfile(os.path.join(save_folder, OPTIONS_FILE)):
        logger.info("%s manifests in %s rebuilt: %s.", dataset, save_folder, why)
    source = ", ".join(inputs[:3]) if inputs else f"the {dataset} data"
    clips = kwargs.get("clips")
    if clips is None:
        listed = list_clips()
        check_unique_ids(listed, source, dataset)  # before the audio is read
        clips = scan_clips(listed, dataset)
    else:
        check_unique_ids(clips, source, dataset)
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
