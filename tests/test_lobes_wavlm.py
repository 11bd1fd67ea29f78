"""wav2vec2-family lobe: normalisation and masks as Hugging Face computes them,
LayerNorm targets of post-LN and pre-LN layers, methods inside WavLM."""

import pytest
import torch

from speechbrain_moe.lobes.base import masked_mean
from speechbrain_moe.lobes.wavlm import SSLEncoder, WavLM
from speechbrain_moe.petl import apply_method
from speechbrain_moe.synthetic.models import TINY_WAVLM, make_tiny_wavlm


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_tiny_wavlm(str(tmp_path_factory.mktemp("tiny_wavlm")))


def test_matches_hugging_face_pipeline(folder):
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
        expected = ref(inputs.input_values, attention_mask=inputs.attention_mask)
    lengths = ref._get_feat_extract_output_lengths(torch.tensor([16000, 9600]))
    assert mask.sum(1).tolist() == lengths.tolist() == [49, 29]
    torch.testing.assert_close(
        hidden[mask], expected.last_hidden_state[mask], atol=1e-5, rtol=1e-5
    )


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
