"""Manifests for ESC-50 (Piczak, 2015) in its official layout.

``data_folder`` holds ``meta/esc50.csv`` and ``audio/*.wav`` (as in
https://github.com/karolpiczak/ESC-50). The five official folds give the
splits: ``test_fold`` is the test set, ``valid_fold`` (default: the next
fold) the validation set, the other three folds the training set.

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ID, wav, duration,
class_name, fold) are written once into ``save_folder``; the preparation is
skipped when they exist for the same options and the same ``esc50.csv``
(size and modification time). Audio that cannot be used (unreadable, empty,
NaN/inf, silent, shorter than ``speechbrain_moe.manifests.MIN_SECONDS``) and
metadata lines with empty or malformed values are reported by name and
skipped; the CSV may start with a UTF-8 byte-order mark; a missing column or
a duplicated id is an error naming the file.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from speechbrain.utils.logger import get_logger

from speechbrain_moe.manifests import (
    check_data_folder,
    fold_options,
    fold_split,
    prepare_manifests,
    read_metadata,
    scan_clips,
)

logger = get_logger(__name__)
NUM_FOLDS = 5
URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"


def esc50_clips(data_folder):
    """Every clip of the metadata file, with its class and fold.

    Arguments
    ---------
    data_folder : str
        ESC-50 root (``meta/esc50.csv``, ``audio/``).

    Returns
    -------
    list of dict
        ``ID``, ``wav``, ``class_name``, ``fold``.
    """
    check_data_folder(
        data_folder,
        ["meta/esc50.csv", "audio"],
        "ESC-50",
        f"Download and unzip {URL} (the folder holding meta/ and audio/).",
    )
    rows = read_metadata(
        metadata_file(data_folder),
        ["filename", "fold", "category"],
        "ESC-50",
        converters={"fold": int},
    )
    return [
        {
            "ID": os.path.splitext(item["filename"])[0],
            "wav": os.path.join(data_folder, "audio", item["filename"]),
            "class_name": item["category"],
            "fold": item["fold"],
        }
        for item in rows
    ]


def metadata_file(data_folder):
    """The metadata CSV of ESC-50 (its signature is recorded with the
    preparation's options, so an edited CSV rebuilds the manifests).

    Arguments
    ---------
    data_folder : str
        ESC-50 root.

    Returns
    -------
    str
    """
    return os.path.join(data_folder, "meta", "esc50.csv")


def prepare_esc50(
    data_folder, save_folder, test_fold=1, valid_fold=None, skip_prep=False, clips=None
):
    """Writes the train/valid/test manifests of one cross-validation fold.

    Arguments
    ---------
    data_folder : str
        The data set's folder.
    save_folder : str
        Where the manifests go.
    test_fold : int
        Fold used for testing (1-5).
    valid_fold : int, optional
        Fold used for validation (default: the fold after ``test_fold``).
    skip_prep : bool
        Do nothing.
    clips : list of dict, optional
        Already checked clips (see :func:`prepare_folds`).

    Returns
    -------
    dict
        Split -> manifest path.
    """
    options = fold_options(data_folder, test_fold, valid_fold, NUM_FOLDS)
    return prepare_manifests(
        save_folder,
        options,
        lambda: esc50_clips(data_folder),
        "ESC-50",
        fold_split(options),
        skip_prep=skip_prep,
        clips=clips,
        inputs=[metadata_file(data_folder)],
    )


def prepare_folds(data_folder, folders):
    """Prepares several folds, checking the audio once (``cross_validate.py``).

    Arguments
    ---------
    data_folder : str
        ESC-50 root.
    folders : dict
        Test fold -> its output folder.
    """
    clips = scan_clips(esc50_clips(data_folder), "ESC-50")
    for fold, folder in folders.items():
        prepare_esc50(data_folder, folder, test_fold=fold, clips=clips)
