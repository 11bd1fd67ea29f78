"""A checkpointer whose checkpoints are complete or ignored, and DDP-safe
(``docs/design.md``, "Checkpoints")."""

import hashlib
import json
import logging
import os
import pathlib
import shutil

import torch
import yaml
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import ddp_barrier, ddp_broadcast, if_main_process
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

MANIFEST = "MANIFEST.json"
SET_ASIDE = "set_aside"


def _sha256(path):
    """Hex SHA-256 of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fin:
        for block in iter(lambda: fin.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_manifest(folder):
    """Writes ``MANIFEST.json`` of a checkpoint folder's files, atomically."""
    files = {
        path.name: {"size": path.stat().st_size, "sha256": _sha256(path)}
        for path in sorted(folder.iterdir())
        if path.is_file() and path.name != MANIFEST
    }
    pending = folder / f"{MANIFEST}.pending"
    with open(pending, "w", encoding="utf-8") as fout:
        json.dump({"files": files}, fout, indent=1)
        fout.flush()
        os.fsync(fout.fileno())
    os.replace(pending, folder / MANIFEST)


def _problem(folder, verify_checksums=False):
    """Why a checkpoint folder cannot be loaded (None: intact); checksums are
    compared only with ``verify_checksums`` (it reads every file)."""
    manifest = folder / MANIFEST
    if not (folder / checkpoints.METAFNAME).is_file():
        return "interrupted while saving or deleting (no CKPT.yaml)"
    if not manifest.is_file():
        return f"interrupted while saving (no {MANIFEST})"
    try:
        files = json.loads(manifest.read_text(encoding="utf-8"))["files"]
    except (ValueError, KeyError, TypeError):
        return f"{MANIFEST} is damaged"
    for name, info in files.items():
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        size = path.stat().st_size
        if size != info["size"]:
            return f"{name} has {size} bytes, {info['size']} were written"
        if verify_checksums and _sha256(path) != info["sha256"]:
            return f"{name} changed after it was written (checksum mismatch)"
    return None


def _check_finite(recoverables):
    """Raises before a checkpoint of non-finite trainable weights is written."""
    for name, obj in recoverables.items():
        if not isinstance(obj, torch.nn.Module):
            continue
        for pname, param in obj.named_parameters():
            if param.requires_grad and not bool(torch.isfinite(param).all()):
                raise ValueError(
                    f"Parameter {pname} of {name} is NaN/inf: the checkpoint was "
                    "NOT written (the previous ones are intact). Lower --lr or "
                    "--max_grad_norm and resume from the last checkpoint."
                )


class Checkpointer(checkpoints.Checkpointer):
    """SpeechBrain's checkpointer (same arguments) with complete-or-ignored
    checkpoints: a ``MANIFEST.json`` (sizes and SHA-256), written last, marks
    one complete. Non-finite weights are refused.

    Example
    -------
    >>> import tempfile
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), {"model": torch.nn.Linear(2, 2)})
    >>> saved = ckpt.save_checkpoint()
    >>> sorted(p.name for p in saved.path.iterdir())
    ['CKPT.yaml', 'MANIFEST.json', 'model.ckpt']
    >>> (ckpt.checkpoints_dir / "CKPT+killed-while-saving").mkdir()
    >>> [c.path for c in ckpt.list_checkpoints()] == [saved.path]
    True
    >>> ckpt.recover_if_possible().path == saved.path
    True
    >>> sorted(p.name for p in (ckpt.checkpoints_dir / "set_aside").iterdir())
    ['CKPT+killed-while-saving']
    >>> _ = (saved.path / "model.ckpt").write_bytes(b"")
    >>> _problem(saved.path)
    'model.ckpt has 0 bytes, ... were written'
    """

    def _share_folder(self):
        """Makes every DDP rank use the main process's checkpoint folder."""
        self.checkpoints_dir = pathlib.Path(ddp_broadcast(str(self.checkpoints_dir)))

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """SpeechBrain's ``save_checkpoint``; it counts once its manifest is written."""
        self._share_folder()
        _check_finite(self.recoverables)
        saved = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        ddp_barrier()  # every rank has written its files
        if saved is not None:
            _write_manifest(saved.path)
        ddp_barrier()  # every rank sees the complete checkpoint from here on
        return saved

    def _folders(self):
        """The ``CKPT+...`` folders, sorted by name."""
        if not self.checkpoints_dir.is_dir():
            return []
        return [
            folder
            for folder in sorted(self.checkpoints_dir.iterdir())
            if folder.is_dir() and folder.name.startswith(checkpoints.CKPT_PREFIX)
        ]

    def list_checkpoints(self):
        """The complete checkpoints only (manifest present, sizes as written)."""
        found = []
        for folder in self._folders():
            if _problem(folder) is not None:
                continue
            with open(folder / checkpoints.METAFNAME, encoding="utf-8") as fin:
                meta = yaml.safe_load(fin)
            paramfiles = {
                path.stem: path
                for path in folder.iterdir()
                if path.suffix == checkpoints.PARAMFILE_EXT
            }
            found.append(checkpoints.Checkpoint(folder, meta, paramfiles))
        return found

    def recover_if_possible(
        self, importance_key=None, max_key=None, min_key=None, ckpt_predicate=None
    ):
        """Sets unusable checkpoints aside, then recovers as SpeechBrain does.

        A damaged checkpoint falls back to the newest intact one; with none
        left, a ``RuntimeError`` names the damaged files.
        """
        self._share_folder()
        problems = {}
        if if_main_process():
            for folder in self._folders():
                problems[str(folder)] = _problem(folder, verify_checksums=True)
        problems = ddp_broadcast({k: v for k, v in problems.items() if v})
        damaged = {k: v for k, v in problems.items() if not v.startswith("interrupted")}
        keys = dict(importance_key=importance_key, max_key=max_key, min_key=min_key)
        intact = [
            c
            for c in self.find_checkpoints(ckpt_predicate=ckpt_predicate, **keys)
            if str(c.path) not in damaged
        ]
        if damaged and not intact:
            lines = "\n".join(f"  {path}: {why}" for path, why in damaged.items())
            raise RuntimeError(
                f"No intact checkpoint to load; damaged:\n{lines}\nRestore the "
                "named file, or move the checkpoint folder away to start over."
            )
        if if_main_process():
            for path, why in problems.items():
                self.set_aside(pathlib.Path(path), why)
        ddp_barrier()
        return super().recover_if_possible(
            importance_key, max_key, min_key, ckpt_predicate
        )

    def set_aside(self, folder, why):
        """Moves an unusable checkpoint ``folder`` into ``set_aside/``, logging
        ``why`` (main process only)."""
        target = self.checkpoints_dir / SET_ASIDE / folder.name
        suffix = 0
        while target.exists():
            suffix += 1
            target = self.checkpoints_dir / SET_ASIDE / f"{folder.name}.{suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(folder), str(target))
        logger.warning(
            "Checkpoint %s is unusable (%s); moved to %s. Training continues "
            "from the newest intact checkpoint, if any.",
            folder,
            why,
            target,
        )
