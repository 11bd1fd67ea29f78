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
    """

    MODULES_NEEDED = ["speech_llm"]
    HPARAMS_NEEDED = ["tokenizer", "asr_prompt", "sample_rate"]
    LOADABLES = ("speech_llm",)
    MIN_KEY = "loss"
    USAGE = 'text = model.transcribe_file("speech.flac")'

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
        wavs, wav_lens = self.check_batch(wavs, wav_lens)
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

        """
        max_seconds = getattr(self.hparams, "max_audio_seconds", None)
        wav = self.read_file(path, max_seconds)
        return self.transcribe_batch(wav, prompt=prompt)[0]

    def forward(self, wavs, wav_lens=None):
        """Same as :meth:`transcribe_batch`."""
        return self.transcribe_batch(wavs, wav_lens)
