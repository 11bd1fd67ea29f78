"""Manifests for UrbanSound8K (Salamon et al., 2014) in its official layout.

``data_folder`` holds ``metadata/UrbanSound8K.csv`` and ``audio/fold1`` ...
``audio/fold10``. The ten official folds give the splits: ``test_fold`` is
the test set, ``valid_fold`` (default: the next fold) the validation set, the
other eight folds the training set.

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ID, wav, duration,
class_name, fold) are written once into ``save_folder``; the preparation is
skipped when they exist for the same options and the same
``UrbanSound8K.csv`` (size and modification time). Audio that cannot be used
(unreadable, empty, NaN/inf, silent, shorter than
``speechbrain_moe.manifests.MIN_SECONDS``) and metadata lines with empty or
malformed values are reported by name and skipped; the CSV may start with a
UTF-8 byte-order mark; a missing column or a duplicated id is an error naming
the file.

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
NUM_FOLDS = 10


def urbansound8k_clips(data_folder):
    """Every clip of the metadata file, with its class and fold.

    Arguments
    ---------
    data_folder : str
        UrbanSound8K root (``metadata/UrbanSound8K.csv``, ``audio/fold*``).

    Returns
    -------
    list of dict
        ``ID``, ``wav``, ``class_name``, ``fold``.
    """
    check_data_folder(
        data_folder,
        ["metadata/UrbanSound8K.csv", "audio"],
        "UrbanSound8K",
        "Request it at https://urbansounddataset.weebly.com/urbansound8k.html "
        "(or from Zenodo, record 1203745) and extract it (the folder holding "
        "metadata/ and audio/).",
    )
    rows = read_metadata(
        metadata_file(data_folder),
        ["slice_file_name", "fold", "class"],
        "UrbanSound8K",
        converters={"fold": int},
    )
    return [
        {
            "ID": os.path.splitext(item["slice_file_name"])[0],
            "wav": os.path.join(
                data_folder, "audio", f"fold{item['fold']}", item["slice_file_name"]
            ),
            "class_name": item["class"],
            "fold": item["fold"],
        }
        for item in rows
    ]


def metadata_file(data_folder):
    """The metadata CSV of UrbanSound8K (its signature is recorded with the
    preparation's options, so an edited CSV rebuilds the manifests).

    Arguments
    ---------
    data_folder : str
        UrbanSound8K root.

    Returns
    -------
    str
    """
    return os.path.join(data_folder, "metadata", "UrbanSound8K.csv")


def prepare_urbansound8k(
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
        Fold used for testing (1-10).
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
        lambda: urbansound8k_clips(data_folder),
        "UrbanSound8K",
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
        UrbanSound8K root.
    folders : dict
        Test fold -> its output folder.
    """
    clips = scan_clips(urbansound8k_clips(data_folder), "UrbanSound8K")
    for fold, folder in folders.items():
        prepare_urbansound8k(data_folder, folder, test_fold=fold, clips=clips)
