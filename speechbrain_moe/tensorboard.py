"""Experiment tracking with SpeechBrain's own ``TensorboardLogger``.

Authors
 * speechbrain-moe contributors 2026
"""

import atexit
import importlib
import logging

import torch


def _quiet_import(name):
    """Imports ``name`` with its logger off (SpeechBrain's ``train_logger``
    warns at import that torchvision, needed by an image saver unused here,
    is missing)."""
    quiet = logging.getLogger(name)
    quiet.disabled = True
    try:
        return importlib.import_module(name)
    finally:
        quiet.disabled = False


sb_train_logger = _quiet_import("speechbrain.utils.train_logger")


def open_tensorboard(folder):
    """SpeechBrain's ``TensorboardLogger`` writing to ``folder``.

    Arguments
    ---------
    folder : str
        Where the event files go.

    Returns
    -------
    speechbrain.utils.train_logger.TensorboardLogger
        The logger; its writer is closed when the process exits.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> try:
    ...     tensorboard = open_tensorboard(folder)
    ... except ImportError:  # tensorboard is an optional extra
    ...     tensorboard = None
    >>> tensorboard is None or hasattr(tensorboard, "log_stats")
    True
    """
    try:
        tensorboard = sb_train_logger.TensorboardLogger(folder)
    except ImportError as err:
        raise ImportError(
            "use_tensorboard=True needs the tensorboard package: pip install "
            "tensorboard (or speechbrain-moe[tensorboard]), or drop "
            "--use_tensorboard."
        ) from err
    if tensorboard.writer is not None:  # the last events are written at exit
        atexit.register(tensorboard.writer.close)
    return tensorboard


def log_expert_loads(tensorboard, shares, stage, step):
    """Writes one histogram per router (x: expert index, height: its share).

    Arguments
    ---------
    tensorboard : speechbrain.utils.train_logger.TensorboardLogger or None
        The logger (nothing is written without one, or off the main process).
    shares : dict
        Router name -> ``[experts]`` shares (``LoadCounter.pop()["shares"]``, :mod:`speechbrain_moe.routing`).
    stage : str
        ``train``, ``valid`` or ``test`` (part of the tag).
    step : int
        Global step of the histograms (the epoch).

    Example
    -------
    >>> log_expert_loads(None, {"layer0": torch.tensor([0.5, 0.5])}, "train", 1)
    >>> class Writer:
    ...     def add_histogram_raw(self, tag, **histogram):
    ...         print(tag, histogram["bucket_limits"])
    >>> class Logger:
    ...     writer = Writer()
    >>> log_expert_loads(Logger(), {"layer0": torch.tensor([0.75, 0.25])}, "valid", 3)
    expert_load_valid/layer0 [0.5, 1.5]
    """
    writer = getattr(tensorboard, "writer", None)
    if writer is None:
        return
    for name, share in shares.items():
        experts = torch.arange(share.numel(), dtype=share.dtype)
        writer.add_histogram_raw(
            f"expert_load_{stage}/{name}",
            min=-0.5,
            max=share.numel() - 0.5,
            num=1.0,
            sum=float((experts * share).sum()),
            sum_squares=float((experts**2 * share).sum()),
            bucket_limits=(experts + 0.5).tolist(),
            bucket_counts=share.tolist(),
            global_step=step,
        )
