"""Manifests for Google Speech Commands v2 (Warden, 2018), all 35 words.

``data_folder`` holds one folder per word (``yes/``, ``no/``, ...),
``validation_list.txt`` and ``testing_list.txt`` (the official split, paths
relative to ``data_folder``); ``_background_noise_`` is not a class. Files in
neither list form the training set.

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ID, wav, duration,
class_name, speaker) are written once into ``save_folder`` and the
preparation is skipped when they exist for the same options and the same
split lists and word folders (size and modification time). Audio that cannot
be used (unreadable, empty, NaN/inf, silent, shorter than
``speechbrain_moe.manifests.MIN_SECONDS``) is reported by name and skipped.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from speechbrain.utils.logger import get_logger

from speechbrain_moe.manifests import (
    check_data_folder,
    prepare_manifests,
)

logger = get_logger(__name__)
URL = "http://download.tensorflow.org/data/speech_commands_v0.02.tar.gz"


def _read_list(path):
    """Relative paths listed in a split file, with forward slashes."""
    with open(path, encoding="utf-8-sig") as fin:
        return {line.strip().replace("\\", "/") for line in fin if line.strip()}


def input_files(data_folder):
    """The split lists and the word folders (a folder's modification time
    changes when files are added or removed), whose signatures are recorded
    with the preparation's options.

    Arguments
    ---------
    data_folder : str
        Speech Commands v2 root.

    Returns
    -------
    list of str
    """
    words = sorted(
        os.path.join(data_folder, d)
        for d in os.listdir(data_folder)
        if os.path.isdir(os.path.join(data_folder, d)) and not d.startswith("_")
    )
    lists = ["validation_list.txt", "testing_list.txt"]
    return [os.path.join(data_folder, name) for name in lists] + words


def gsc_clips(data_folder):
    """Every clip of every word folder, with its official split.

    Arguments
    ---------
    data_folder : str
        Speech Commands v2 root.

    Returns
    -------
    list of dict
        ``ID``, ``wav``, ``class_name``, ``speaker``, ``split``.
    """
    check_data_folder(
        data_folder,
        ["validation_list.txt", "testing_list.txt"],
        "Speech Commands v2",
        f"Download {URL} and extract it into one folder.",
    )
    valid = _read_list(os.path.join(data_folder, "validation_list.txt"))
    test = _read_list(os.path.join(data_folder, "testing_list.txt"))
    words = sorted(
        d
        for d in os.listdir(data_folder)
        if os.path.isdir(os.path.join(data_folder, d)) and not d.startswith("_")
    )
    clips = []
    for word in words:
        for name in sorted(os.listdir(os.path.join(data_folder, word))):
            if not name.endswith(".wav"):
                continue
            rel = f"{word}/{name}"
            clips.append(
                {
                    "ID": f"{word}_{os.path.splitext(name)[0]}",
                    "wav": os.path.join(data_folder, word, name),
                    "class_name": word,
                    "speaker": name.split("_nohash_")[0],
                    "split": "valid"
                    if rel in valid
                    else "test"
                    if rel in test
                    else "train",
                }
            )
    return clips


def prepare_GSC(data_folder, save_folder, skip_prep=False):
    """Writes the train/valid/test manifests of the official split.

    Arguments
    ---------
    data_folder : str
        Speech Commands v2 root.
    save_folder : str
        Where the manifests go.
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Split -> manifest path.
    """
    return prepare_manifests(
        save_folder,
        {"data_folder": os.path.abspath(data_folder), "words": "all"},
        lambda: gsc_clips(data_folder),
        "Speech Commands",
        lambda clip: clip.pop("split"),
        skip_prep=skip_prep,
        inputs=input_files(data_folder) if os.path.isdir(data_folder) else [],
    )
