"""Batch invariance of the backbone lobes: a clip encoded alone and the same
clip batched with longer (and shorter) ones give the same valid frames and the
same pooled embedding, in eval mode, with and without adapters inside.

Run as a script to print the measured relative differences::

    PYTHONPATH=. python tests/test_batch_invariance.py
"""

import pytest
import torch
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.adapters import SoftMoA
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.wavlm import SSLEncoder, WavLM
from speechbrain_moe.lobes.whisper import Whisper
from speechbrain_moe.petl import apply_method
from speechbrain_moe.placement import ParallelAdapter
from synthetic.models import (
    TINY_WAVLM,
    make_tiny_ast,
    make_tiny_wavlm,
    make_tiny_whisper,
)

TOLERANCE = 1e-4
# 4 s, ~1 s and ~2.3 s; odd lengths exercise every rounding of the front ends.
CLIP_SAMPLES = (64000, 16037, 37123)
NOT_WAVLM = ("num_buckets", "max_bucket_distance")


def make_ssl(folder, kind, norm):
    """Saves a tiny HuBERT or wav2vec2 with the given ``feat_extract_norm``."""
    from transformers import (
        HubertConfig,
        HubertModel,
        Wav2Vec2Config,
        Wav2Vec2FeatureExtractor,
        Wav2Vec2Model,
    )

    config_cls, model_cls = {
        "hubert": (HubertConfig, HubertModel),
        "wav2vec2": (Wav2Vec2Config, Wav2Vec2Model),
    }[kind]
    cfg = {k: v for k, v in TINY_WAVLM.items() if k not in NOT_WAVLM}
    torch.manual_seed(0)
    config = config_cls(
        **cfg, feat_extract_norm=norm, do_stable_layer_norm=norm == "layer"
    )
    model_cls(config).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, do_normalize=True, return_attention_mask=norm == "layer"
    ).save_pretrained(folder)
    return folder


def eager(lobe):
    """The lobe with Hugging Face's eager attention (additive float masks)."""
    lobe.model.set_attn_implementation("eager")
    return lobe


BUILDERS = {
    "whisper": lambda d: Whisper(make_tiny_whisper(d)),
    "whisper-eager": lambda d: eager(Whisper(make_tiny_whisper(d))),
    "wavlm-group": lambda d: WavLM(make_tiny_wavlm(d)),
    "wavlm-layer": lambda d: WavLM(
        make_tiny_wavlm(d, do_stable_layer_norm=True, feat_extract_norm="layer")
    ),
    "hubert-group": lambda d: SSLEncoder(make_ssl(d, "hubert", "group")),
    "wav2vec2-group": lambda d: SSLEncoder(make_ssl(d, "wav2vec2", "group")),
    "wav2vec2-layer": lambda d: SSLEncoder(make_ssl(d, "wav2vec2", "layer")),
    "hubert-group-eager": lambda d: eager(SSLEncoder(make_ssl(d, "hubert", "group"))),
    "ast": lambda d: AST(make_tiny_ast(d), max_frames=500),
}


def soft_moa_inside(lobe):
    """Soft-MoA in parallel to every attention block (mask-aware)."""
    lobe.model = AdaptedModel(
        lobe.model,
        ParallelAdapter,
        target_layers=list(lobe.petl_targets.attention),
        adapter_kwargs={
            "adapter": SoftMoA,
            "adapter_kwargs": {"num_experts": 4, "bottleneck": 2},
        },
    )
    return lobe


ADAPTERS = {
    None: lambda lobe: lobe,
    "soft_moa": soft_moa_inside,
    "lora": lambda lobe: apply_method(lobe, "lora", {"rank": 2}),
    "prompt": lambda lobe: apply_method(lobe, "prompt", {"num_prompts": 3}),
    "prefix": lambda lobe: apply_method(lobe, "prefix", {"num_prefix": 3}),
}


def build(name, adapter, folder):
    """The lobe ``name`` with ``adapter`` inside, in eval mode, with the
    trainable weights moved away from their (often zero) initial values."""
    torch.manual_seed(1)
    lobe = ADAPTERS[adapter](BUILDERS[name](folder))
    if adapter is not None:
        with torch.no_grad():
            for param in lobe.parameters():
                if param.requires_grad:
                    param.add_(0.2 * torch.randn_like(param))
    return lobe.eval()


def relative(a, b):
    """Largest absolute difference, relative to the largest value of ``b``."""
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-12))


def batch_differences(lobe, clip_samples=CLIP_SAMPLES, seed=0):
    """Relative differences between each clip encoded alone and batched.

    The padded region of the batch holds noise (not zeros), so that any
    leak of padding into valid frames shows.

    Returns
    -------
    tuple of float
        Largest relative difference of the valid frames of ``encode`` and of
        the pooled ``forward`` over the clips.
    """
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.tensor(clip_samples)
    total = int(lengths.max())
    wavs = torch.randn(len(clip_samples), total, generator=generator)
    clips = [0.1 * torch.randn(n, generator=generator) for n in clip_samples]
    for i, clip in enumerate(clips):
        wavs[i, : len(clip)] = clip
    with torch.no_grad():
        hidden, mask = lobe.encode(wavs, lengths / total)
        pooled = lobe(wavs, lengths / total)
        frames, pools = [], []
        for i, clip in enumerate(clips):
            alone, alone_mask = lobe.encode(clip.unsqueeze(0))
            assert int(mask[i].sum()) == int(alone_mask[0].sum()), "valid frames"
            frames.append(relative(hidden[i][mask[i]], alone[0][alone_mask[0]]))
            pools.append(relative(pooled[i], lobe(clip.unsqueeze(0))[0]))
    return max(frames), max(pools)


CASES = [
    *((name, None) for name in BUILDERS),
    ("whisper", "soft_moa"),
    ("whisper", "lora"),
    ("whisper", "prompt"),
    ("whisper", "prefix"),
    ("wavlm-group", "soft_moa"),
    ("wavlm-group", "lora"),
    ("wavlm-group", "prompt"),
    ("wavlm-layer", "soft_moa"),
    ("hubert-group", "soft_moa"),
    ("hubert-group", "prefix"),
    ("wav2vec2-layer", "prefix"),
    ("ast", "soft_moa"),
]


@pytest.mark.parametrize("name, adapter", CASES, ids=lambda v: str(v))
def test_clip_alone_equals_clip_in_batch(name, adapter, tmp_path):
    lobe = build(name, adapter, str(tmp_path))
    frames, pooled = batch_differences(lobe)
    assert frames <= TOLERANCE and pooled <= TOLERANCE, (frames, pooled)


def test_whisper_30s_path_unchanged(tmp_path):
    # The untrimmed path pads every clip to 30 s: batch-invariant as it is.
    lobe = Whisper(make_tiny_whisper(str(tmp_path)), trim_to_valid=False).eval()
    frames, pooled = batch_differences(lobe, clip_samples=(48000, 16037))
    assert frames <= TOLERANCE and pooled <= TOLERANCE


if __name__ == "__main__":
    import tempfile

    for name, adapter in CASES:
        lobe = build(name, adapter, tempfile.mkdtemp())
        frames, pooled = batch_differences(lobe)
        label = name + (f" + {adapter}" if adapter else "")
        print(f"{label:28s} encode {frames:.1e}  forward {pooled:.1e}")
