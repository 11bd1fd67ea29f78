"""Manifests for Fluent Speech Commands (Lugosch et al., 2019).

``data_folder`` is the corpus root holding ``data/{train,valid,test}_data.csv``
(columns: index, path, speakerId, transcription, action, object, location)
and ``wavs/speakers/<speaker>/*.wav``. The intent label is the
(action, object, location) triple, written ``action_object_location``
(31 intents in the full corpus).

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ID, wav, duration,
class_name, speaker, transcript) are written once into ``save_folder`` and
the preparation is skipped when they exist for the same options and the
same split CSVs (size and modification time). Audio that cannot be used
(unreadable, empty, NaN/inf, silent, shorter than
``speechbrain_moe.manifests.MIN_SECONDS``) and CSV lines with empty values are
reported by name and skipped; the CSVs may start with a UTF-8 byte-order
mark; a missing column or a duplicated id is an error naming the file.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from speechbrain.utils.logger import get_logger

from speechbrain_moe.manifests import (
    check_data_folder,
    prepare_manifests,
    read_metadata,
)

logger = get_logger(__name__)
COLUMNS = ["path", "speakerId", "transcription", "action", "object", "location"]


def intent_label(action, obj, location):
    """The intent class of an (action, object, location) triple.

    Arguments
    ---------
    action : str
        Action slot.
    obj : str
        Object slot.
    location : str
        Location slot.

    Returns
    -------
    str
    """
    return "_".join(s.strip().replace(" ", "-") for s in (action, obj, location))


def fsc_clips(data_folder):
    """Every utterance of the official split files, with its intent.

    Arguments
    ---------
    data_folder : str
        Fluent Speech Commands root (``data/``, ``wavs/``).

    Returns
    -------
    list of dict
        ``ID``, ``wav``, ``class_name``, ``speaker``, ``transcript``,
        ``split``.
    """
    check_data_folder(
        data_folder,
        [f"data/{split}_data.csv" for split in ("train", "valid", "test")],
        "Fluent Speech Commands",
        "Get it from https://fluent.ai/fluent-speech-commands-a-dataset-for-spoken-"
        "language-understanding-research/ (free for academic research) and extract "
        "it (the folder holding data/ and wavs/).",
    )
    clips = []
    for split, meta in metadata_files(data_folder).items():
        for item in read_metadata(meta, COLUMNS, "Fluent Speech Commands"):
            path = os.path.join(data_folder, item["path"])
            name = os.path.splitext(os.path.basename(path))[0]
            clips.append(
                {
                    "ID": f"{item['speakerId']}_{name}",
                    "wav": path,
                    "class_name": intent_label(
                        item["action"], item["object"], item["location"]
                    ),
                    "speaker": item["speakerId"],
                    "transcript": item["transcription"],
                    "split": split,
                }
            )
    return clips


def metadata_files(data_folder):
    """The official split CSVs, by split (their signatures are recorded
    with the preparation's options, so an edited CSV rebuilds the manifests).

    Arguments
    ---------
    data_folder : str
        Fluent Speech Commands root.

    Returns
    -------
    dict
        Split -> CSV path.
    """
    return {
        split: os.path.join(data_folder, "data", f"{split}_data.csv")
        for split in ("train", "valid", "test")
    }


def prepare_FSC(data_folder, save_folder, skip_prep=False):
    """Writes the train/valid/test manifests of the official split.

    Arguments
    ---------
    data_folder : str
        Fluent Speech Commands root (``data/``, ``wavs/``).
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
        {"data_folder": os.path.abspath(data_folder)},
        lambda: fsc_clips(data_folder),
        "Fluent Speech Commands",
        lambda clip: clip.pop("split"),
        skip_prep=skip_prep,
        inputs=list(metadata_files(data_folder).values()),
    )
