"""Our re-implemented Hugging Face forwards against Hugging Face's own, where
their semantics coincide, so that a ``transformers`` release that changes
what they rely on fails here loudly instead of silently changing results:

* the Whisper lobe runs ``WhisperEncoder``'s layer loop itself (trimmed to
  the valid frames, its own attention mask through
  ``transformers.masking_utils``): on a full 30 s clip it must equal
  ``WhisperEncoder.forward`` on ``WhisperFeatureExtractor``'s features, for
  each attention implementation, alone and beside a shorter clip (the
  masked path);
* the WavLM lobe swaps in its own attention (``ModularWavLMAttention``) and
  first-layer norm (``MaskedGroupNorm``) and prepares the waveform itself: on
  an unpadded clip it must equal a freshly loaded, unmodified
  ``WavLMModel`` on ``Wav2Vec2FeatureExtractor``'s input, post-LN ("base")
  and pre-LN ("large") alike.
"""

import pytest
import torch

from speechbrain_moe.lobes.wavlm import MaskedGroupNorm, ModularWavLMAttention, WavLM
from speechbrain_moe.lobes.whisper import Whisper
from synthetic.models import make_tiny_wavlm, make_tiny_whisper

SAMPLE_RATE = 16000
WHISPER_CLIP_SECONDS = 30  # Whisper's fixed input: 3000 mel frames, 1500 frames


@pytest.fixture(scope="module")
def whisper_folder(tmp_path_factory):
    return make_tiny_whisper(str(tmp_path_factory.mktemp("parity_whisper")))


@pytest.mark.parametrize("attention", ["eager", "sdpa"])
def test_whisper_full_clip_equals_hf_whisper_encoder(whisper_folder, attention):
    from transformers import WhisperFeatureExtractor, WhisperModel
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    reference = WhisperModel.from_pretrained(
        whisper_folder, attn_implementation=attention
    ).encoder.eval()
    assert type(reference) is WhisperEncoder
    extractor = WhisperFeatureExtractor.from_pretrained(whisper_folder)
    lobe = Whisper(whisper_folder).eval()  # trim_to_valid: our own layer loop
    lobe.model.set_attn_implementation(attention)
    assert lobe.trim_to_valid and lobe.model.config._attn_implementation == attention

    torch.manual_seed(0)
    samples = WHISPER_CLIP_SECONDS * SAMPLE_RATE
    wavs = 0.1 * torch.randn(2, samples)
    lens = torch.tensor([1.0, 0.4])  # a 30 s clip beside a 12 s one
    features = extractor(
        wavs[0].numpy(), sampling_rate=SAMPLE_RATE, return_tensors="pt"
    ).input_features
    with torch.no_grad():
        expected = reference(input_features=features).last_hidden_state[0]
        alone, alone_mask = lobe.encode(wavs[:1], lens[:1])
        batch, batch_mask = lobe.encode(wavs, lens)
    assert expected.shape == (1500, lobe.output_size)
    assert bool(alone_mask.all()) and alone.shape[1:] == expected.shape
    torch.testing.assert_close(alone[0], expected, atol=1e-5, rtol=1e-5)
    # Beside a padded clip: our attention mask (HF's own mask functions) keeps
    # the full clip's result unchanged.
    assert bool(batch_mask[0].all()) and not bool(batch_mask[1].all())
    torch.testing.assert_close(batch[0], expected, atol=1e-5, rtol=1e-5)


WAVLM_VARIANTS = {
    "post_ln": {},  # WavLM base: group norm in the first convolution
    "pre_ln": {"do_stable_layer_norm": True, "feat_extract_norm": "layer"},
}


@pytest.mark.parametrize("variant", list(WAVLM_VARIANTS))
def test_wavlm_unpadded_clip_equals_hf_wavlm(tmp_path, variant):
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel
    from transformers.models.wavlm.modeling_wavlm import WavLMAttention

    folder = make_tiny_wavlm(str(tmp_path), **WAVLM_VARIANTS[variant])
    reference = WavLMModel.from_pretrained(folder).eval()
    assert all(
        type(m) is not ModularWavLMAttention for m in reference.modules()
    ) and any(type(m) is WavLMAttention for m in reference.modules())
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    lobe = WavLM(folder).eval()
    # The lobe runs its own attention (and, post-LN, its own first norm).
    assert any(type(m) is ModularWavLMAttention for m in lobe.modules())
    masked_norm = any(type(m) is MaskedGroupNorm for m in lobe.modules())
    assert masked_norm == (variant == "post_ln")

    torch.manual_seed(0)
    wav = torch.randn(1, 24000)  # 1.5 s, unpadded
    inputs = extractor(
        wav[0].numpy(),
        sampling_rate=SAMPLE_RATE,
        return_attention_mask=True,
        return_tensors="pt",
    )
    with torch.no_grad():
        expected = reference(**inputs).last_hidden_state
        hidden, mask = lobe.encode(wav, torch.ones(1))
    assert bool(mask.all()) and hidden.shape == expected.shape
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)
