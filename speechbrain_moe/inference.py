"""Inference with trained recipes, in the style of ``speechbrain.inference``.

* :class:`PETLAudioClassifier` (classification recipes ``recipes/*/PETL``):
  ``classify_file`` / ``classify_batch``, as SpeechBrain's
  ``EncoderClassifier``;
* :class:`SpeechLLMTranscriber` (``recipes/LibriSpeech/LLM_bridge``):
  ``transcribe_file`` / ``transcribe_batch``.

Both load with ``from_hparams(source=..., hparams_file="inference.yaml")``
where ``source`` is either

* a *packaged* folder (``inference.yaml`` + the adapter-only weight files,
  as a model card on the Hugging Face hub holds them), or
* an *experiment* folder (a recipe's ``output_folder``): its best checkpoint
  (highest validation accuracy, resp. lowest validation loss) is packaged
  first, into ``<source>/inference_model`` (see :func:`package_experiment`).

The recipes write ``<output_folder>/inference.yaml`` at start
(:func:`export_inference_hparams`): their ``hparams/inference.yaml`` filled
with the run's settings (backbone, PETL method and its full settings, number
of classes, ...). Only trained tensors are stored; the pretrained backbone is
loaded from ``backbone_source`` again. Every file is loaded with
``weights_only=True``.

Example (classification)::

    from speechbrain_moe.inference import PETLAudioClassifier
    model = PETLAudioClassifier.from_hparams(
        source="results/ESC50/ast/soft_moa/1986/fold1", hparams_file="inference.yaml"
    )
    log_probs, score, index, label = model.classify_file("dog.wav")

Authors
 * speechbrain-moe contributors 2026
"""

import inspect
import os
import shutil

import torch
from hyperpyyaml import resolve_references
from speechbrain.inference.interfaces import Pretrained
from speechbrain.utils.checkpoints import Checkpointer
from speechbrain.utils.distributed import if_main_process
from speechbrain.utils.logger import get_logger

from speechbrain_moe.methods import apply_method
from speechbrain_moe.recipe import load_audio, load_petl_settings

logger = get_logger(__name__)

PLAIN = (str, int, float, bool, type(None))


def _is_plain(value):
    """Whether ``value`` is a YAML-writable plain value (nested lists/dicts ok)."""
    if isinstance(value, PLAIN):
        return True
    if isinstance(value, (list, tuple)):
        return all(_is_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _is_plain(v) for k, v in value.items())
    return False


def petl_backbone(
    encoder_type, source, petl_method, petl_settings=None, backbone_options=None
):
    """Builds a backbone lobe and applies a PETL method to it (inference.yaml).

    Arguments
    ---------
    encoder_type : str
        ``ast``, ``whisper``, ``wavlm`` or the dotted path of a
        :class:`~speechbrain_moe.lobes.base.Backbone` class.
    source : str
        Hub id or local folder of the pretrained backbone.
    petl_method : str
        The PETL method the model was trained with.
    petl_settings : dict, optional
        Its full settings (as :func:`~speechbrain_moe.recipe.load_petl_settings`
        returned them when training).
    backbone_options : dict, optional
        Further constructor arguments of the lobe (``max_frames``, ...).

    Returns
    -------
    torch.nn.Module
        The adapted backbone (adapters freshly initialised; the trained
        tensors come from the checkpoint).

    Example
    -------
    >>> import tempfile
    >>> from transformers import ASTConfig, ASTModel
    >>> folder = tempfile.mkdtemp()
    >>> ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
    ...                    intermediate_size=64, max_length=100)).save_pretrained(folder)
    >>> backbone = petl_backbone("ast", folder, "adapter", {"bottleneck": 2},
    ...                          {"max_frames": 100})
    >>> type(backbone).__name__
    'AST'
    """
    from speechbrain_moe.lobes.speech_llm import build_encoder

    backbone = build_encoder(encoder_type, source=source, **(backbone_options or {}))
    settings = dict(petl_settings or {})
    backbone = apply_method(backbone, petl_method, **settings)
    backbone.petl_method = petl_method
    backbone.petl_settings = settings
    return backbone


def export_inference_hparams(template, hparams, output_folder=None):
    """Writes ``<output_folder>/inference.yaml``: ``template`` with the run's
    settings (main process only).

    Every top-level key of ``template`` that the run's ``hparams`` also hold
    with a plain value takes the run's value; besides, ``encoder_type`` and
    ``backbone_options`` are taken from the run's backbone and
    ``petl_settings`` holds the method's full settings, so that the folder
    rebuilds the trained model without the repository's settings files.

    Arguments
    ---------
    template : str
        The recipe's ``hparams/inference.yaml``.
    hparams : dict
        The run's loaded hyper-parameters.
    output_folder : str, optional
        Where to write (default ``hparams["output_folder"]``).

    Returns
    -------
    str
        The path written.
    """
    output_folder = output_folder or hparams["output_folder"]
    path = os.path.join(output_folder, "inference.yaml")
    with open(template, encoding="utf-8") as fin:
        text = fin.read()
    keys = _top_level_keys(text)
    overrides = {k: hparams[k] for k in keys if k in hparams and _is_plain(hparams[k])}
    source = overrides.get("backbone_source")
    if isinstance(source, str) and os.path.isdir(source):
        overrides["backbone_source"] = os.path.abspath(source)
    if "petl_settings" in keys and "petl_method" in hparams:
        overrides["petl_settings"] = load_petl_settings(
            hparams["petl_method"], overrides=hparams.get("petl_overrides")
        )
    backbone = hparams.get("backbone")
    if "encoder_type" in keys and backbone is not None:
        cls = type(backbone)
        overrides["encoder_type"] = f"{cls.__module__}.{cls.__qualname__}"
        if "backbone_options" in keys:
            names = inspect.signature(cls.__init__).parameters
            overrides["backbone_options"] = {
                n: hparams[n]
                for n in names
                if n not in ("self", "source", "save_path")
                and n in hparams
                and _is_plain(hparams[n])
            }
    if if_main_process():
        os.makedirs(output_folder, exist_ok=True)
        with open(template, encoding="utf-8") as fin:
            resolved = resolve_references(fin, overrides).getvalue()
        with open(path, "w", encoding="utf-8") as fout:
            fout.write(resolved)
    return path


def _top_level_keys(text):
    """Top-level keys of a YAML text."""
    import re

    return [
        m.group(1)
        for m in re.finditer(r"^([A-Za-z_][\w.]*)\s*:", text, flags=re.MULTILINE)
    ]


def package_experiment(
    experiment_folder, target=None, files=(), max_key=None, min_key=None
):
    """Copies an experiment's best checkpoint into a flat, loadable folder.

    Arguments
    ---------
    experiment_folder : str
        A recipe's ``output_folder`` (``inference.yaml`` and ``save/``).
    target : str, optional
        Destination (default ``<experiment_folder>/inference_model``).
    files : sequence of str
        Checkpoint files to copy (e.g. ``backbone.ckpt``).
    max_key : str, optional
        Pick the checkpoint with the highest meta value of this key.
    min_key : str, optional
        Pick the checkpoint with the lowest meta value of this key.

    Returns
    -------
    str
        The packaged folder: ``inference.yaml``, ``files`` and, when the
        experiment has one, ``label_encoder.ckpt``.
    """
    target = target or os.path.join(experiment_folder, "inference_model")
    save = os.path.join(experiment_folder, "save")
    hparams_file = os.path.join(experiment_folder, "inference.yaml")
    if not os.path.isfile(hparams_file):
        raise FileNotFoundError(
            f"{experiment_folder} has no inference.yaml; it is written by the "
            "recipes' train.py at start. Give the experiment's output_folder."
        )
    checkpoint = None
    if os.path.isdir(save):
        checkpoint = Checkpointer(save).find_checkpoint(
            max_key=max_key, min_key=min_key
        )
    if checkpoint is None:
        raise FileNotFoundError(
            f"No checkpoint with a {max_key or min_key!r} value in {save}: train "
            "the model (at least one epoch with validation) first."
        )
    os.makedirs(target, exist_ok=True)
    for name in files:
        src = checkpoint.path / name
        if not src.is_file():
            raise FileNotFoundError(f"{src} is missing from the checkpoint.")
        shutil.copyfile(src, os.path.join(target, name))
    encoder = os.path.join(save, "label_encoder.txt")
    if os.path.isfile(encoder):
        shutil.copyfile(encoder, os.path.join(target, "label_encoder.ckpt"))
    shutil.copyfile(hparams_file, os.path.join(target, "inference.yaml"))
    logger.info(
        "Packaged %s (checkpoint %s) in %s", experiment_folder, checkpoint.path, target
    )
    return target


class _ExperimentOrPackage(Pretrained):
    """``from_hparams`` that also accepts a recipe's experiment folder."""

    PACKAGE_FILES = ()
    MAX_KEY = None
    MIN_KEY = None

    @classmethod
    def from_hparams(cls, source, hparams_file="inference.yaml", **kwargs):
        """Loads a packaged folder, hub repository or experiment folder.

        Arguments
        ---------
        source : str
            Packaged folder / hub id, or a recipe's ``output_folder`` (its best
            checkpoint is packaged into ``<source>/inference_model`` first).
        hparams_file : str
            The hyper-parameter file inside ``source``.
        **kwargs
            As :meth:`speechbrain.inference.interfaces.Pretrained.from_hparams`
            (``savedir``, ``overrides``, ``run_opts``, ...).

        Returns
        -------
        Pretrained
        """
        if os.path.isdir(os.path.join(str(source), "save")):
            source = package_experiment(
                str(source),
                files=cls.PACKAGE_FILES,
                max_key=cls.MAX_KEY,
                min_key=cls.MIN_KEY,
            )
        if os.path.isdir(str(source)) and kwargs.get("savedir") is None:
            kwargs["savedir"] = os.path.join(str(source), "collected")
        return super().from_hparams(source, hparams_file=hparams_file, **kwargs)


class PETLAudioClassifier(_ExperimentOrPackage):
    """Audio classifier trained by a ``recipes/*/PETL`` recipe.

    ``modules``: ``backbone`` (PETL-adapted lobe) and ``classifier`` (head
    giving logits); ``hparams``: ``label_encoder`` and ``sample_rate``.

    Arguments
    ---------
    *args
        As :class:`speechbrain.inference.interfaces.Pretrained`.
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
    >>> log_probs, score, index, label = model.classify_batch(
    ...     torch.tensor([[0.0, 5.0, 1.0]]))
    >>> index, label
    (tensor([1]), ['rain'])
    """

    MODULES_NEEDED = ["backbone", "classifier"]
    HPARAMS_NEEDED = ["label_encoder", "sample_rate"]
    PACKAGE_FILES = ("backbone.ckpt", "classifier.ckpt")
    MAX_KEY = "accuracy"

    def classify_batch(self, wavs, wav_lens=None):
        """Classifies a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1] (default: all 1).

        Returns
        -------
        out_prob : torch.Tensor
            ``[batch, classes]`` log-posteriors (as SpeechBrain's
            ``EncoderClassifier``; ``.exp()`` gives probabilities).
        score : torch.Tensor
            ``[batch]`` log-posterior of the best class.
        index : torch.Tensor
            ``[batch]`` index of the best class.
        text_lab : list of str
            Its label.
        """
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        wav_lens = wav_lens.to(self.device)
        with torch.no_grad():
            embeddings = self.mods.backbone(wavs, wav_lens)
            out_prob = torch.log_softmax(self.mods.classifier(embeddings), dim=-1)
        score, index = torch.max(out_prob, dim=-1)
        text_lab = self.hparams.label_encoder.decode_torch(index)
        return out_prob, score, index, text_lab

    def classify_file(self, path):
        """Classifies one audio file (any rate; resampled, mixed down).

        Arguments
        ---------
        path : str
            Audio file.

        Returns
        -------
        tuple
            As :meth:`classify_batch`, for a batch of one.
        """
        wav = load_audio(path, self.hparams.sample_rate)
        return self.classify_batch(wav.unsqueeze(0), torch.ones(1))

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`classify_batch`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths.

        Returns
        -------
        tuple
        """
        return self.classify_batch(wavs, wav_lens)


class SpeechLLMTranscriber(_ExperimentOrPackage):
    """Speech-to-text with a model of ``recipes/LibriSpeech/LLM_bridge``.

    ``modules``: ``speech_llm``; ``hparams``: ``tokenizer``, ``asr_prompt``,
    ``sample_rate``, ``max_new_tokens``, ``num_beams``.

    Arguments
    ---------
    *args
        As :class:`speechbrain.inference.interfaces.Pretrained`.
    **kwargs
        As :class:`speechbrain.inference.interfaces.Pretrained`.
    """

    MODULES_NEEDED = ["speech_llm"]
    HPARAMS_NEEDED = ["tokenizer", "asr_prompt", "sample_rate"]
    PACKAGE_FILES = ("speech_llm.ckpt",)
    MIN_KEY = "loss"

    def transcribe_batch(self, wavs, wav_lens=None, prompt=None):
        """Transcribes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` at ``sample_rate``.
        wav_lens : torch.Tensor, optional
            Relative lengths (default: all 1).
        prompt : str, optional
            Text prompt (default ``asr_prompt``; e.g. ``cls_prompt`` of a
            model trained with a classification task).

        Returns
        -------
        list of str
            One text per waveform.
        """
        tokenizer = self.hparams.tokenizer
        wavs = wavs.to(self.device).float()
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=self.device)
        ids = tokenizer(
            prompt or self.hparams.asr_prompt, add_special_tokens=False
        ).input_ids
        prompt_ids = torch.tensor([ids] * wavs.shape[0], device=self.device)
        prompt_lens = torch.ones(wavs.shape[0], device=self.device)
        with torch.no_grad():
            tokens = self.mods.speech_llm.generate(
                wavs,
                wav_lens.to(self.device),
                prompt_ids,
                prompt_lens,
                max_new_tokens=getattr(self.hparams, "max_new_tokens", 64),
                num_beams=getattr(self.hparams, "num_beams", 1),
            )
        return [tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]

    def transcribe_file(self, path, prompt=None):
        """Transcribes one audio file (any rate; resampled, mixed down).

        Arguments
        ---------
        path : str
            Audio file.
        prompt : str, optional
            Text prompt (default ``asr_prompt``).

        Returns
        -------
        str
        """
        wav = load_audio(path, self.hparams.sample_rate)
        max_seconds = getattr(self.hparams, "max_audio_seconds", None)
        if max_seconds:
            wav = wav[: int(max_seconds * self.hparams.sample_rate)]
        return self.transcribe_batch(wav.unsqueeze(0), prompt=prompt)[0]

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`transcribe_batch`.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths.

        Returns
        -------
        list of str
        """
        return self.transcribe_batch(wavs, wav_lens)
