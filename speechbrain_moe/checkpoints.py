"""Crash-safe checkpoints and the random state a resumed run needs.

* :class:`Checkpointer` is SpeechBrain's checkpointer with atomic saves and
  deletions: the meta file that makes a folder a checkpoint (``CKPT.yaml``)
  is written *last*, through a rename, and removed *first* when a checkpoint
  is deleted. A process killed (SIGKILL, pre-emption, out-of-memory) while
  saving or deleting therefore never leaves a half-written folder that a
  restart would try to load; such leftovers are removed at the next save or
  recovery.
* :class:`RandomState` is a recoverable holding the random number
  generators (``random``, NumPy, torch CPU and CUDA), so that dropout and any
  other random draw continue after a resume exactly as in an uninterrupted
  run.

Authors
 * speechbrain-moe contributors 2026
"""

import logging
import os
import pathlib
import random
import shutil

import numpy as np
import torch
from speechbrain.utils import checkpoints
from speechbrain.utils.distributed import (
    ddp_barrier,
    if_main_process,
    main_process_only,
)
from speechbrain.utils.logger import get_logger

logger = get_logger(__name__)

PENDING_SUFFIX = ".pending"


class Checkpointer(checkpoints.Checkpointer):
    """:class:`speechbrain.utils.checkpoints.Checkpointer` with atomic saves.

    Same arguments and behaviour as SpeechBrain's; only the order of the
    file operations differs (see the module docstring), so a checkpoint
    folder is either complete or ignored.

    Arguments
    ---------
    *args
        As SpeechBrain's ``Checkpointer``.
    **kwargs
        As SpeechBrain's ``Checkpointer``.

    Example
    -------
    >>> import tempfile
    >>> model = torch.nn.Linear(2, 2)
    >>> ckpt = Checkpointer(tempfile.mkdtemp(), recoverables={"model": model})
    >>> saved = ckpt.save_checkpoint()
    >>> sorted(p.name for p in saved.path.iterdir())
    ['CKPT.yaml', 'model.ckpt']
    >>> incomplete = ckpt.checkpoints_dir / "CKPT+killed-while-saving"
    >>> incomplete.mkdir()
    >>> ckpt.find_checkpoint().path == saved.path
    True
    >>> ckpt.remove_incomplete()
    1
    """

    def _save_checkpoint_metafile(self, fpath, meta_to_include={}, end_of_epoch=True):
        """Writes the meta file under a pending name (renamed once complete).

        Arguments
        ---------
        fpath : pathlib.Path
            Final meta file path.
        meta_to_include : dict
            Extra meta information.
        end_of_epoch : bool
            Whether the checkpoint is at the end of an epoch.

        Returns
        -------
        dict
            The meta information.
        """
        pending = pathlib.Path(str(fpath) + PENDING_SUFFIX)
        return super()._save_checkpoint_metafile(pending, meta_to_include, end_of_epoch)

    def save_checkpoint(
        self, meta={}, end_of_epoch=True, name=None, verbosity=logging.INFO
    ):
        """Saves every recoverable, then makes the folder a checkpoint.

        Arguments
        ---------
        meta : dict
            Added to the meta file.
        end_of_epoch : bool
            Whether the checkpoint is at the end of an epoch.
        name : str, optional
            Custom checkpoint name.
        verbosity : int
            Logging level.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
            None on processes other than the main one.
        """
        self.remove_incomplete()
        saved = super().save_checkpoint(meta, end_of_epoch, name, verbosity)
        ddp_barrier()  # every process has written its files
        if saved is not None and if_main_process():
            final = saved.path / checkpoints.METAFNAME
            pending = pathlib.Path(str(final) + PENDING_SUFFIX)
            _fsync_folder_files(saved.path)
            os.replace(pending, final)
            _fsync(saved.path)
        return saved

    @staticmethod
    @main_process_only
    def _delete_checkpoint(checkpoint, verbosity=logging.INFO):
        """Invalidates the checkpoint (meta file first), then removes it.

        Arguments
        ---------
        checkpoint : speechbrain.utils.checkpoints.Checkpoint
            The checkpoint.
        verbosity : int
            Logging level.
        """
        meta = pathlib.Path(checkpoint.path) / checkpoints.METAFNAME
        if not meta.is_file():
            raise RuntimeError("Checkpoint does not appear valid for deletion.")
        meta.unlink()
        shutil.rmtree(checkpoint.path)
        logger.log(verbosity, f"Deleted checkpoint in {checkpoint.path}")

    def recover_if_possible(self, *args, **kwargs):
        """Removes incomplete leftovers, then as SpeechBrain's.

        Arguments
        ---------
        *args
            As SpeechBrain's ``recover_if_possible``.
        **kwargs
            As SpeechBrain's ``recover_if_possible``.

        Returns
        -------
        speechbrain.utils.checkpoints.Checkpoint or None
        """
        self.remove_incomplete()
        return super().recover_if_possible(*args, **kwargs)

    def remove_incomplete(self):
        """Deletes checkpoint folders without a meta file (a killed save or
        deletion left them); main process only.

        Returns
        -------
        int
            How many folders were removed.
        """
        if not if_main_process() or not self.checkpoints_dir.is_dir():
            return 0
        removed = 0
        for path in self.checkpoints_dir.iterdir():
            if (
                path.is_dir()
                and path.name.startswith(checkpoints.CKPT_PREFIX)
                and not (path / checkpoints.METAFNAME).exists()
            ):
                logger.warning(
                    "Removing the incomplete checkpoint %s (the process was "
                    "interrupted while writing or deleting it).",
                    path,
                )
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        return removed


def _fsync(path):
    """Flushes a file or folder entry to disk (best effort)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _fsync_folder_files(folder):
    """Flushes every file of ``folder`` to disk (best effort)."""
    for path in pathlib.Path(folder).iterdir():
        if path.is_file():
            _fsync(path)


@checkpoints.register_checkpoint_hooks
class RandomState:
    """Recoverable state of the random number generators.

    Saved with every checkpoint. On recovery from an end-of-epoch checkpoint
    the state is restored at once; from an intra-epoch checkpoint it is
    restored by :meth:`apply_pending` just before the next training batch, so
    that the draws made when the data loader's iterator is created (which an
    uninterrupted run made before the checkpoint) do not shift it.

    Example
    -------
    >>> import tempfile
    >>> state = RandomState()
    >>> path = os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> _ = torch.manual_seed(0)
    >>> state._save(path)
    >>> first = torch.rand(2)
    >>> state._recover(path, end_of_epoch=False)
    >>> state.apply_pending()
    True
    >>> torch.equal(torch.rand(2), first)
    True
    """

    def __init__(self):
        self.pending = None

    @staticmethod
    def capture():
        """The current state of every generator, as tensors and plain types.

        Returns
        -------
        dict
        """
        np_state = np.random.get_state()
        state = {
            "python": _to_plain(random.getstate()),
            "numpy": {
                "name": np_state[0],
                "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state):
        """Sets every generator to ``state`` (from :meth:`capture`).

        Arguments
        ---------
        state : dict
            A captured state.
        """
        random.setstate(_to_tuple(state["python"]))
        np_state = state["numpy"]
        np.random.set_state(
            (
                np_state["name"],
                np_state["keys"].numpy().astype(np.uint32),
                np_state["pos"],
                np_state["has_gauss"],
                np_state["cached_gaussian"],
            )
        )
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            cuda = state["cuda"][: torch.cuda.device_count()]
            torch.cuda.set_rng_state_all(cuda)

    def apply_pending(self):
        """Restores a state recovered from an intra-epoch checkpoint.

        Returns
        -------
        bool
            Whether a state was pending.
        """
        if self.pending is None:
            return False
        self.restore(self.pending)
        self.pending = None
        return True

    @checkpoints.mark_as_saver
    def _save(self, path):
        """Saves the generators' state (each DDP process its own file)."""
        torch.save(self.capture(), _rank_path(path))

    @checkpoints.mark_as_loader
    def _recover(self, path, end_of_epoch=True):
        """Loads the generators' state (now, or at the next batch)."""
        own = _rank_path(path)
        path = own if os.path.isfile(own) else path
        state = torch.load(path, map_location="cpu", weights_only=True)
        if end_of_epoch:
            self.pending = None
            self.restore(state)
        else:
            self.pending = state


def _rank_path(path):
    """``path`` on the main process, ``<path>.rank<r>`` on DDP rank r > 0."""
    rank = int(os.environ.get("RANK", 0))
    return str(path) if rank == 0 else f"{path}.rank{rank}"


def _to_plain(value):
    """Nested tuples -> nested lists (for ``weights_only`` loading)."""
    if isinstance(value, tuple):
        return [_to_plain(v) for v in value]
    return value


def _to_tuple(value):
    """Nested lists -> nested tuples (inverse of :func:`_to_plain`)."""
    if isinstance(value, list):
        return tuple(_to_tuple(v) for v in value)
    return value
