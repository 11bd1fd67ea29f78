"""Audio classification with a model trained by a ``recipes/*/PETL`` recipe.

Example (a recipe's output folder or its packaged ``inference_model``)::

    from speechbrain_moe.inference import PETLAudioClassifier
    model = PETLAudioClassifier.from_hparams(
        source="results/ESC50/ast/soft_moa/1986/fold1", hparams_file="inference.yaml"
    )
    log_probs, score, index, label = model.classify_file("dog.wav")

Authors
 * speechbrain-moe contributors 2026
"""

import torch

from speechbrain_moe.inference.interfaces import ExperimentInterface
from speechbrain_moe.petl.merge import merge_lora, unmerge


class PETLAudioClassifier(ExperimentInterface):
    """Classifies audio, as SpeechBrain's ``EncoderClassifier`` does.

    ``modules``: ``backbone`` (a PETL-adapted lobe) and ``classifier`` (a head
    giving logits); ``hparams``: ``label_encoder`` and ``sample_rate``.

    Arguments
    ---------
    *args
        As :class:`speechbrain.inference.interfaces.Pretrained`.
    merge : bool
        Fold the trained update into the backbone's weights and remove the
        adapter modules (``lora``, ``bitfit``; see
        :func:`~speechbrain_moe.petl.merge.merge_and_unload`), e.g.
        ``from_hparams(source=..., merge=True)``; other methods refuse.
        :meth:`unmerge` gives the adapter modules back.
    **kwargs
        As :class:`speechbrain.inference.interfaces.Pretrained`.

    Example
    -------
    >>> class Backbone(torch.nn.Module):
    ...     def forward(self, wavs, wav_lens=None):
    ...         return wavs[:, :2]
    >>> from speechbrain.dataio.encoder import CategoricalEncoder
    >>> encoder = CategoricalEncoder()
    >>> encoder.update_from_iterable(["dog", "rain"])
    >>> model = PETLAudioClassifier(
    ...     modules={"backbone": Backbone(), "classifier": torch.nn.Identity()},
    ...     hparams={"label_encoder": encoder, "sample_rate": 16000})
    >>> log_probs, score, index, label = model.classify_batch(torch.tensor([0.0, 5.0]))
    >>> index, label
    (tensor([1]), ['rain'])
    """

    MODULES_NEEDED = ["backbone", "classifier"]
    HPARAMS_NEEDED = ["label_encoder", "sample_rate"]
    LOADABLES = ("backbone", "classifier", "label_encoder")
    MAX_KEY = "accuracy"
    USAGE = 'log_probs, score, index, label = model.classify_file("clip.wav")'

    def __init__(self, *args, merge=False, **kwargs):
        super().__init__(*args, **kwargs)
        encoder = self.hparams.label_encoder
        encoder.expect_len(len(encoder))
        outputs = [
            m.out_features
            for m in self.mods.classifier.modules()
            if isinstance(getattr(m, "out_features", None), int)
        ]
        if outputs:
            self.check_head(outputs[-1])
        # What merging removed (None: not merged), for unmerge().
        self.merged = merge_lora(self.mods.backbone) if merge else None

    def unmerge(self):
        """Undoes ``merge=True``: the LoRA modules are put back and their
        update subtracted from the frozen weights (peft's ``unmerge``).

        Example
        -------
        >>> from speechbrain.dataio.encoder import CategoricalEncoder
        >>> from speechbrain.nnet.adapters import LoRA
        >>> encoder = CategoricalEncoder()
        >>> encoder.update_from_iterable(["dog", "rain"])
        >>> backbone = torch.nn.Sequential(LoRA(torch.nn.Linear(2, 2), rank=1))
        >>> model = PETLAudioClassifier(
        ...     modules={"backbone": backbone, "classifier": torch.nn.Identity()},
        ...     hparams={"label_encoder": encoder, "sample_rate": 16000}, merge=True)
        >>> type(model.mods.backbone[0]).__name__
        'Linear'
        >>> model.unmerge()
        >>> type(model.mods.backbone[0]).__name__, model.merged
        ('LoRA', None)
        """
        if self.merged is None:
            raise ValueError(
                "This model is not merged: unmerge() undoes from_hparams(..., "
                "merge=True). Load it with merge=True first, or use it as it is."
            )
        unmerge(self.mods.backbone, self.merged)
        self.merged = None

    def check_head(self, outputs):
        """Refuses a label encoder that does not match the head: each output
        of the head must have exactly one label.

        Arguments
        ---------
        outputs : int
            The number of outputs of the head.

        Example
        -------
        >>> from speechbrain.dataio.encoder import CategoricalEncoder
        >>> encoder = CategoricalEncoder()
        >>> encoder.update_from_iterable(["dog", "rain"])
        >>> model = PETLAudioClassifier(
        ...     modules={"backbone": torch.nn.Identity(), "classifier": torch.nn.Identity()},
        ...     hparams={"label_encoder": encoder, "sample_rate": 16000})
        >>> model.check_head(3)
        Traceback (most recent call last):
        ...
        ValueError: The classifier head has 3 outputs but the label encoder ...
        """
        labels = len(self.hparams.label_encoder)
        if outputs == labels:
            return
        what = "outputs have no label" if outputs > labels else "labels have no output"
        raise ValueError(
            f"The classifier head has {outputs} outputs but the label encoder has "
            f"{labels} labels: {what}. The label "
            "encoder (label_encoder.ckpt, packaged from the run's "
            "save/label_encoder.txt) does not belong to this model: it was rewritten "
            "after training (e.g. after the data changed), or the run was trained "
            f"with n_classes={outputs} for data of {labels} classes. Restore the "
            "run's save/label_encoder.txt, or train again into a new "
            f"--output_folder (with --n_classes={labels})."
        )

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            ``[batch, samples]`` at ``sample_rate``, one clip ``[samples]`` or
            ``[samples, channels]`` (as ``soundfile.read`` gives it), or
            ``[batch, samples, channels]``; channels are mixed down. Float
            samples, or integer PCM (int16, int32, int8, uint8: scaled to
            [-1, 1] as ``soundfile`` does). See
            :meth:`~speechbrain_moe.inference.interfaces.ExperimentInterface.check_batch`.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], one per clip (default: all 1).

        Returns
        -------
        out_prob : torch.Tensor
            ``[batch, classes]`` log-posteriors (``.exp()`` gives
            probabilities).
        score : torch.Tensor
            ``[batch]`` log-posterior of the best class.
        index : torch.Tensor
            ``[batch]`` index of the best class.
        text_lab : list of str
            Its label.
        """
        wavs, wav_lens = self.check_batch(wavs, wav_lens)
        with torch.no_grad():
            embeddings = self.mods.backbone(wavs, wav_lens)
            out_prob = torch.log_softmax(self.mods.classifier(embeddings), dim=-1)
        self.check_head(out_prob.shape[-1])
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index)
        return out_prob, score, index, text_lab

    def classify_file(self, path):
        """Classifies one audio file (any rate; resampled, mixed down, cut to
        the backbone's maximum duration with a warning).

        Arguments
        ---------
        path : str
            Audio file.

        Returns
        -------
        tuple
            As :meth:`classify_batch`, for a batch of one.
        """
        max_seconds = getattr(self.mods.backbone, "max_duration", None)
        return self.classify_batch(self.read_file(path, max_seconds))

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`classify_batch`.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            The waveforms, as :meth:`classify_batch` takes them.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], one per clip (default: all 1).

        Returns
        -------
        tuple
            ``(log_probs, score, index, label)``, as :meth:`classify_batch`.
        """
        return self.classify_batch(wavs, wav_lens)
