"""Reading clips and building the classification recipes' datasets, with
errors naming the file at fault."""

import csv
import functools
import os

import speechbrain as sb
import torch
import torchaudio
from speechbrain.dataio import audio_io
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

OUTPUT_KEYS = ["id", "sig", "label", "label_encoded"]
TRAINING_HINT = (
    "The manifest is out of date or the data moved: delete the manifests and re-run "
    "the data preparation (it reports and skips unusable files), or restore the file."
)


@functools.lru_cache(maxsize=16)
def _resampler(orig, new):
    """A cached resampler (its filter kernel is built once per rate pair)."""
    return torchaudio.transforms.Resample(orig, new)


def read_clip(
    path, sample_rate=16000, max_seconds=None, hint=TRAINING_HINT, warn_cut=True
):
    """Reads an audio file (any format SpeechBrain's ``audio_io`` reads) as a
    mono float waveform ``[samples]``, resampled to ``sample_rate``.

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int
        Rate of the result.
    max_seconds : float, optional
        Longer clips are cut to this duration, with a warning naming them
        (once per clip and process, not once per epoch).
    hint : str
        What to do when the file is missing or unreadable (in the message).
    warn_cut : bool
        False: cut without a warning (the caller reported it, e.g. with
        :func:`report_cut_clips`).

    Returns
    -------
    torch.Tensor
        ``[samples]`` float waveform.

    Example
    -------
    >>> import tempfile, soundfile as sf
    >>> path = os.path.join(tempfile.mkdtemp(), "a.wav")
    >>> sf.write(path, torch.zeros(44100, 2).numpy(), 44100)
    >>> read_clip(path).shape, read_clip(path, max_seconds=0.5).shape
    (torch.Size([16000]), torch.Size([8000]))
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"Audio file {path} does not exist. {hint}")
    try:
        audio, rate = audio_io.load(path)  # [channels, samples]
    except Exception as err:  # the audio backends raise several types
        raise RuntimeError(
            f"Cannot read the audio file {path} ({type(err).__name__}: {err}). {hint}"
        ) from err
    sig = audio.float().mean(dim=0)
    if rate != sample_rate:
        with torch.no_grad():
            sig = _resampler(rate, sample_rate)(sig)
    if max_seconds is not None and sig.shape[0] > max_seconds * sample_rate:
        if warn_cut and (path, max_seconds) not in _CUT_REPORTED:
            _CUT_REPORTED.add((path, max_seconds))
            logger.warning(
                "%s (%.2f s) is longer than the backbone's maximum of %.2f s; cut.",
                path,
                sig.shape[0] / sample_rate,
                max_seconds,
            )
        sig = sig[: int(max_seconds * sample_rate)]
    return sig


#: ``(path, max_seconds)`` of the clips whose cut :func:`read_clip` already
#: reported in this process: a clip is named once, not once per epoch.
_CUT_REPORTED = set()


def report_cut_clips(csv_path, max_seconds, column="duration"):
    """Names, once and before training, the clips of a manifest longer than
    ``max_seconds`` (from its ``duration`` column), which the pipeline cuts.

    Arguments
    ---------
    csv_path : str
        A manifest with ``wav`` and ``duration`` columns.
    max_seconds : float, optional
        The backbone's maximum (None: nothing is cut).
    column : str
        The column holding durations in seconds.

    Returns
    -------
    bool
        Whether the manifest has durations (the clips it names are not
        named again by :func:`read_clip`).

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> _ = open(path, "w").write("ID,wav,duration\\na,a.wav,5.0\\nb,b.wav,1.0\\n")
    >>> report_cut_clips(path, 2.0)
    True
    """
    rows = _read_rows(csv_path)
    if not rows or column not in rows[0]:
        return False
    if max_seconds is None:
        return True
    try:
        long = [
            (r["wav"], float(r[column])) for r in rows if float(r[column]) > max_seconds
        ]
    except ValueError:
        return False
    for wav, seconds in long:
        _CUT_REPORTED.add((wav, max_seconds))
        logger.warning(
            "%s (%.2f s) is longer than the backbone's maximum of %.2f s; cut.",
            wav,
            seconds,
            max_seconds,
        )
    if long:
        logger.warning(
            "%d of the %d clips of %s are longer than %.2f s and are cut to it.",
            len(long),
            len(rows),
            csv_path,
            max_seconds,
        )
    return True


def _read_rows(csv_path):
    """The rows of a manifest (a UTF-8 byte-order mark is accepted)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as fin:
        reader = csv.DictReader(fin)
        reader.fieldnames = [name.strip() for name in reader.fieldnames or []]
        return list(reader)


def _check_manifest(csv_path, label_column="class_name", column="wav", max_listed=5):
    """The rows of a manifest, or a clear error for an empty manifest, a
    missing column, duplicated ids or missing audio files."""
    rows = _read_rows(csv_path)
    if not rows:
        raise ValueError(
            f"The manifest {csv_path} has no rows. {TRAINING_HINT.split(': ')[1]}"
        )
    expected = ["ID", column, label_column]
    lacking = [name for name in expected if name not in rows[0]]
    if lacking:
        raise KeyError(
            f"The manifest {csv_path} lacks the column(s) {lacking}: expected "
            f"{expected} (ID, audio path, class name), found {list(rows[0])}. "
            "Rename the columns of your CSV, or (another label column) pass "
            "its name as label_column; the recipes' preparation writes ID, "
            "wav, duration, class_name."
        )
    seen, duplicates = set(), []
    for row in rows:
        if row["ID"] in seen and row["ID"] not in duplicates:
            duplicates.append(row["ID"])
        seen.add(row["ID"])
    if duplicates:
        raise ValueError(
            f"The manifest {csv_path} lists {len(duplicates)} id(s) more than "
            f"once: {duplicates[:10]}. Each clip must have its own ID: remove "
            "the duplicated rows or re-run the data preparation."
        )
    missing = [r[column] for r in rows if not os.path.isfile(r[column])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(rows)} audio files listed in {csv_path} "
            f"are missing, e.g. {missing[:max_listed]}. {TRAINING_HINT}"
        )
    return rows


def check_known_labels(rows_by_split, known, label_column="class_name", limit=10):
    """Raises ``ValueError`` when a validation or test manifest holds labels
    the training manifest has none of (the head could never predict them),
    naming the manifest, the labels and the clips, before training starts.

    Arguments
    ---------
    rows_by_split : dict
        Split -> ``(csv_path, rows)``; the ``train`` split is not checked.
    known : collection of str
        The training data's labels.
    label_column : str
        Manifest column holding the class name.
    limit : int
        Clips named at most per manifest.

    Example
    -------
    >>> rows = [{"ID": "a", "class_name": "dog"}, {"ID": "b", "class_name": "owl"}]
    >>> check_known_labels({"test": ("test.csv", rows)}, {"dog", "cat"})
    Traceback (most recent call last):
    ...
    ValueError: The test manifest test.csv holds 1 clip(s) of label(s) the training data has none of: ['owl'] (clips ['b']). ...
    """
    for split, (path, rows) in rows_by_split.items():
        if split == "train":
            continue
        unknown = [row for row in rows if row[label_column] not in known]
        if unknown:
            labels = sorted({row[label_column] for row in unknown})
            clips = [row["ID"] for row in unknown[:limit]]
            more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
            raise ValueError(
                f"The {split} manifest {path} holds {len(unknown)} clip(s) of "
                f"label(s) the training data has none of: {labels} (clips "
                f"{clips}{more}). A model cannot learn a class it never sees: "
                "give the training split examples of these classes (check the "
                "data preparation's split or fold), or remove these clips."
            )


def classification_datasets(
    csv_files,
    label_encoder,
    label_encoder_file,
    sample_rate=16000,
    max_seconds=None,
    label_column="class_name",
):
    """Datasets yielding ``id``, ``sig`` (see :func:`read_clip`), ``label`` and
    ``label_encoded``.

    Arguments
    ---------
    csv_files : dict
        Split -> manifest; the ``train`` split defines the classes.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        An empty encoder, filled from ``label_encoder_file`` (written first
        from the training set, once per node, when missing).
    label_encoder_file : str
        Where the classes are saved.
    sample_rate, max_seconds
        As for :func:`read_clip`.
    label_column : str
        Manifest column holding the class name.

    Returns
    -------
    dict
        Split -> ``DynamicItemDataset``.

    Before anything trains, the manifests are checked (columns, unique ids,
    audio files present; a UTF-8 byte-order mark is accepted), the clips
    that will be cut are named once, and a validation or test label that the
    training data has none of is refused naming the manifest and the clips
    (:func:`check_known_labels`).

    Example
    -------
    >>> import tempfile, soundfile as sf
    >>> folder = tempfile.mkdtemp()
    >>> csvs = {}
    >>> for split, label in [("train", "dog"), ("valid", "dog"), ("test", "owl")]:
    ...     sf.write(os.path.join(folder, split + ".wav"), torch.rand(1600).numpy(), 16000)
    ...     csvs[split] = os.path.join(folder, split + ".csv")
    ...     _ = open(csvs[split], "w").write(
    ...         f"ID,wav,duration,class_name\\n{split},{folder}/{split}.wav,0.1,{label}\\n")
    >>> encoder = sb.dataio.encoder.CategoricalEncoder()
    >>> classification_datasets(csvs, encoder, os.path.join(folder, "labels.txt"))
    Traceback (most recent call last):
    ...
    ValueError: The test manifest ... holds 1 clip(s) of label(s) the training data has none of: ['owl'] (clips ['test']). ...
    """

    rows = {
        split: (path, _check_manifest(path, label_column))
        for split, path in csv_files.items()
    }
    # Cuts are named once per clip here, from the manifests' durations;
    # read_clip names (once) any other clip it cuts.
    for path in csv_files.values():
        report_cut_clips(path, max_seconds)

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Reads, mixes down, resamples and cuts one file."""
        return read_clip(wav, sample_rate, max_seconds)

    @sb.utils.data_pipeline.takes(label_column)
    @sb.utils.data_pipeline.provides("label", "label_encoded")
    def label_pipeline(label):
        """Class name and its index."""
        yield label
        yield label_encoder.encode_label_torch(label)

    datasets = {}
    for split, (_, split_rows) in rows.items():
        data = {}
        for row in split_rows:
            item = {k: v for k, v in row.items() if k != "ID"}
            if "duration" in item:
                item["duration"] = float(item["duration"])
            data[row["ID"]] = item
        datasets[split] = sb.dataio.dataset.DynamicItemDataset(
            data, [audio_pipeline, label_pipeline], OUTPUT_KEYS
        )

    def write_classes():
        """Saves the training set's classes (once per node, first run)."""
        if not os.path.isfile(label_encoder_file):
            encoder = sb.dataio.encoder.CategoricalEncoder()
            encoder.update_from_didataset(datasets["train"], output_key="label")
            encoder.save(label_encoder_file)

    sb.utils.distributed.run_once_per_node(write_classes)
    label_encoder.load(label_encoder_file)
    label_encoder.expect_len(len(label_encoder))
    check_known_labels(rows, set(label_encoder.lab2ind), label_column)
    return datasets
