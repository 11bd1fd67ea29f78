"""The classes of a classification run: the training data sizes the head.

A recipe's head (``classifier`` in its YAML) has ``n_classes`` outputs. The
YAML builds it, so the number must be known when the YAML is loaded, and the
only place that knows it is the training data. The classification recipes
therefore run in this order::

    hparams = experiment.settings          # plain values, nothing built
    prepare(...)                           # the manifests
    encoder = training_classes(hparams["train_csv"],
                               hparams["label_encoder_file"],
                               hparams["n_classes"])
    overrides = merge_overrides(overrides, {"n_classes": len(encoder)})
    hparams = load_hyperpyyaml(fin, overrides)   # the head is built here

(``merge_overrides`` is :func:`speechbrain_moe.experiment.merge_overrides`.)
The count goes in as an override, so ``inference.yaml`` (exported from the
same overrides) builds the head of the same size, and every output of the
head is a label the label encoder can decode. ``n_classes: null`` (the
recipes' default) means "from the data"; a number is only a check: one that
differs from the training data's class count is refused, naming both.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import os

from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.distributed import run_once_per_node


def manifest_labels(csv_path, label_column="class_name"):
    """The labels of a manifest's rows, in row order.

    Arguments
    ---------
    csv_path : str
        A manifest CSV.
    label_column : str
        The column holding the class names.

    Returns
    -------
    list of str
        One label per row.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "train.csv")
    >>> _ = open(path, "w").write("ID,wav,class_name\\na,a.wav,dog\\nb,b.wav,cat\\n")
    >>> manifest_labels(path)
    ['dog', 'cat']
    """
    with open(csv_path, newline="", encoding="utf-8") as fin:
        reader = csv.DictReader(fin)
        if label_column not in (reader.fieldnames or []):
            raise KeyError(
                f"The manifest {csv_path} has no {label_column!r} column (its "
                f"columns: {reader.fieldnames}). Re-run the data preparation, or "
                f"point the recipe at a manifest with a {label_column} column."
            )
        return [row[label_column] for row in reader]


def training_classes(
    train_csv, label_encoder_file, n_classes=None, label_column="class_name"
):
    """The label encoder of the training data (written to
    ``label_encoder_file`` once per node when missing, in order of first
    appearance), checked against the data and against ``n_classes``.

    Arguments
    ---------
    train_csv : str
        The training manifest.
    label_encoder_file : str
        Where the classes are kept (``save/label_encoder.txt``).
    n_classes : int, optional
        None: the head is sized from the data. A number: refused unless it
        is the training data's class count.
    label_column : str
        The manifest column holding the class names.

    Returns
    -------
    speechbrain.dataio.encoder.CategoricalEncoder
        The classes; ``len()`` is the size of the head.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "train.csv")
    >>> _ = open(path, "w").write("ID,wav,class_name\\na,a.wav,dog\\nb,b.wav,cat\\n")
    >>> encoder = training_classes(path, os.path.join(folder, "labels.txt"))
    >>> len(encoder), encoder.decode_ndim([0, 1])
    (2, ['dog', 'cat'])
    >>> training_classes(path, os.path.join(folder, "labels.txt"), n_classes=50)
    Traceback (most recent call last):
    ...
    ValueError: n_classes=50, but the training data ... has 2 classes, ...Remove --n_classes...
    """
    if n_classes is not None and (
        isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 1
    ):
        raise ValueError(
            f"n_classes must be null (the head is sized from the training data) or "
            f"a whole number >= 1, got {n_classes!r}. Remove --n_classes, or pass "
            "the number of classes of the training data."
        )
    labels = manifest_labels(train_csv, label_column)

    def write_classes():
        """Saves the training data's classes (once per node, first run)."""
        if not os.path.isfile(label_encoder_file):
            encoder = CategoricalEncoder()
            encoder.update_from_iterable(labels, sequence_input=False)
            os.makedirs(os.path.dirname(label_encoder_file) or ".", exist_ok=True)
            encoder.save(label_encoder_file)

    run_once_per_node(write_classes)
    encoder = CategoricalEncoder()
    encoder.load(label_encoder_file)
    encoder.expect_len(len(encoder))
    known, found = set(encoder.lab2ind), set(labels)
    if known != found:
        raise ValueError(
            f"{label_encoder_file} lists other classes than the training manifest "
            f"{train_csv}: only in the file {sorted(known - found)[:10]}, only in "
            f"the manifest {sorted(found - known)[:10]}. It was written for other "
            "data: delete it (the run writes it again from the training data)."
        )
    if n_classes is not None and n_classes != len(encoder):
        raise ValueError(
            f"n_classes={n_classes}, but the training data ({train_csv}) has "
            f"{len(encoder)} classes, so the head would have outputs no label "
            f"stands for (or labels it cannot predict). Remove --n_classes (the "
            f"recipes' default null sizes the head from the data) or pass "
            f"--n_classes={len(encoder)}."
        )
    return encoder
