"""Data preparation for LibriSpeech (official layout) -> CSV manifests.

Layout: ``<data_folder>/<split>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac``
with one ``<spk>-<chap>.trans.txt`` per chapter. One CSV per split is written
to ``save_folder`` with the columns ``ID, duration, wav, spk_id, wrd``.
Preparation is skipped when all CSVs exist; unreadable or empty audio files are
reported by name and skipped. Each split shows a progress bar while its audio
is checked and says how many utterances it kept and skipped.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import logging
import os

import soundfile as sf
from tqdm import tqdm

logger = logging.getLogger(__name__)
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]


def prepare_librispeech(
    data_folder, save_folder, splits, select_n_sentences=None, skip_prep=False
):
    """Writes ``<save_folder>/<split>.csv`` for every split.

    Arguments
    ---------
    data_folder : str
        Folder holding the split folders (``.../LibriSpeech``).
    save_folder : str
        Where the CSVs go.
    splits : list of str
        Split names, e.g. ``["train-clean-100", "dev-clean", "test-clean"]``.
    select_n_sentences : int, optional
        Keep only the first n utterances of each split (sorted by ID).
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Split -> CSV path.

    Example
    -------
    >>> import tempfile
    >>> from synthetic.librispeech import make_librispeech
    >>> root = make_librispeech(tempfile.mkdtemp(), splits={"dev-clean": 2})
    >>> out = tempfile.mkdtemp()
    >>> csvs = prepare_librispeech(root, out, ["dev-clean"])
    >>> open(csvs["dev-clean"]).readline().strip()
    'ID,duration,wav,spk_id,wrd'
    """
    csvs = {split: os.path.join(save_folder, f"{split}.csv") for split in splits}
    if skip_prep:
        return csvs
    if all(os.path.isfile(path) for path in csvs.values()):
        logger.info(
            "LibriSpeech manifests exist in %s: skipping preparation.", save_folder
        )
        return csvs
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"LibriSpeech data_folder {data_folder!r} does not exist. Set "
            "--data_folder to the folder holding train-clean-100/, dev-clean/, ... "
            "(download from https://www.openslr.org/12)."
        )
    os.makedirs(save_folder, exist_ok=True)
    for split, path in csvs.items():
        split_folder = os.path.join(data_folder, split)
        if not os.path.isdir(split_folder):
            raise FileNotFoundError(
                f"Split folder {split_folder!r} is missing. Download and extract "
                f"{split} into {data_folder!r}, or remove it from the split lists."
            )
        rows = _split_rows(split_folder, f"LibriSpeech {split}")
        if select_n_sentences:
            rows = rows[:select_n_sentences]
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows)
        os.replace(tmp, path)
        logger.info("Wrote %s (%d utterances).", path, len(rows))
    return csvs


def _split_rows(split_folder, label):
    """Reads every transcript of a split and checks its audio."""
    texts = {}
    for root, _, files in os.walk(split_folder):
        for name in files:
            if name.endswith(".trans.txt"):
                with open(os.path.join(root, name)) as f:
                    for line in f:
                        parts = line.strip().split(" ", 1)
                        if len(parts) == 2:
                            texts[parts[0]] = (root, parts[1])
    rows = []
    for utt_id in tqdm(sorted(texts), desc=f"{label}: checking audio", unit="file"):
        root, words = texts[utt_id]
        wav = os.path.join(root, utt_id + ".flac")
        try:
            info = sf.info(wav)
            duration = info.frames / info.samplerate
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped
            logger.warning("Skipping unreadable audio file %s (%s).", wav, err)
            continue
        if info.frames == 0:
            logger.warning("Skipping empty audio file %s.", wav)
            continue
        rows.append([utt_id, f"{duration:.3f}", wav, utt_id.split("-")[0], words])
    skipped = len(texts) - len(rows)
    logger.info("%s: kept %d utterances, skipped %d.", label, len(rows), skipped)
    return rows
