"""A checkpointer whose checkpoints are complete or ignored, DDP-safe, and
kept on every node's own storage (``docs/design.md``, "Checkpoints")."""

import hashlib
import json
import logging
import os
import pathlib
import shutil
import time
import uuid

import torch
import yaml
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import (
    ddp_barrier,
    ddp_broadcast,
    ddp_prevent_block,
    get_rank,
    if_main_process,
    is_local_rank_zero,
)
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


def _gather(value):
    """Every process's ``value``, in rank order: ``[value]`` outside DDP and
    where SpeechBrain's collectives do nothing (inside a main-process-only or
    once-per-node call)."""
    if ddp_prevent_block():
        return [value]
    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, value)
    return gathered


def _node_copy_ranks(folder):
    """The ranks that keep their node's own copy of ``folder``: the local
    main process of every node that does not see the main process's files
    (separate filesystems; none on one node or on shared storage). The same
    list on every rank; every process must call it (a probe file of the main
    process, between two barriers)."""
    if ddp_prevent_block():
        return []
    token = ddp_broadcast(uuid.uuid4().hex if if_main_process() else None)
    probe = folder / f".storage-probe-{token}"
    if if_main_process():
        folder.mkdir(parents=True, exist_ok=True)
        probe.touch()
    ddp_barrier()
    separate = not if_main_process() and is_local_rank_zero() and not probe.exists()
    ranks = [rank for rank, flag in enumerate(_gather(separate)) if flag]
    if if_main_process():
        probe.unlink()
    return ranks


def _new_name(folder):
    """A checkpoint name free in ``folder``, in SpeechBrain's format: the
    folder is ``CKPT+<date>+<time>+<NN>``, as ``save_checkpoint`` names it."""
    stamp = time.strftime("%Y-%m-%d+%H-%M-%S", time.localtime())
    suffix = 0
    while (folder / f"{checkpoints.CKPT_PREFIX}+{stamp}+{suffix:02d}").exists():
        suffix += 1
    return f"{stamp}+{suffix:02d}"


def _copy_from_main(folder, receive):
    """Sends the main process's files of checkpoint ``folder`` (one broadcast
    each, the manifest excepted) to the processes where ``receive`` is True,
    which write them into their node's ``folder``. Every process calls it."""
    names = None
    if if_main_process():
        names = sorted(
            p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST
        )
    for name in ddp_broadcast(names):
        data = ddp_broadcast(
            (folder / name).read_bytes() if if_main_process() else None
        )
        if receive:
            pending = folder / f"{name}.pending"
            pending.write_bytes(data)
            os.replace(pending, folder / name)


def _agreed(checkpointer):
    """Names of the complete checkpoints of ``checkpointer`` that every rank
    lists, with the same time stamp (the same set on every rank)."""
    listed = {
        (c.path.name, c.meta.get("unixtime")) for c in checkpointer.list_checkpoints()
    }
    return {name for name, _ in set.intersection(*_gather(listed))}


def _gather_problems(folders, copies):
    """Checkpoint folder name -> why it is unusable, found (checksums
    included) by the main process in its ``folders`` and by every rank in
    ``copies`` in its node's; the same dict on every rank."""
    found = {}
    if if_main_process() or get_rank() in copies:
        for folder in folders:
            why = _problem(folder, verify_checksums=True)
            if why and not if_main_process():
                why = f"{why}, on the node of rank {get_rank()}"
            if why:
                found[folder.name] = why
    problems = {}
    for by_rank in _gather(found):
        for name, why in by_rank.items():
            problems.setdefault(name, why)
    return problems


class Checkpointer(checkpoints.Checkpointer):
    """SpeechBrain's checkpointer (same arguments) with complete-or-ignored
    checkpoints: a ``MANIFEST.json`` (sizes and SHA-256), written last, marks
    one complete. Non-finite weights are refused.

    Under DDP across nodes with separate filesystems (the same path is other
    storage on every node), the local main process of every other node keeps
    its node's copy of each checkpoint: the main process's files, byte for
    byte, and what its own ranks save. Rotation deletes every node's copy;
    deletion and recovery consider only the checkpoints every rank lists,
    complete, so every rank makes the same collective calls.

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
        """SpeechBrain's ``save_checkpoint``; it counts once its manifest is
        written. With node copies (see the class), the name is chosen first
        (SpeechBrain's format) so that every node creates the folder before
        any rank saves into it; the main process's files are then sent to the
        other nodes, and every node writes the manifest of its own copy.

        Every rank must call it (it holds collectives). Raises ``ValueError``
        naming the parameter when a recoverable holds non-finite weights.

        Arguments
        ---------
        meta : dict
            Plain values recorded in ``CKPT.yaml`` (e.g. ``accuracy``).
        end_of_epoch : bool
            Whether the checkpoint is taken at the end of an epoch (False:
            an intra-epoch checkpoint).
        name : str, optional
            Folder name after ``CKPT+`` (default: SpeechBrain's timestamp).
        verbosity : int
            Logging level of the "Saved checkpoint" message.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
            The saved checkpoint on the main process, None on other ranks.
        """
        self._share_folder()
        _check_finite(self.recoverables)
        copies = _node_copy_ranks(self.checkpoints_dir)
        keeps_copy = get_rank() in copies
        if copies and name is None:
            name = _new_name(self.checkpoints_dir) if if_main_process() else None
            name = ddp_broadcast(name)
        if keeps_copy:
            folder = self.checkpoints_dir / f"{checkpoints.CKPT_PREFIX}+{name}"
            folder.mkdir(parents=True, exist_ok=True)
        ddp_barrier()  # every node has the folder
        saved = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        ddp_barrier()  # every rank has written its files
        folder = ddp_broadcast(None if saved is None else saved.path.name)
        folder = self.checkpoints_dir / folder
        if copies:
            _copy_from_main(folder, keeps_copy)
        if saved is not None or keeps_copy:
            _write_manifest(folder)
        ddp_barrier()  # every rank sees the complete checkpoint from here on
        return saved

    def delete_checkpoints(
        self,
        *,
        num_to_keep=1,
        min_keys=None,
        max_keys=None,
        importance_keys=None,
        ckpt_predicate=None,
        verbosity=logging.INFO,
    ):
        """SpeechBrain's ``delete_checkpoints`` (same arguments; importance
        by recency when ``importance_keys`` is None) over the checkpoints that
        every rank lists, complete; then every node deletes its copies of the
        checkpoints the main process deleted.

        Arguments
        ---------
        num_to_keep : int
            Checkpoints kept for each importance key.
        min_keys : list of str, optional
            Meta keys whose lowest-valued checkpoints are kept.
        max_keys : list of str, optional
            Meta keys whose highest-valued checkpoints are kept.
        importance_keys : list of callable, optional
            ``checkpoint -> number`` (higher: more important) functions; the
            most important ones of each are kept (default: the newest).
        ckpt_predicate : callable, optional
            ``checkpoint -> bool``: only checkpoints it accepts may be deleted.
        verbosity : int
            Logging level of the "Deleted checkpoint" messages.
        """
        agreed = _agreed(self)

        def deletable(ckpt):
            """Listed by every rank, and by the caller's predicate."""
            if ckpt.path.name not in agreed:
                return False
            return ckpt_predicate is None or ckpt_predicate(ckpt)

        if importance_keys is None:
            importance_keys = [checkpoints.ckpt_recency]
        super().delete_checkpoints(
            num_to_keep=num_to_keep,
            min_keys=min_keys,
            max_keys=max_keys,
            importance_keys=importance_keys,
            ckpt_predicate=deletable,
            verbosity=verbosity,
        )
        # SpeechBrain's ends with a barrier: the main process has deleted.
        kept = {f.name for f in self._folders()} if if_main_process() else None
        kept = ddp_broadcast(kept)
        if not if_main_process() and is_local_rank_zero():
            for name in sorted(agreed - kept):
                folder = self.checkpoints_dir / name
                if folder.is_dir():  # a node copy (shared storage: gone already)
                    shutil.rmtree(folder)
                    logger.log(verbosity, "Deleted node copy of checkpoint %s", folder)
        ddp_barrier()

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
        """The complete checkpoints only (manifest present, sizes as written).

        Returns
        -------
        list of speechbrain.utils.checkpoints.Checkpoint
            The complete ``CKPT+...`` folders of ``checkpoints_dir``, sorted by
            name, each with its meta and parameter files.
        """
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
        """Sets unusable checkpoints aside, then recovers as SpeechBrain does,
        from a checkpoint that every rank lists.

        A damaged checkpoint falls back to the newest intact one; with none
        left, a ``RuntimeError`` names the damaged files. With node copies
        (see the class) every node checks its own copy, and a checkpoint
        unusable on one node is set aside on every node.

        Arguments
        ---------
        importance_key : callable, optional
            ``checkpoint -> number``: the most important is loaded (default:
            the newest, unless ``max_key``/``min_key`` is given).
        max_key : str, optional
            Load the checkpoint with the highest value of this meta key.
        min_key : str, optional
            Load the checkpoint with the lowest value of this meta key.
        ckpt_predicate : callable, optional
            ``checkpoint -> bool``: only checkpoints it accepts are considered.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
            The checkpoint loaded, None when there was none to load.
        """
        self._share_folder()
        copies = _node_copy_ranks(self.checkpoints_dir)
        problems = _gather_problems(self._folders(), copies)
        damaged = {k: v for k, v in problems.items() if not v.startswith("interrupted")}
        usable = _agreed(self) - set(problems)
        keys = dict(importance_key=importance_key, max_key=max_key, min_key=min_key)

        def recoverable(ckpt):
            """Listed complete and intact by every rank, and by the caller's
            predicate."""
            if ckpt.path.name not in usable:
                return False
            return ckpt_predicate is None or ckpt_predicate(ckpt)

        intact = self.find_checkpoints(ckpt_predicate=recoverable, **keys)
        if damaged and not intact:
            lines = "\n".join(
                f"  {self.checkpoints_dir / name}: {why}"
                for name, why in damaged.items()
            )
            raise RuntimeError(
                f"No intact checkpoint to load; damaged:\n{lines}\nRestore the "
                "named file, or move the checkpoint folder away to start over."
            )
        if if_main_process() or get_rank() in copies:
            for name, why in problems.items():
                if (self.checkpoints_dir / name).is_dir():
                    self.set_aside(self.checkpoints_dir / name, why)
        ddp_barrier()
        return super().recover_if_possible(
            importance_key, max_key, min_key, recoverable
        )

    def set_aside(self, folder, why):
        """Moves an unusable checkpoint ``folder`` into ``set_aside/``, logging
        ``why`` (the main process, and every node's own copy's keeper).

        Arguments
        ---------
        folder : pathlib.Path
            A ``CKPT+...`` folder of ``checkpoints_dir``; an earlier one set
            aside under the same name is kept (this one gets a ``.N`` suffix).
        why : str
            What makes it unusable (logged).
        """
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
