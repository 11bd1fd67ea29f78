"""What our models and runs put into checkpoints: the trained tensors only, and
the random generators."""

import json
import os
import random

import numpy as np
import torch
from speechbrain.utils import checkpoints

# Entry of a checkpoint holding TrainableState.describe().
DESCRIPTION_KEY = "__description__"
NUMPY_FIELDS = ("name", "keys", "pos", "has_gauss", "cached_gaussian")


def _load_file(path):
    """``torch.load`` (weights only) with an error that names a damaged file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for damaged files
        raise RuntimeError(
            f"Cannot load {path} ({type(err).__name__}: {err}). The file is "
            "damaged or not a checkpoint: restore it, or move its checkpoint "
            "folder away (training then resumes from an older checkpoint)."
        ) from err


# Description entries naming a file (a user's method or bridge YAML): the
# path may differ between training and inference (a packaged copy), the
# settings it resolved to are compared instead.
PATH_ENTRIES = ("petl_method", "bridge")

#: Method settings that choose how a module computes, not what it computes or
#: holds (``speechbrain_moe/kernels``: same parameters, same values), so a
#: checkpoint loads whatever their values were.
NOT_MODEL_SETTINGS = ("implementation",)


def _comparable(description):
    """A description as plain JSON values, path-valued names and the
    :data:`NOT_MODEL_SETTINGS` of its settings left out."""
    plain = json.loads(json.dumps(description or {}, default=str))
    for value in plain.values():
        if isinstance(value, dict):
            for key in NOT_MODEL_SETTINGS:
                value.pop(key, None)
    for key in PATH_ENTRIES:
        value = plain.get(key)
        if isinstance(value, str) and (
            value.endswith((".yaml", ".yml")) or os.sep in value
        ):
            del plain[key]
    return plain


def description_differences(saved, current):
    """The entries of two :meth:`TrainableState.describe` results that
    differ (only those both have; of settings, only the settings both have),
    as ``key: saved -> current`` strings.

    Arguments
    ---------
    saved : dict or None
        The description a checkpoint holds (None: an old file without one).
    current : dict
        The description of the model loading it.

    Returns
    -------
    list of str
        Empty when they agree.

    Example
    -------
    >>> description_differences(
    ...     {"petl_method": "adapter", "petl_settings": {"mode": "parallel"}},
    ...     {"petl_method": "adapter", "petl_settings": {"mode": "sequential"}})
    ["petl_settings: {'mode': 'parallel'} -> {'mode': 'sequential'}"]
    >>> description_differences(None, {"petl_method": "bitfit"})
    []
    >>> description_differences({"petl_settings": {"rank": 4}},
    ...                         {"petl_settings": {"rank": 4, "new_option": 1}})
    []
    """
    saved, current = _comparable(saved), _comparable(current)
    lines = []
    for key in saved:
        if key not in current:
            continue
        old, new = saved[key], current[key]
        if isinstance(old, dict) and isinstance(new, dict):
            # settings: a setting added since (with its default) is no difference
            old = {k: v for k, v in old.items() if k in new}
            new = {k: v for k, v in new.items() if k in old}
        if old != new:
            lines.append(f"{key}: {old!r} -> {new!r}")
    return lines


@checkpoints.register_checkpoint_hooks
class TrainableState:
    """Mixin of ``torch.nn.Module`` classes, first among the bases: checkpoints
    of the trainable tensors (and the buffers of modules that train) with
    :meth:`describe`; loading refuses a checkpoint whose description differs
    from this model's (another PETL method or settings, another bridge: see
    :func:`description_differences`), then checks names and shapes and says
    what differs.

    Example
    -------
    >>> import tempfile
    >>> class Model(TrainableState, torch.nn.Module):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.frozen = torch.nn.Linear(2, 2).requires_grad_(False)
    ...         self.head = torch.nn.Linear(2, 1)
    >>> model, path = Model(), os.path.join(tempfile.mkdtemp(), "m.ckpt")
    >>> model.save_trainable(path)
    >>> sorted(k for k in torch.load(path) if k != DESCRIPTION_KEY)
    ['head.bias', 'head.weight']
    >>> Model().load_trainable(path)
    """

    def trainable_state_dict(self):
        """Copies of the trainable parameters and of the buffers of modules
        that train, by name.

        Returns
        -------
        dict
            Name (as in ``state_dict``) -> detached copy of the tensor.
        """
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        for prefix, module in self.named_modules():
            if any(p.requires_grad for p in module.parameters(recurse=False)):
                for name, _ in module.named_buffers(recurse=False):
                    keep.add(f"{prefix}.{name}" if prefix else name)
        state = self.state_dict(keep_vars=True)
        return {name: state[name].detach().clone() for name in state if name in keep}

    load_hint = "Load it onto the model (and settings) it was trained with."

    def describe(self):
        """What a checkpoint must match, as a dict of plain values (saved with it).

        Returns
        -------
        dict
            ``{"model": <class name>}`` here; subclasses add their shape and
            PETL method (see :func:`description_differences`).
        """
        return {"model": type(self).__name__}

    @staticmethod
    def format_description(description):
        """One line of text for a :meth:`describe` result (or None), for messages.

        Arguments
        ---------
        description : dict or None
            A :meth:`describe` result (None: a file saved without one).

        Returns
        -------
        str
            ``"key 'value', ..."``, or a phrase saying the model is unknown.
        """
        if not description:
            return "an unknown model (file without description)"
        return ", ".join(f"{k} {v!r}" for k, v in description.items())

    @checkpoints.mark_as_saver
    def save_trainable(self, path):
        """Saves the trained tensors and :meth:`describe` to ``path``.

        Arguments
        ---------
        path : str or pathlib.Path
            The file to write (the Checkpointer gives ``<name>.ckpt``).
        """
        saved = self.trainable_state_dict()
        saved[DESCRIPTION_KEY] = self.describe()
        torch.save(saved, path)

    @checkpoints.mark_as_loader
    def load_trainable(self, path, end_of_epoch=False):
        """Loads what :meth:`save_trainable` wrote, checking names and shapes.

        Raises ``RuntimeError`` naming what differs when the file was saved
        from another model or PETL method, or its tensors do not match.

        Arguments
        ---------
        path : str or pathlib.Path
            A file written by :meth:`save_trainable`.
        end_of_epoch : bool
            Part of SpeechBrain's loader signature; unused (the tensors are
            the same whatever the checkpoint's position in the epoch).
        """
        del end_of_epoch
        saved = dict(_load_file(path))
        description = saved.pop(DESCRIPTION_KEY, None)
        differing = description_differences(description, self.describe())
        current = self.state_dict()
        missing = sorted(set(self.trainable_state_dict()) - set(saved))
        unknown = sorted(set(saved) - set(current))
        shapes = [
            f"{k}: {tuple(v.shape)} vs {tuple(current[k].shape)}"
            for k, v in saved.items()
            if k in current and v.shape != current[k].shape
        ]
        problems = [f"{'; '.join(differing)} differ"] if differing else []
        if missing or unknown or shapes:
            problems.append(
                f"the file lacks {missing[:5]} (+{max(len(missing) - 5, 0)} more), "
                f"has unknown {unknown[:5]}, shape mismatches {shapes[:5]}"
            )
        if problems:
            trained, this = map(self.format_description, (description, self.describe()))
            raise RuntimeError(
                f"{path} was trained on {trained}, but this model is {this}: "
                f"{'; '.join(problems)}. {self.load_hint}"
            )
        self.load_state_dict(saved, strict=False)

    @checkpoints.mark_as_transfer
    def transfer_trainable(self, path):
        """Loads the trained tensors for a ``Pretrainer`` (inference).

        Arguments
        ---------
        path : str or pathlib.Path
            A file written by :meth:`save_trainable`.
        """
        self.load_trainable(path)


def _nested(value, kind):
    """Nested tuples and lists as ``kind`` (lists load with ``weights_only``)."""
    if isinstance(value, (tuple, list)):
        return kind(_nested(v, kind) for v in value)
    return value


def _rank_path(path):
    """``path`` on the main process, ``<path>.rank<r>`` on DDP rank r > 0."""
    rank = int(os.environ.get("RANK", 0))
    return str(path) if rank == 0 else f"{path}.rank{rank}"


class RandomState:
    """Recoverable state of the random generators (``random``, NumPy, torch
    CPU and CUDA; every DDP rank its own file), so that a resumed run draws
    exactly what an uninterrupted one would. From an intra-epoch checkpoint it
    is restored by :meth:`apply_pending`, before the next training batch.

    Why a pending state (the one value here that is kept to be read and
    cleared later): SpeechBrain recovers checkpoints in ``on_fit_start``,
    before the epoch's training loop starts iterating its data loader, and
    creating that iterator draws from the torch generator (PyTorch's
    ``DataLoader`` draws its base seed, a shuffling sampler its permutation).
    The state saved by an intra-epoch checkpoint was captured *after* those
    draws, so restoring it in the loader hook (:meth:`recover`) would let
    the resumed run's iterator draw on top of it and shift every later draw.
    SpeechBrain's public hooks have no point between "iterator created" and
    "first batch", other than ``on_fit_batch_start`` (and ``on_stage_start``
    of the VALID stage, when the checkpoint was written after the epoch's
    last batch), so the Brain calls :meth:`apply_pending` there; the state
    is restored at most once, and an end-of-epoch checkpoint (captured
    before the next epoch's iterator) is restored at once, leaving nothing
    pending.

    Example
    -------
    >>> import tempfile
    >>> state, path = RandomState(), os.path.join(tempfile.mkdtemp(), "rng.ckpt")
    >>> _ = torch.manual_seed(0)
    >>> state.save(path)
    >>> first = torch.rand(2)
    >>> state.recover(path, end_of_epoch=False)
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
            ``python``, ``numpy`` and ``torch`` (and ``cuda`` once CUDA is
            initialised) states, loadable with ``torch.load(weights_only=True)``.
        """
        name, keys, pos, has_gauss, cached = np.random.get_state()
        keys = torch.from_numpy(keys.astype(np.int64))
        numpy = (name, keys, int(pos), int(has_gauss), float(cached))
        state = {
            "python": _nested(random.getstate(), list),
            "numpy": dict(zip(NUMPY_FIELDS, numpy)),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    @staticmethod
    def restore(state):
        """Sets every generator to a ``state`` from :meth:`capture`.

        Arguments
        ---------
        state : dict
            A :meth:`capture` result.
        """
        random.setstate(_nested(state["python"], tuple))
        numpy = [state["numpy"][field] for field in NUMPY_FIELDS]
        numpy[1] = numpy[1].numpy().astype(np.uint32)
        np.random.set_state(tuple(numpy))
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"][: torch.cuda.device_count()])

    def apply_pending(self):
        """Restores a state recovered from an intra-epoch checkpoint; returns
        whether one was pending.

        Returns
        -------
        bool
            True when a pending state was restored (and cleared).
        """
        if self.pending is None:
            return False
        self.restore(self.pending)
        self.pending = None
        return True

    @checkpoints.mark_as_saver
    def save(self, path):
        """Saves this rank's generator state (rank r > 0: to ``<path>.rank<r>``).

        Arguments
        ---------
        path : str or pathlib.Path
            The checkpoint file of the main process.
        """
        torch.save(self.capture(), _rank_path(path))

    @checkpoints.mark_as_loader
    def recover(self, path, end_of_epoch=True):
        """Loads this rank's generator state (now, or at the next batch).

        Arguments
        ---------
        path : str or pathlib.Path
            The checkpoint file of the main process (this rank's own
            ``<path>.rank<r>`` is read when it exists).
        end_of_epoch : bool
            True: restored now (the next epoch starts from it). False (an
            intra-epoch checkpoint): kept for :meth:`apply_pending`, which the
            Brain calls before the next training batch.
        """
        own = _rank_path(path)
        state = _load_file(own if os.path.isfile(own) else path)
        self.pending = None if end_of_epoch else state
        if end_of_epoch:
            self.restore(state)


checkpoints.register_checkpoint_hooks(RandomState, save_on_main_only=False)
