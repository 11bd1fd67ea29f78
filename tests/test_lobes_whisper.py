"""Whisper lobe: features as WhisperFeatureExtractor, trimmed vs 30 s encoder,
valid-frame pooling, adapters inside get gradient."""

import pytest
import torch

from benchmarks.whisper_speedup import measure_speedup
from speechbrain_moe.lobes.base import masked_mean
from speechbrain_moe.lobes.whisper import Whisper
from speechbrain_moe.petl import apply_method
from synthetic.models import make_tiny_whisper


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_whisper(str(tmp_path_factory.mktemp("tiny_whisper")))


def test_features_match_feature_extractor(folder):
    from transformers import WhisperFeatureExtractor

    extractor = WhisperFeatureExtractor.from_pretrained(folder)
    torch.manual_seed(0)
    wavs = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([1.0, 0.55])
    full, frames = Whisper(folder, trim_to_valid=False).features(wavs, lens)
    trimmed, _ = Whisper(folder).features(wavs, lens)
    assert full.shape == (2, 80, 3000) and trimmed.shape == (2, 80, 100)
    assert frames.tolist() == [100, 55]
    for i, length in enumerate([16000, 8800]):
        ref = extractor(
            wavs[i, :length].numpy(), sampling_rate=16000, return_tensors="pt"
        ).input_features[0]
        torch.testing.assert_close(full[i], ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(trimmed[i], ref[:, :100], atol=1e-5, rtol=1e-5)


def test_trimmed_equals_full_at_30s(folder):
    torch.manual_seed(0)
    full = Whisper(folder, trim_to_valid=False).eval()
    trimmed = Whisper(folder).eval()
    wavs = torch.randn(2, 30 * 16000) * 0.1
    with torch.no_grad():
        h_full, m_full = full.encode(wavs)
        h_trim, m_trim = trimmed.encode(wavs)
    assert h_trim.shape == h_full.shape == (2, 1500, 32)
    assert torch.equal(m_full, m_trim) and bool(m_full.all())
    torch.testing.assert_close(h_trim, h_full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trim", [True, False])
def test_pooling_ignores_padding(folder, trim):
    torch.manual_seed(0)
    lobe = Whisper(folder, trim_to_valid=trim).eval()
    wavs = torch.randn(2, 16000) * 0.1
    lens = torch.tensor([1.0, 0.5])
    noisy = wavs.clone()
    noisy[1, 8000:] = torch.randn(8000)  # garbage in the padded region
    with torch.no_grad():
        hidden, mask = lobe.encode(wavs, lens)
        pooled = lobe(wavs, lens)
        pooled_noisy = lobe(noisy, lens)
    assert mask.sum(1).tolist() == [50, 25]
    torch.testing.assert_close(pooled, masked_mean(hidden, mask))
    torch.testing.assert_close(pooled[1], hidden[1, :25].mean(0))
    torch.testing.assert_close(pooled_noisy, pooled)


@pytest.mark.parametrize("trim", [True, False])
def test_adapters_inside_get_gradient(folder, trim):
    torch.manual_seed(0)
    lobe = Whisper(folder, trim_to_valid=trim)
    apply_method(lobe, "soft_moa", {"num_experts": 4, "bottleneck": 1})
    wavs = torch.randn(2, 8000) * 0.1
    lobe(wavs, torch.tensor([1.0, 0.5])).pow(2).sum().backward()
    trainable = {n: p for n, p in lobe.named_parameters() if p.requires_grad}
    adapters = {n: p for n, p in trainable.items() if ".adapter." in n}
    assert adapters and all(p.grad is not None for p in trainable.values())
    assert sum(float(p.grad.abs().sum()) for p in adapters.values()) > 0
    assert not any(p.requires_grad for n, p in lobe.named_parameters() if "fc1" in n)


def test_ffn_placement_refused_and_lora(folder):
    lobe = Whisper(folder)
    with pytest.raises(ValueError, match="pfeiffer_attention"):
        apply_method(lobe, "adapter", {"placement": "houlsby", "bottleneck": 2})
    lobe = apply_method(Whisper(folder), "lora", {"rank": 2})
    assert lobe(torch.randn(1, 4000)).shape == (1, 32)


def test_cls_pooling_refused(folder):
    with pytest.raises(ValueError, match="pooling: mean"):
        Whisper(folder, pooling="cls")


def test_bounds_are_documented(folder):
    lobe = Whisper(folder)
    assert lobe.max_duration == 30.0 and lobe.min_samples == 400


def test_long_clip_cut_with_warning(folder, caplog):
    torch.manual_seed(0)
    lobe = Whisper(folder).eval()
    wavs = torch.randn(2, 31 * 16000) * 0.1
    lens = torch.tensor([0.1, 1.0])
    with torch.no_grad(), caplog.at_level("WARNING"):
        hidden, mask = lobe.encode(wavs, lens)
        cut, _ = lobe.encode(wavs[1:, : 30 * 16000])
    messages = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(messages) == 1 and "Clip 1 of the batch lasts 31.00 s" in messages[0]
    assert "at most 30.00 s" in messages[0] and "Split longer" in messages[0]
    assert hidden.shape[1] == 1500 and mask.sum(1).tolist() == [155, 1500]
    torch.testing.assert_close(hidden[1], cut[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("samples", [1, 80, 399])
def test_short_clip_zero_padded(folder, samples):
    torch.manual_seed(0)
    lobe = Whisper(folder).eval()
    short = torch.randn(1, samples) * 0.1
    batch = torch.randn(2, 8000)
    batch[1, :samples] = short[0]
    with torch.no_grad():
        hidden, mask = lobe.encode(short)
        padded, _ = lobe.encode(torch.nn.functional.pad(short, (0, 400 - samples)))
        batched, batch_mask = lobe.encode(batch, torch.tensor([1.0, samples / 8000]))
    # One STFT window (400 samples): 3 mel frames, 2 encoder frames.
    assert mask.tolist() == [[True, True]] and batch_mask[1].sum() == 2
    torch.testing.assert_close(hidden, padded)
    torch.testing.assert_close(batched[1, :2], hidden[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("trim", [True, False])
def test_empty_clip_raises(folder, trim):
    lobe = Whisper(folder, trim_to_valid=trim)
    with pytest.raises(ValueError, match="Clip 1 of the batch is empty.*Remove empty"):
        lobe(torch.randn(2, 8000), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="Clip 0 of the batch is empty"):
        lobe(torch.randn(1, 0))


def test_speedup_is_reported():
    result = measure_speedup(batch=2, seconds=1.0, repeats=2)
    print(f"Whisper tiny, 1 s clips: speed-up x{result['speedup']:.1f}")
    assert result["full_ms"] > 0 and result["trimmed_ms"] > 0
