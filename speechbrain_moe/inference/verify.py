"""Checksums of what inference loads: the best checkpoint of a run (checked
against the ``MANIFEST.json`` training wrote, see
:mod:`speechbrain_moe.checkpoints`) and the packaged folder (its own
``MANIFEST.json``, same format, written by
:func:`~speechbrain_moe.inference.export.package_experiment`).

Authors
 * speechbrain-moe contributors 2026
"""

import hashlib
import json
import os

from speechbrain.utils import checkpoints

from speechbrain_moe.checkpoints import MANIFEST


def sha256_of(path):
    """Hex SHA-256 of a file.

    Arguments
    ---------
    path : str
        The file.

    Returns
    -------
    str

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "f")
    >>> _ = open(path, "wb").write(b"abc")
    >>> sha256_of(path)[:16]
    'ba7816bf8f01cfea'
    """
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_manifest(folder, names):
    """Writes ``<folder>/MANIFEST.json``: size and SHA-256 of each file in
    ``names``, in the format of the checkpoints' manifests.

    Arguments
    ---------
    folder : str
        The folder holding the files.
    names : iterable of str
        File names inside ``folder``.

    Returns
    -------
    dict
        name -> ``{"size": ..., "sha256": ...}``, as written.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.ckpt"), "wb").write(b"abc")
    >>> write_manifest(folder, ["a.ckpt"])["a.ckpt"]["size"]
    3
    """
    files = {}
    for name in sorted(names):
        path = os.path.join(folder, name)
        files[name] = {"size": os.path.getsize(path), "sha256": sha256_of(path)}
    with open(os.path.join(folder, MANIFEST), "w", encoding="utf-8") as fout:
        json.dump({"files": files}, fout, indent=1)
    return files


def read_manifest(folder):
    """The files listed in ``<folder>/MANIFEST.json`` (None without one).

    Arguments
    ---------
    folder : str
        A checkpoint folder or a packaged inference folder.

    Returns
    -------
    dict or None
        name -> ``{"size": ..., "sha256": ...}``.

    Example
    -------
    >>> import tempfile
    >>> read_manifest(tempfile.mkdtemp()) is None
    True
    """
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return None
    try:
        with open(path, encoding="utf-8") as fin:
            files = json.load(fin)["files"]
        if not isinstance(files, dict):
            raise TypeError(files)
        return files
    except (ValueError, KeyError, TypeError) as err:
        raise RuntimeError(
            f"{path} is damaged ({type(err).__name__}: {err}); the files it lists "
            "cannot be verified. Restore it (or the whole folder) from a copy."
        ) from err


def damaged_files(folder, files, names=None):
    """What is wrong with the files of ``folder`` that a manifest lists.

    Arguments
    ---------
    folder : str
        The folder holding the files.
    files : dict
        name -> ``{"size": ..., "sha256": ...}`` (from :func:`read_manifest`).
    names : iterable of str, optional
        Check only these (default: every listed file).

    Returns
    -------
    dict
        path -> why (missing, truncated, changed), empty when all are intact.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.ckpt"), "wb").write(b"abc")
    >>> files = write_manifest(folder, ["a.ckpt"])
    >>> damaged_files(folder, files)
    {}
    >>> _ = open(os.path.join(folder, "a.ckpt"), "wb").write(b"abd")
    >>> list(damaged_files(folder, files).values())
    ['changed after it was written (SHA-256 mismatch)']
    """
    problems = {}
    for name in sorted(files if names is None else names):
        path = os.path.join(folder, name)
        info = files.get(name)
        if info is None:
            problems[path] = f"not listed in {MANIFEST}"
        elif not os.path.isfile(path):
            problems[path] = "missing"
        elif os.path.getsize(path) != info["size"]:
            problems[path] = (
                f"truncated or extended: {os.path.getsize(path)} bytes, "
                f"{info['size']} were written"
            )
        elif sha256_of(path) != info["sha256"]:
            problems[path] = "changed after it was written (SHA-256 mismatch)"
    return problems


def refuse_damaged(problems, fix):
    """Raises a ``RuntimeError`` listing ``problems`` (path -> why) and ``fix``.

    Arguments
    ---------
    problems : dict
        From :func:`damaged_files`; nothing happens when it is empty.
    fix : str
        What the user can do.

    Example
    -------
    >>> refuse_damaged({}, "nothing to do")
    >>> refuse_damaged({"/m/a.ckpt": "missing"}, "Restore it.")
    Traceback (most recent call last):
    RuntimeError: Damaged file(s), refused for inference:
      /m/a.ckpt: missing
    Restore it.
    """
    if problems:
        lines = "\n".join(f"  {path}: {why}" for path, why in problems.items())
        raise RuntimeError(f"Damaged file(s), refused for inference:\n{lines}\n{fix}")


def _complete(checkpoint):
    """Whether training finished writing ``checkpoint`` (its manifest exists)."""
    return (checkpoint.path / MANIFEST).is_file()


def best_checkpoint(save_folder, max_key=None, min_key=None):
    """The best complete checkpoint of a run, verified against its manifest.

    Checkpoints interrupted while saving (no ``MANIFEST.json``) never count;
    among the others SpeechBrain's own ranking picks the best by ``max_key``
    or ``min_key``. If that one is damaged (truncated, flipped bytes) this
    raises naming the file: another checkpoint is never taken silently.

    Arguments
    ---------
    save_folder : str
        The run's ``save`` folder.
    max_key, min_key : str, optional
        The meta key to rank by (as ``Brain.evaluate`` takes them).

    Returns
    -------
    speechbrain.utils.checkpoints.Checkpoint

    Example
    -------
    >>> import tempfile, torch
    >>> from speechbrain_moe.checkpoints import Checkpointer
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"m": torch.nn.Linear(2, 2)})
    >>> good = ckpt.save_checkpoint(meta={"accuracy": 0.5})
    >>> best = ckpt.save_checkpoint(meta={"accuracy": 0.9})
    >>> best_checkpoint(ckpt.checkpoints_dir, max_key="accuracy").path == best.path
    True
    >>> _ = (best.path / "m.ckpt").write_bytes(b"x")
    >>> best_checkpoint(ckpt.checkpoints_dir, max_key="accuracy")
    Traceback (most recent call last):
    RuntimeError: Damaged file(s), refused for inference:
    ...
    """
    key = max_key or min_key
    try:
        found = checkpoints.Checkpointer(save_folder).find_checkpoint(
            max_key=max_key, min_key=min_key, ckpt_predicate=_complete
        )
    except Exception as err:  # a damaged CKPT.yaml: yaml raises several types
        raise RuntimeError(
            f"Cannot read the checkpoints of {save_folder} ({type(err).__name__}: "
            f"{err}). Restore the named CKPT.yaml, or move its checkpoint folder "
            "away to package the next best one."
        ) from err
    if found is None:
        raise FileNotFoundError(
            f"No complete checkpoint with a {key!r} value in {save_folder}: train "
            "the model (at least one epoch with validation) first."
        )
    files = read_manifest(found.path)
    refuse_damaged(
        damaged_files(found.path, files),
        f"This is the best checkpoint by {key!r}; it is not replaced by another "
        "one silently. Restore the named file(s) from a copy, or move the folder "
        f"{found.path} away (out of {save_folder}) to package the next best "
        "checkpoint instead.",
    )
    return found
