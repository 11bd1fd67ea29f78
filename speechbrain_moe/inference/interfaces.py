"""What the inference classes share: loading from an experiment folder (with
the checks that the folder is theirs and intact) and checking the waveforms
they are given.

Authors
 * speechbrain-moe contributors 2026
"""

import importlib
import os

import numpy as np
import torch
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.fetching import fetch
from speechbrain.utils.logger import get_logger

from speechbrain_moe.checkpoints import MANIFEST
from speechbrain_moe.dataio import read_clip
from speechbrain_moe.inference.export import (
    FOLDER_KEY,
    check_packaged_methods,
    package_experiment,
    read_header,
    verify_package,
)
from speechbrain_moe.lobes.base import quiet_loading

logger = get_logger(__name__)

INFERENCE_HINT = "Check the path, or convert the file to WAV/FLAC."
# Integer PCM -> (offset, scale) to [-1, 1], as soundfile reads it.
PCM_SCALES = {
    torch.int16: (0.0, 2.0**15),
    torch.int32: (0.0, 2.0**31),
    torch.int8: (0.0, 2.0**7),
    torch.uint8: (128.0, 2.0**7),
}
# A 2-D input whose last dimension is at most this (and whose first is
# larger) is one clip laid out [samples, channels], as soundfile.read gives.
MAX_CHANNELS = 8
WAV_LENS_FORM = (
    "wav_lens must be relative lengths in (0, 1], one per clip (a clip's "
    "samples / wavs.shape[1], as SpeechBrain passes them), e.g. "
    "torch.tensor([1.0, 0.5]), or None for full-length clips"
)


def _dotted(cls):
    """``module.Class`` of a class, under the public package name when the
    package exports it (``speechbrain_moe.inference.PETLAudioClassifier``)."""
    public = importlib.import_module("speechbrain_moe.inference")
    if getattr(public, cls.__name__, None) is cls:
        return f"speechbrain_moe.inference.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"


def _import(dotted):
    """The class a dotted name names (None when it cannot be imported)."""
    module, _, name = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError, ValueError):
        return None


class ExperimentInterface(Pretrained):
    """``Pretrained`` whose ``from_hparams`` also takes a recipe's output folder.

    Subclasses set ``LOADABLES`` (the checkpoint files to package),
    ``MAX_KEY`` or ``MIN_KEY`` (which checkpoint is the best) and ``USAGE``
    (a line of the model card's usage snippet).

    Example
    -------
    >>> class Echo(ExperimentInterface):
    ...     HPARAMS_NEEDED = ["sample_rate"]
    >>> model = Echo(modules={}, hparams={"sample_rate": 16000})
    >>> pcm = torch.tensor([[0, 16384, -32768]], dtype=torch.int16)
    >>> wavs, wav_lens = model.check_batch(pcm)  # int16 PCM scaled to [-1, 1]
    >>> wavs.tolist(), wav_lens.tolist()
    ([[0.0, 0.5, -1.0]], [1.0])
    """

    LOADABLES = ()
    USAGE = ""
    MAX_KEY = None
    MIN_KEY = None

    @classmethod
    def from_hparams(cls, source, hparams_file="inference.yaml", **kwargs):
        """Loads a packaged folder, a hub repository or an experiment folder.

        Before anything is built, the folder is checked: it must hold an
        inference file (not the training YAML ``hyperparams.yaml``), be
        meant for this class (``inference_interface``), and its packaged
        files must match their ``MANIFEST.json`` (an experiment folder's best
        checkpoint is verified against the manifest of training when it is
        packaged). transformers' progress bars are off while it loads.

        Arguments
        ---------
        source : str
            Packaged folder / hub id, or a recipe's ``output_folder`` (its best
            checkpoint is packaged into ``<source>/inference_model`` first).
        hparams_file : str
            The hyper-parameter file inside ``source`` (``inference.yaml``).
        **kwargs
            As :meth:`speechbrain.inference.interfaces.Pretrained.from_hparams`.

        Returns
        -------
        Pretrained
        """
        source = str(source)
        if os.path.isdir(source):
            source = cls._local_folder(source, hparams_file)
        else:
            source = cls._fetch_package(source, hparams_file, kwargs)
        if os.path.isdir(source):
            header = cls._check_folder(source, hparams_file)
            if kwargs.get("savedir") is None:
                kwargs["savedir"] = os.path.join(source, "collected")
            if header["placeholder"]:
                overrides = dict(kwargs.get("overrides") or {})
                overrides.setdefault(FOLDER_KEY, os.path.abspath(source))
                kwargs["overrides"] = overrides
        with quiet_loading():
            return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    @classmethod
    def _call(cls, source):
        """The call that loads ``source`` with this class (for messages)."""
        return f"{cls.__name__}.from_hparams(source={source!r})"

    @classmethod
    def _local_folder(cls, source, hparams_file):
        """The folder to load for a local ``source`` (an experiment folder is
        packaged first); refuses what is not an inference folder."""
        path = os.path.join(source, hparams_file)
        name = os.path.basename(hparams_file)
        if name == "hyperparams.yaml" or (
            os.path.isfile(path) and "pretrainer" not in read_header(path)["keys"]
        ):
            run = source if os.path.isdir(os.path.join(source, "save")) else "<run>"
            raise ValueError(
                f"{path} is the training YAML of a run, not an inference file (it "
                "has no pretrainer). Load the run's inference.yaml (the default "
                f"hparams_file): {cls._call(run)}."
            )
        if os.path.isdir(os.path.join(source, "save")):
            if name != "inference.yaml":
                raise ValueError(
                    f"An experiment folder is loaded through its inference.yaml, "
                    f"not {hparams_file!r}: {cls._call(source)}."
                )
            cls._check_interface(source, os.path.join(source, "inference.yaml"))
            return package_experiment(
                source, cls.LOADABLES, cls.MAX_KEY, cls.MIN_KEY, interface=cls
            )
        if not os.path.isfile(path):
            parent = os.path.dirname(os.path.abspath(source))
            if os.path.isfile(os.path.join(parent, "inference.yaml")):
                raise FileNotFoundError(
                    f"{source} has no {hparams_file}: it is the checkpoint folder "
                    "of a run. Give the run's output folder (its parent): "
                    f"{cls._call(parent)}."
                )
            raise FileNotFoundError(
                f"{source} has no {hparams_file}. Give the output_folder of a recipe "
                "run, or a packaged inference folder (<output_folder>/"
                f"inference_model): {cls._call('<folder>')}."
            )
        return source

    @classmethod
    def _fetch_package(cls, source, hparams_file, kwargs):
        """For a hub id: the files its ``MANIFEST.json`` lists fetched into
        ``savedir`` (then loaded and checked as a local folder); ``source``
        itself when it has no manifest (SpeechBrain fetches as usual)."""
        if os.path.isabs(source) or source.startswith("."):
            raise FileNotFoundError(
                f"{source} does not exist. Give the output_folder of a recipe run, a "
                f"packaged inference folder or a hub id: {cls._call('<folder>')}."
            )
        fetched = {}
        try:
            for name in (hparams_file, MANIFEST):
                fetched[name] = fetch(
                    name, source=source, savedir=kwargs.get("savedir")
                )
        except (ValueError, FileNotFoundError, OSError):
            if hparams_file not in fetched:
                raise
            return source
        from speechbrain_moe.inference.verify import read_manifest

        folder = os.path.dirname(str(fetched[hparams_file]))
        for name in read_manifest(os.path.dirname(str(fetched[MANIFEST]))) or {}:
            fetch(name, source=source, savedir=kwargs.get("savedir"))
        return folder

    @classmethod
    def _check_interface(cls, folder, hparams_file):
        """Refuses a folder meant for another class; returns its header."""
        header = read_header(hparams_file)
        recorded = header["inference_interface"]
        if recorded is not None:
            wanted = _import(recorded)
            right = issubclass(cls, wanted) if wanted else recorded == _dotted(cls)
        else:  # written before the class was recorded: its modules tell
            modules = [k for k in cls.MODULES_NEEDED if k not in header["keys"]]
            right, recorded = not modules, "another inference class"
        if not right:
            name = recorded.rpartition(".")[2]
            raise TypeError(
                f"{folder} holds a model for {recorded} (inference.yaml: "
                f"inference_interface), not for {cls.__name__}. Load it with "
                f"{name}: from {recorded.rpartition('.')[0]} import {name}; "
                f"{name}.from_hparams(source={folder!r})."
            )
        return header

    @classmethod
    def _check_folder(cls, folder, hparams_file):
        """Checks a packaged folder before it is loaded; returns its header."""
        header = cls._check_interface(folder, os.path.join(folder, hparams_file))
        if not verify_package(folder):
            logger.warning(
                "%s has no %s: its files cannot be verified (a folder packaged by "
                "an older version). Package the run again to get one.",
                folder,
                MANIFEST,
            )
        check_packaged_methods(folder, header["packaged_methods"])
        return header

    def read_file(self, path, max_seconds=None):
        """One audio file as the model's input (mono, resampled, cut).

        Arguments
        ---------
        path : str
            Audio file.
        max_seconds : float, optional
            Longer audio is cut, with a warning naming the file.

        Returns
        -------
        torch.Tensor
            ``[samples]``.
        """
        return read_clip(path, self.hparams.sample_rate, max_seconds, INFERENCE_HINT)

    def check_batch(self, wavs, wav_lens=None, min_samples=0):
        """Validates a batch of waveforms and moves it to the model's device.

        Accepted: a tensor or NumPy array ``[batch, samples]``, one clip
        ``[samples]``, one clip ``[samples, channels]`` (as ``soundfile.read``
        gives it: a 2-D input whose last dimension is at most 8 and smaller
        than the first) or ``[batch, samples, channels]``; channels are mixed
        down (their mean), as ``classify_file`` does with a file. Float
        samples are taken as they are; integer PCM (int16, int32, int8,
        uint8) is scaled to [-1, 1] as ``soundfile`` does. Clips shorter
        than ``min_samples`` are zero-padded to it (with a warning naming
        them). An empty batch, ``wav_lens`` that are not one relative length
        in (0, 1] per clip, and clips without samples or with NaN/inf raise
        ``ValueError`` naming the problem and the expected form.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            The waveforms.
        wav_lens : torch.Tensor or sequence of float, optional
            Relative lengths in (0, 1] (default: all 1).
        min_samples : int
            The fewest samples the model takes.

        Returns
        -------
        wavs : torch.Tensor
            ``[batch, samples]`` float32 on the model's device.
        wav_lens : torch.Tensor
            ``[batch]`` relative lengths on the model's device.
        """
        wavs = _as_mono_batch(wavs)
        batch = wavs.shape[0]
        if batch == 0:
            raise ValueError(
                "The batch is empty (0 clips): give at least one waveform "
                "[batch, samples] or one clip [samples]."
            )
        wav_lens = _check_wav_lens(wav_lens, batch)
        lengths = (wav_lens * wavs.shape[1]).round().long()
        bad = [
            i
            for i in range(batch)
            if lengths[i] < 1 or not bool(torch.isfinite(wavs[i, : lengths[i]]).all())
        ]
        if bad:
            raise ValueError(
                f"Clip(s) {bad} of the batch are empty or have NaN/inf samples; "
                "no prediction can be made for them. Remove or repair them."
            )
        short = [i for i in range(batch) if lengths[i] < min_samples]
        if short:
            logger.warning(
                "Clip(s) %s of the batch have fewer than the %d samples the model "
                "takes (%s); zero-padded to %d.",
                short,
                min_samples,
                [int(lengths[i]) for i in short],
                min_samples,
            )
            width = max(wavs.shape[1], min_samples)
            padded = wavs.new_zeros(batch, width)
            for i in range(batch):
                padded[i, : lengths[i]] = wavs[i, : lengths[i]]
            lengths = lengths.clamp(min=min_samples)
            wavs, wav_lens = padded, lengths.float() / width
        return wavs.to(self.device), wav_lens.to(self.device)


def _as_mono_batch(wavs):
    """``[batch, samples]`` float32 from the accepted layouts and dtypes."""
    if isinstance(wavs, np.ndarray):
        wavs = torch.from_numpy(np.ascontiguousarray(wavs))
    if not isinstance(wavs, torch.Tensor):
        try:
            wavs = torch.as_tensor(wavs)
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(
                "Expected waveforms as a torch.Tensor or numpy.ndarray [batch, "
                f"samples], got {type(wavs).__name__}."
            ) from err
    if wavs.dtype in PCM_SCALES:
        offset, scale = PCM_SCALES[wavs.dtype]
        wavs = (wavs.double() - offset) / scale
    elif not wavs.is_floating_point():
        raise TypeError(
            f"Waveforms of dtype {wavs.dtype} cannot be read as audio: give float "
            "samples in [-1, 1], or integer PCM as int16, int32, int8 or uint8."
        )
    wavs = wavs.float()
    if wavs.dim() == 1:
        return wavs.unsqueeze(0)
    if wavs.dim() == 2 and wavs.shape[1] <= MAX_CHANNELS < wavs.shape[0]:
        return wavs.mean(dim=1, keepdim=True).T  # one clip [samples, channels]
    if wavs.dim() == 3 and wavs.shape[2] <= MAX_CHANNELS < wavs.shape[1]:
        return wavs.mean(dim=2)  # [batch, samples, channels]
    if wavs.dim() != 2:
        raise ValueError(
            f"Expected waveforms [batch, samples], one clip [samples] or "
            f"[samples, channels], or [batch, samples, channels] (at most "
            f"{MAX_CHANNELS} channels), got shape {tuple(wavs.shape)}. Mix "
            "multi-channel audio down or transpose channels-first audio "
            "([channels, samples] -> [samples, channels]) first."
        )
    return wavs


def _check_wav_lens(wav_lens, batch):
    """Relative lengths ``[batch]`` (all 1 when None); refuses other forms."""
    if wav_lens is None:
        return torch.ones(batch)
    if isinstance(wav_lens, np.ndarray):
        wav_lens = torch.from_numpy(wav_lens)
    try:
        lens = torch.as_tensor(wav_lens)
    except (TypeError, ValueError, RuntimeError) as err:
        raise ValueError(f"{WAV_LENS_FORM}; got {wav_lens!r}.") from err
    if lens.dim() != 1 or lens.shape[0] != batch:
        raise ValueError(
            f"{WAV_LENS_FORM}; got shape {tuple(lens.shape)} for a batch of {batch} "
            "clip(s)."
        )
    if not lens.is_floating_point() and lens.dtype != torch.bool:
        if bool((lens > 1).any()):
            raise ValueError(
                f"{WAV_LENS_FORM}; got integers {lens.tolist()}, which look like "
                "lengths in samples: divide them by wavs.shape[1]."
            )
    lens = lens.float()
    if not bool(torch.isfinite(lens).all()) or bool(((lens <= 0) | (lens > 1)).any()):
        hint = ""
        if bool((lens > 1).any()):
            hint = " Values above 1 look like lengths in samples: divide them by "
            hint += "wavs.shape[1]."
        raise ValueError(f"{WAV_LENS_FORM}; got {lens.tolist()}.{hint}")
    return lens
