"""What the inference classes share: loading from an experiment folder and
checking the waveforms they are given.

Authors
 * speechbrain-moe contributors 2026
"""

import os

import torch
from speechbrain.inference.interfaces import Pretrained

from speechbrain_moe.dataio import read_clip
from speechbrain_moe.inference.export import package_experiment

INFERENCE_HINT = "Check the path, or convert the file to WAV/FLAC."


class ExperimentInterface(Pretrained):
    """``Pretrained`` whose ``from_hparams`` also takes a recipe's output folder.

    Subclasses set ``LOADABLES`` (the checkpoint files to package),
    ``MAX_KEY`` or ``MIN_KEY`` (which checkpoint is the best) and ``USAGE``
    (a line of the model card's usage snippet).
    """

    LOADABLES = ()
    USAGE = ""
    MAX_KEY = None
    MIN_KEY = None

    @classmethod
    def from_hparams(cls, source, hparams_file="inference.yaml", **kwargs):
        """Loads a packaged folder, a hub repository or an experiment folder.

        Arguments
        ---------
        source : str
            Packaged folder / hub id, or a recipe's ``output_folder`` (its best
            checkpoint is packaged into ``<source>/inference_model`` first).
        hparams_file : str
            The hyper-parameter file inside ``source``.
        **kwargs
            As :meth:`speechbrain.inference.interfaces.Pretrained.from_hparams`.

        Returns
        -------
        Pretrained
        """
        source = str(source)
        if os.path.isdir(os.path.join(source, "save")):
            source = package_experiment(
                source, cls.LOADABLES, cls.MAX_KEY, cls.MIN_KEY, interface=cls
            )
        if os.path.isdir(source) and kwargs.get("savedir") is None:
            kwargs["savedir"] = os.path.join(source, "collected")
        return super().from_hparams(source, hparams_file=hparams_file, **kwargs)

    def read_file(self, path, max_seconds=None):
        """One audio file as the model's input (mono, resampled, cut).

        Arguments
        ---------
        path : str
            Audio file.
        max_seconds : float, optional
            Longer audio is cut, with a warning naming the file.

        """
        return read_clip(path, self.hparams.sample_rate, max_seconds, INFERENCE_HINT)

    def check_batch(self, wavs, wav_lens=None):
        """Validates and moves a batch of waveforms to the model's device.

        A 1-D tensor is one clip. Clips with NaN/inf samples or without
        samples raise ``ValueError`` naming them.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` or ``[samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        wavs : torch.Tensor
        wav_lens : torch.Tensor
        """
        wavs = torch.as_tensor(wavs)
        if wavs.dim() == 1:
            wavs = wavs.unsqueeze(0)
        if wavs.dim() != 2:
            raise ValueError(
                f"Expected waveforms [batch, samples] (or one clip [samples]), got "
                f"shape {tuple(wavs.shape)}. Mix multi-channel audio down first."
            )
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0])
        wav_lens = torch.as_tensor(wav_lens, dtype=torch.float)
        lengths = (wav_lens * wavs.shape[1]).round().long()
        bad = [
            i
            for i in range(wavs.shape[0])
            if lengths[i] < 1 or not bool(torch.isfinite(wavs[i, : lengths[i]]).all())
        ]
        if bad:
            raise ValueError(
                f"Clip(s) {bad} of the batch are empty or have NaN/inf samples; "
                "no prediction can be made for them. Remove or repair them."
            )
        return wavs.to(self.device).float(), wav_lens.to(self.device)
