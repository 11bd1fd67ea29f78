"""Speech to text with a model trained by ``recipes/LibriSpeech/LLM_bridge``.

Example (the recipe's output folder or its packaged ``inference_model``)::

    from speechbrain_moe.inference import SpeechLLMTranscriber
    asr = SpeechLLMTranscriber.from_hparams(source="results/LLM_bridge/moe_adapter/1986")
    text = asr.transcribe_file("speech.flac")

Authors
 * speechbrain-moe contributors 2026
"""

import torch

from speechbrain_moe.inference.interfaces import ExperimentInterface


def shortest_input(speech_llm, sample_rate, device="cpu", max_seconds=30.0):
    """The fewest samples a batch must have for ``speech_llm``'s bridge to get
    at least one frame: its encoder must give ``downsampling_factor`` frames
    (found by running the encoder on silence: doubling, then bisection).

    Arguments
    ---------
    speech_llm : speechbrain_moe.lobes.speech_llm.SpeechLLM
        The model.
    sample_rate : int
        Its input rate.
    device : str or torch.device
        Where the model is.
    max_seconds : float
        Give up (return this many seconds of samples) beyond it.

    Returns
    -------
    int

    Example
    -------
    >>> class Encoder(torch.nn.Module):  # one frame per 160 samples
    ...     def encode(self, wavs, wav_lens=None):
    ...         return wavs[:, ::160, None], None
    >>> model = torch.nn.Module()
    >>> model.encoder, model.downsampling_factor = Encoder(), 4
    >>> shortest_input(model, 16000)
    481
    """
    needed = getattr(speech_llm, "downsampling_factor", 1)
    encoder = speech_llm.encoder
    limit = int(max_seconds * sample_rate)

    def enough(samples):
        """Whether a clip of ``samples`` gives the bridge a frame."""
        wav = torch.zeros(1, samples, device=device)
        with torch.no_grad():
            hidden, _ = encoder.encode(wav, torch.ones(1, device=device))
        return hidden.shape[1] >= needed

    low, high = 0, max(int(getattr(encoder, "min_samples", 1)), 1)
    while not enough(high):  # enough(low) is False (or low is 0)
        if high >= limit:
            return limit
        low, high = high, min(2 * high, limit)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (low, middle) if enough(middle) else (middle, high)
    return high


class SpeechLLMTranscriber(ExperimentInterface):
    """Speech-to-text with a model of ``recipes/LibriSpeech/LLM_bridge``.

    ``modules``: ``speech_llm``; ``hparams``: ``tokenizer``, ``asr_prompt``,
    ``sample_rate``, ``max_new_tokens``, ``num_beams``.

    Arguments
    ---------
    *args
        As :class:`speechbrain.inference.interfaces.Pretrained`.
    **kwargs
        As :class:`speechbrain.inference.interfaces.Pretrained`.

    Example
    -------
    >>> import types
    >>> class Encoder(torch.nn.Module):  # one frame per 160 samples
    ...     def encode(self, wavs, wav_lens=None):
    ...         return wavs[:, ::160, None], None
    >>> class SpeechLLM(torch.nn.Module):  # "generates" the prompt, shifted by 1
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.encoder, self.downsampling_factor = Encoder(), 2
    ...     def generate(self, wavs, wav_lens, prompt_ids, prompt_lens, **options):
    ...         return prompt_ids + 1
    >>> class Tokenizer:
    ...     def __call__(self, text, add_special_tokens=False):
    ...         return types.SimpleNamespace(input_ids=[ord(c) - 1 for c in text])
    ...     def decode(self, ids, skip_special_tokens=True):
    ...         return "".join(chr(i) for i in ids.tolist())
    >>> model = SpeechLLMTranscriber(
    ...     modules={"speech_llm": SpeechLLM()},
    ...     hparams={"tokenizer": Tokenizer(), "asr_prompt": "hi", "sample_rate": 16000})
    >>> model.min_samples
    161
    >>> model.transcribe_batch(torch.randn(2, 16000))
    ['hi', 'hi']
    """

    MODULES_NEEDED = ["speech_llm"]
    HPARAMS_NEEDED = ["tokenizer", "asr_prompt", "sample_rate"]
    LOADABLES = ("speech_llm",)
    MIN_KEY = "loss"
    USAGE = 'text = model.transcribe_file("speech.flac")'

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, default in (("max_new_tokens", 64), ("num_beams", 1)):
            value = getattr(self.hparams, key, default)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(
                    f"{key} must be an integer >= 1 (the recipe's --{key}, recorded "
                    f"in inference.yaml), got {value!r}. Load with "
                    f"from_hparams(..., overrides={{{key!r}: {default}}}) or fix "
                    f"{key} in inference.yaml."
                )
        self.min_samples = shortest_input(
            self.mods.speech_llm, self.hparams.sample_rate, self.device
        )

    def transcribe_batch(self, wavs, wav_lens=None, prompt=None):
        """Transcribes a batch of waveforms.

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            ``[batch, samples]`` at ``sample_rate``, one clip ``[samples]`` or
            ``[samples, channels]``, or ``[batch, samples, channels]``
            (channels are mixed down); float or integer PCM (see
            :meth:`~speechbrain_moe.inference.interfaces.ExperimentInterface.check_batch`).
            A batch shorter than the bridge needs (``min_samples``: at least
            one stacked frame of ``downsampling_factor`` encoder frames) is
            zero-padded to it, with a warning.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], one per clip (default: all 1).
        prompt : str, optional
            Text prompt (default ``asr_prompt``; e.g. ``cls_prompt`` of a
            model trained with a classification task).

        Returns
        -------
        list of str
            One text per waveform.
        """
        tokenizer = self.hparams.tokenizer
        wavs, wav_lens = self.check_batch(wavs, wav_lens, self.min_samples)
        ids = tokenizer(
            prompt or self.hparams.asr_prompt, add_special_tokens=False
        ).input_ids
        prompt_ids = torch.tensor([ids] * wavs.shape[0], device=self.device)
        prompt_lens = torch.ones(wavs.shape[0], device=self.device)
        with torch.no_grad():
            tokens = self.mods.speech_llm.generate(
                wavs,
                wav_lens,
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
            The text.
        """
        max_seconds = getattr(self.hparams, "max_audio_seconds", None)
        wav = self.read_file(path, max_seconds)
        return self.transcribe_batch(wav, prompt=prompt)[0]

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`transcribe_batch` (with the default prompt).

        Arguments
        ---------
        wavs : torch.Tensor or numpy.ndarray
            The waveforms, as :meth:`transcribe_batch` takes them.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1], one per clip (default: all 1).

        Returns
        -------
        list of str
            One text per waveform.
        """
        return self.transcribe_batch(wavs, wav_lens)
