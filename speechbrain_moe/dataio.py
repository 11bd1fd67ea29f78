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


def read_clip(path, sample_rate=16000, max_seconds=None, hint=TRAINING_HINT):
    """Reads an audio file (any format SpeechBrain's ``audio_io`` reads) as a
    mono float waveform ``[samples]``, resampled to ``sample_rate``.

    Arguments
    ---------
    path : str
        Audio file.
    sample_rate : int
        Rate of the result.
    max_seconds : float, optional
        Longer clips are cut to this duration, with a warning naming them.
    hint : str
        What to do when the file is missing or unreadable (in the message).

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
        logger.warning(
            "%s (%.2f s) is longer than the backbone's maximum of %.2f s; cut.",
            path,
            sig.shape[0] / sample_rate,
            max_seconds,
        )
        sig = sig[: int(max_seconds * sample_rate)]
    return sig


def _check_manifest(csv_path, column="wav", max_listed=5):
    """Raises a clear error for an empty manifest or missing audio files."""
    with open(csv_path, newline="", encoding="utf-8") as fin:
        rows = list(csv.DictReader(fin))
    if not rows:
        raise ValueError(
            f"The manifest {csv_path} has no rows. {TRAINING_HINT.split(': ')[1]}"
        )
    if column not in rows[0]:
        raise KeyError(f"{csv_path} has no {column!r} column (audio paths).")
    missing = [r[column] for r in rows if not os.path.isfile(r[column])]
    if missing:
        raise FileNotFoundError(
            f"{len(missing)} of the {len(rows)} audio files listed in {csv_path} "
            f"are missing, e.g. {missing[:max_listed]}. {TRAINING_HINT}"
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
    """

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
    for split, path in csv_files.items():
        _check_manifest(path)
        datasets[split] = sb.dataio.dataset.DynamicItemDataset.from_csv(
            path, {}, [audio_pipeline, label_pipeline], OUTPUT_KEYS
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
    return datasets
