"""Inference with trained recipes, in the style of ``speechbrain.inference``.

* :class:`PETLAudioClassifier` (``recipes/*/PETL``): ``classify_file`` /
  ``classify_batch``, as SpeechBrain's ``EncoderClassifier``;
* :class:`SpeechLLMTranscriber` (``recipes/LibriSpeech/LLM_bridge``):
  ``transcribe_file`` / ``transcribe_batch``;
* :class:`MultiTaskClassifier`: several ``recipes/*/PETL`` runs of one
  backbone source on one frozen backbone, ``classify_batch(wavs, task=...)``
  or ``tasks=[...]`` (one task per clip).

Both load with ``from_hparams(source=..., hparams_file="inference.yaml")``
where ``source`` is a recipe's output folder (its best checkpoint is packaged
into ``<source>/inference_model`` first, see
:func:`~speechbrain_moe.inference.export.package_experiment`) or such a
packaged folder. Only trained tensors are stored; the pretrained models come
from their sources again. Every file is loaded with ``weights_only=True``.
The folder holds copies of the method and bridge files it was trained with,
records the class that loads it and is verified against ``MANIFEST.json``
checksums before it is loaded (see :mod:`~speechbrain_moe.inference.export`
and :mod:`~speechbrain_moe.inference.verify`).

Authors
 * speechbrain-moe contributors 2026
"""

from speechbrain_moe.inference.classifier import PETLAudioClassifier
from speechbrain_moe.inference.export import (
    export_inference_hparams,
    package_experiment,
)
from speechbrain_moe.inference.multitask import MultiTaskClassifier
from speechbrain_moe.inference.transcriber import SpeechLLMTranscriber

__all__ = [
    "MultiTaskClassifier",
    "PETLAudioClassifier",
    "SpeechLLMTranscriber",
    "export_inference_hparams",
    "package_experiment",
]
