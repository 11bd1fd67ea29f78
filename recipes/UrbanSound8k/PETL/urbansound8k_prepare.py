"""Manifests for UrbanSound8K (Salamon et al., 2014) in its official layout.

``data_folder`` holds ``metadata/UrbanSound8K.csv`` and ``audio/fold1`` ...
``audio/fold10`` (as distributed at https://urbansounddataset.weebly.com).
The ten official folds give the splits: ``test_fold`` is the test set,
``valid_fold`` (default: the next fold) the validation set, the other eight
folds the training set.

Manifests (``train.csv``, ``valid.csv``, ``test.csv``: ID, wav, duration,
class_name, fold) are written once into ``save_folder`` and the preparation
is skipped when they exist for the same options. Audio that cannot be read or
is empty is reported by name and skipped.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import os

from speechbrain.utils.logger import get_logger

from speechbrain_moe.recipe import (
    check_audio,
    check_data_folder,
    report_skipped,
    save_preparation_options,
    skip_preparation,
    write_manifest,
)

logger = get_logger(__name__)
NUM_FOLDS = 10


def prepare_urbansound8k(
    data_folder, save_folder, test_fold=1, valid_fold=None, skip_prep=False
):
    """Writes the train/valid/test manifests of one cross-validation fold.

    Arguments
    ---------
    data_folder : str
        UrbanSound8K root (``metadata/UrbanSound8K.csv``, ``audio/fold*``).
    save_folder : str
        Where the manifests go.
    test_fold : int
        Fold used for testing (1-10).
    valid_fold : int, optional
        Fold used for validation (default: ``test_fold % 10 + 1``).
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Split -> manifest path.
    """
    files = {
        s: os.path.join(save_folder, f"{s}.csv") for s in ("train", "valid", "test")
    }
    if skip_prep:
        return files
    if valid_fold is None:
        valid_fold = test_fold % NUM_FOLDS + 1
    for name, fold in (("test_fold", test_fold), ("valid_fold", valid_fold)):
        if not 1 <= int(fold) <= NUM_FOLDS:
            raise ValueError(f"{name} must be between 1 and {NUM_FOLDS}, got {fold}.")
    if test_fold == valid_fold:
        raise ValueError(f"valid_fold and test_fold must differ (both {test_fold}).")
    options = {
        "data_folder": os.path.abspath(data_folder),
        "test_fold": int(test_fold),
        "valid_fold": int(valid_fold),
    }
    if skip_preparation(save_folder, list(files.values()), options):
        logger.info(
            "UrbanSound8K manifests already in %s, skipping preparation.", save_folder
        )
        return files
    check_data_folder(
        data_folder,
        ["metadata/UrbanSound8K.csv", "audio"],
        "UrbanSound8K",
        "Request it at https://urbansounddataset.weebly.com/urbansound8k.html "
        "(or from Zenodo, record 1203745) and extract it (the folder holding "
        "metadata/ and audio/).",
    )
    rows = {split: [] for split in files}
    skipped = []
    with open(
        os.path.join(data_folder, "metadata", "UrbanSound8K.csv"), newline=""
    ) as fin:
        for item in csv.DictReader(fin):
            fold = int(item["fold"])
            path = os.path.join(
                data_folder, "audio", f"fold{fold}", item["slice_file_name"]
            )
            if not os.path.isfile(path):
                skipped.append((path, "missing"))
                continue
            duration, problem = check_audio(path)
            if problem:
                skipped.append((path, problem))
                continue
            split = (
                "test"
                if fold == test_fold
                else "valid"
                if fold == valid_fold
                else "train"
            )
            rows[split].append(
                {
                    "ID": os.path.splitext(item["slice_file_name"])[0],
                    "wav": os.path.abspath(path),
                    "duration": round(duration, 3),
                    "class_name": item["class"],
                    "fold": fold,
                }
            )
    report_skipped(skipped, "UrbanSound8K")
    for split, path in files.items():
        if not rows[split]:
            raise RuntimeError(
                f"UrbanSound8K preparation found no usable audio for {split}."
            )
        write_manifest(path, rows[split])
        logger.info("Wrote %s (%d clips)", path, len(rows[split]))
    save_preparation_options(save_folder, options)
    return files
