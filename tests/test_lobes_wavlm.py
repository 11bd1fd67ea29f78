"""wav2vec2-family lobe: normalisation and masks as Hugging Face computes them,
LayerNorm targets of post-LN and pre-LN layers, methods inside WavLM."""

import pytest
import torch

from speechbrain_moe.lobes.base import masked_mean
from speechbrain_moe.lobes.wavlm import SSLEncoder, WavLM
from speechbrain_moe.petl import apply_method
from synthetic.models import TINY_WAVLM, make_tiny_wavlm


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_wavlm(str(tmp_path_factory.mktemp("tiny_wavlm")))


def test_matches_hugging_face_pipeline(folder):
    """Each batched clip is encoded as Hugging Face encodes it alone, unpadded
    (group norm: padding would enter the first convolution's statistics)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    torch.manual_seed(0)
    lobe = WavLM(folder).eval()
    ref = WavLMModel.from_pretrained(folder).eval()
    extractor = Wav2Vec2FeatureExtractor.from_pretrained(folder)
    wavs = torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.6])
    inputs = extractor(
        [wavs[0].numpy(), wavs[1, :9600].numpy()],
        sampling_rate=16000,
        padding=True,
        return_tensors="pt",
    )
    prepared, _ = lobe.prepare(wavs, lens)
    torch.testing.assert_close(prepared, inputs.input_values, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        hidden, mask = lobe.encode(wavs, lens)
        alone = [
            ref(inputs.input_values[i : i + 1, :n]).last_hidden_state[0]
            for i, n in enumerate([16000, 9600])
        ]
    lengths = ref._get_feat_extract_output_lengths(torch.tensor([16000, 9600]))
    assert mask.sum(1).tolist() == lengths.tolist() == [49, 29]
    for i, expected in enumerate(alone):
        torch.testing.assert_close(
            hidden[i, : len(expected)], expected, atol=1e-5, rtol=1e-5
        )


def test_layer_norm_model_matches_hugging_face_batch(tmp_path):
    from transformers import WavLMModel

    folder = make_tiny_wavlm(
        str(tmp_path), do_stable_layer_norm=True, feat_extract_norm="layer"
    )
    torch.manual_seed(0)
    lobe = WavLM(folder).eval()
    ref = WavLMModel.from_pretrained(folder).eval()
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    prepared, lengths = lobe.prepare(wavs, lens)
    with torch.no_grad():
        hidden, mask = lobe.encode(wavs, lens)
        attention_mask = (torch.arange(16000) < lengths[:, None]).long()
        expected = ref(prepared, attention_mask=attention_mask).last_hidden_state
    torch.testing.assert_close(hidden[mask], expected[mask], atol=1e-5, rtol=1e-5)


def test_unmasked_pipeline_on_request(folder):
    """use_attention_mask=False: Hugging Face's pipeline for base checkpoints
    (no mask, plain group norm over the padded batch)."""
    from transformers import WavLMModel

    torch.manual_seed(0)
    lobe = WavLM(folder, use_attention_mask=False).eval()
    ref = WavLMModel.from_pretrained(folder).eval()
    wavs, lens = torch.randn(2, 16000), torch.tensor([1.0, 0.6])
    prepared, _ = lobe.prepare(wavs, lens)
    with torch.no_grad():
        hidden, _ = lobe.encode(wavs, lens)
        expected = ref(prepared).last_hidden_state
    torch.testing.assert_close(hidden, expected, atol=1e-5, rtol=1e-5)


def test_bounds(folder):
    lobe = WavLM(folder)
    assert lobe.max_duration == 30.0 and lobe.min_samples == 400
    assert WavLM(folder, max_duration=None).max_samples is None
    with pytest.raises(ValueError, match="max_duration=0.01 s is shorter"):
        WavLM(folder, max_duration=0.01)


def test_long_clip_cut_with_warning(folder, caplog):
    torch.manual_seed(0)
    lobe = WavLM(folder, max_duration=1.0).eval()
    wavs = torch.randn(2, 40000)  # 2.5 s and 0.5 s
    lens = torch.tensor([1.0, 0.2])
    with torch.no_grad(), caplog.at_level("WARNING"):
        hidden, mask = lobe.encode(wavs, lens)
        cut, _ = lobe.encode(wavs[:1, :16000])
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "Clip 0 of the batch lasts 2.50 s" in messages[0]
    assert "at most 1.00 s" in messages[0] and "max_duration" in messages[0]
    # The batch is cut to the longest clip encoded (1 s: 49 frames).
    assert hidden.shape[1] == 49 and mask.sum(1).tolist() == [49, 24]
    torch.testing.assert_close(hidden[0], cut[0], atol=1e-5, rtol=1e-5)
    uncapped = WavLM(folder, max_duration=None).eval()
    caplog.clear()
    with torch.no_grad(), caplog.at_level("WARNING"):
        assert uncapped.encode(wavs, lens)[1].sum(1).tolist() == [124, 24]
    assert not caplog.records


def test_short_clip_zero_padded(folder):
    torch.manual_seed(0)
    lobe = WavLM(folder).eval()
    short = torch.randn(1, 80)
    padded = torch.nn.functional.pad(short, (0, 320))
    batch = torch.randn(2, 8000)
    batch[1, :80] = short[0]
    with torch.no_grad():
        hidden, mask = lobe.encode(short)
        reference, _ = lobe.encode(padded)
        batched, batch_mask = lobe.encode(batch, torch.tensor([1.0, 0.01]))
    assert hidden.shape[1] == 1 and mask.tolist() == [[True]]
    torch.testing.assert_close(hidden, reference)
    assert batch_mask[1].sum() == 1
    torch.testing.assert_close(batched[1, :1], hidden[0], atol=1e-5, rtol=1e-5)


def test_empty_clip_raises(folder):
    lobe = WavLM(folder)
    with pytest.raises(ValueError, match="Clip 1 of the batch is empty.*Remove empty"):
        lobe(torch.randn(2, 8000), torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="Clip 0 of the batch is empty"):
        lobe(torch.randn(1, 0))
    with pytest.raises(ValueError, match=r"\[batch, samples\]"):
        lobe(torch.randn(8000))


def test_pooling_ignores_padding(folder):
    torch.manual_seed(0)
    lobe = WavLM(folder).eval()
    wavs = torch.randn(2, 16000)
    lens = torch.tensor([1.0, 0.5])
    noisy = wavs.clone()
    noisy[1, 8000:] = 10 * torch.randn(8000)
    with torch.no_grad():
        hidden, mask = lobe.encode(wavs, lens)
        pooled = lobe(wavs, lens)
        torch.testing.assert_close(lobe(noisy, lens), pooled)
    torch.testing.assert_close(pooled, masked_mean(hidden, mask))


def test_post_ln_targets(folder):
    targets = WavLM(folder).petl_targets
    assert targets.attention == [
        "encoder.layers.0.attention",
        "encoder.layers.1.attention",
    ]
    assert targets.attention_norm == [
        "encoder.layer_norm",
        "encoder.layers.0.final_layer_norm",
    ]
    assert targets.ffn == [
        "encoder.layers.0.feed_forward",
        "encoder.layers.1.feed_forward",
    ]
    assert targets.ffn_norm == [
        "encoder.layers.0.layer_norm",
        "encoder.layers.1.layer_norm",
    ]
    assert not targets.attention_interface


def test_pre_ln_targets(tmp_path):
    folder = make_tiny_wavlm(
        str(tmp_path), do_stable_layer_norm=True, feat_extract_norm="layer"
    )
    lobe = WavLM(folder)
    t = lobe.petl_targets
    assert t.attention_norm == [
        "encoder.layers.0.layer_norm",
        "encoder.layers.1.layer_norm",
    ]
    assert t.ffn_norm == [
        "encoder.layers.0.final_layer_norm",
        "encoder.layers.1.final_layer_norm",
    ]
    assert lobe(torch.randn(1, 8000)).shape == (1, 32)


@pytest.mark.parametrize(
    "method, settings",
    [
        ("soft_moa", {"num_experts": 4, "bottleneck": 1}),
        ("adapter", {"bottleneck": 2, "placement": "houlsby"}),
        ("lora", {"rank": 2}),
    ],
)
def test_methods_get_gradient(folder, method, settings):
    torch.manual_seed(0)
    lobe = apply_method(WavLM(folder), method, settings)
    lobe(torch.randn(2, 8000), torch.tensor([1.0, 0.5])).pow(2).sum().backward()
    trainable = {n: p for n, p in lobe.named_parameters() if p.requires_grad}
    assert trainable and all(p.grad is not None for p in trainable.values())
    assert sum(float(p.grad.abs().sum()) for p in trainable.values()) > 0


def test_lora_starts_from_pretrained_output(folder):
    torch.manual_seed(0)
    wavs = torch.randn(1, 8000)
    plain = WavLM(folder).eval()
    adapted = apply_method(WavLM(folder), "lora", {"rank": 2}).eval()
    with torch.no_grad():
        torch.testing.assert_close(adapted(wavs), plain(wavs), atol=1e-5, rtol=1e-5)


def test_prefix_refused(folder):
    with pytest.raises(ValueError, match="attention interface"):
        apply_method(WavLM(folder), "prefix", {"num_prefix": 2})


def test_hubert_through_automodel(tmp_path):
    from transformers import HubertConfig, HubertModel

    cfg = {
        k: v
        for k, v in TINY_WAVLM.items()
        if k not in ("num_buckets", "max_bucket_distance")
    }
    HubertModel(HubertConfig(**cfg)).save_pretrained(str(tmp_path))
    lobe = SSLEncoder(str(tmp_path))
    assert lobe.petl_targets.attention_interface
    assert type(lobe.model).__name__ == "HubertModel"
    apply_method(lobe, "prefix", {"num_prefix": 2})
    assert lobe(torch.randn(2, 8000), torch.tensor([1.0, 0.5])).shape == (2, 32)


def test_no_spec_augment_parameter_left_unused(folder):
    lobe = apply_method(WavLM(folder), "full_ft").train()
    lobe(torch.randn(1, 8000)).sum().backward()
    assert all(p.grad is not None for p in lobe.parameters())
