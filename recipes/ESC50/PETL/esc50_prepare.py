"""Manifests for ESC-50 (Piczak, 2015) in its official layout.

``data_folder`` holds ``meta/esc50.csv`` and ``audio/*.wav`` (as in
https://github.com/karolpiczak/ESC-50). The five official folds give the
splits: ``test_fold`` is the test set, ``valid_fold`` (default: the next
fold) the validation set, the other three folds the training set.

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
NUM_FOLDS = 5
URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"


def prepare_esc50(
    data_folder, save_folder, test_fold=1, valid_fold=None, skip_prep=False
):
    """Writes the train/valid/test manifests of one cross-validation fold.

    Arguments
    ---------
    data_folder : str
        ESC-50 root (``meta/esc50.csv``, ``audio/``).
    save_folder : str
        Where the manifests go.
    test_fold : int
        Fold used for testing (1-5).
    valid_fold : int, optional
        Fold used for validation (default: ``test_fold % 5 + 1``).
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
            "ESC-50 manifests already in %s, skipping preparation.", save_folder
        )
        return files
    check_data_folder(
        data_folder,
        ["meta/esc50.csv", "audio"],
        "ESC-50",
        f"Download and unzip {URL} (the folder holding meta/ and audio/).",
    )
    rows = {split: [] for split in files}
    skipped = []
    with open(os.path.join(data_folder, "meta", "esc50.csv"), newline="") as fin:
        for item in csv.DictReader(fin):
            path = os.path.join(data_folder, "audio", item["filename"])
            if not os.path.isfile(path):
                skipped.append((path, "missing"))
                continue
            duration, problem = check_audio(path)
            if problem:
                skipped.append((path, problem))
                continue
            fold = int(item["fold"])
            split = (
                "test"
                if fold == test_fold
                else "valid"
                if fold == valid_fold
                else "train"
            )
            rows[split].append(
                {
                    "ID": os.path.splitext(item["filename"])[0],
                    "wav": os.path.abspath(path),
                    "duration": round(duration, 3),
                    "class_name": item["category"],
                    "fold": fold,
                }
            )
    report_skipped(skipped, "ESC-50")
    for split, path in files.items():
        if not rows[split]:
            raise RuntimeError(f"ESC-50 preparation found no usable audio for {split}.")
        write_manifest(path, rows[split])
        logger.info("Wrote %s (%d clips)", path, len(rows[split]))
    save_preparation_options(save_folder, options)
    return files
