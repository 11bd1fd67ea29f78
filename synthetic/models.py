"""Tiny random backbones saved with ``save_pretrained``: ``tiny-ast``,
``tiny-whisper``, ``tiny-wavlm``.

Each folder holds the model's ``config.json`` and weights plus the
``preprocessor_config.json`` of its feature extractor, so that the lobes of
:mod:`speechbrain_moe.lobes` load it offline exactly as they load a hub
checkpoint. The models are random (they learn nothing by themselves) and small
enough for tests and ``make demo`` on a laptop CPU.

Command line::

    python -m synthetic tiny-whisper /tmp/tiny_whisper

Authors
 * speechbrain-moe contributors 2026
"""

import os

import torch

TINY_AST = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    max_length=100,
)
TINY_WHISPER = dict(
    d_model=32,
    encoder_layers=2,
    encoder_attention_heads=2,
    encoder_ffn_dim=64,
    decoder_layers=1,
    decoder_attention_heads=2,
    decoder_ffn_dim=64,
    vocab_size=128,
    max_target_positions=32,
    num_mel_bins=80,
    max_source_positions=1500,
    pad_token_id=0,
    bos_token_id=1,
    eos_token_id=2,
    decoder_start_token_id=1,
)
TINY_WAVLM = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=64,
    conv_dim=(16,) * 7,
    num_conv_pos_embeddings=16,
    num_conv_pos_embedding_groups=2,
    num_buckets=32,
    max_bucket_distance=64,
)


def make_tiny_ast(folder, seed=0, **cfg):
    """Saves a tiny random ``ASTModel`` (and its feature-extractor config).

    Unlike a fresh ``ASTModel``, the position embeddings and the two special
    tokens are random (Hugging Face initialises them to zeros), as in a
    trained checkpoint.

    Arguments
    ---------
    **cfg
        ``ASTConfig`` overrides (defaults: hidden 32, 2 layers, 2 heads,
        ``max_length`` 100).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.lobes.ast import AST
    >>> folder = make_tiny_ast(tempfile.mkdtemp())
    >>> AST(folder, max_frames=100).output_size
    32
    """
    from transformers import ASTConfig, ASTFeatureExtractor, ASTModel

    settings = {**TINY_AST, **cfg}
    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    model = ASTModel(ASTConfig(**settings))
    # Hugging Face initialises these to zeros; a trained checkpoint's are not,
    # and tests must be able to tell adapted embeddings from zeros.
    with torch.no_grad():
        for param in (
            model.embeddings.position_embeddings,
            model.embeddings.cls_token,
            model.embeddings.distillation_token,
        ):
            param.normal_(std=0.02)
    model.save_pretrained(folder)
    ASTFeatureExtractor(
        num_mel_bins=settings.get("num_mel_bins", 128),
        max_length=settings["max_length"],
    ).save_pretrained(folder)
    return folder


def make_tiny_whisper(folder, seed=0, **cfg):
    """Saves a tiny random ``WhisperModel`` (and its feature-extractor config).

    The encoder keeps Whisper's real geometry (80 mel bins, 1500 encoder
    frames = 30 s) with a width of 32 and 2 layers.

    Arguments
    ---------
    **cfg
        ``WhisperConfig`` overrides.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.lobes.whisper import Whisper
    >>> folder = make_tiny_whisper(tempfile.mkdtemp())
    >>> Whisper(folder).output_size
    32
    """
    from transformers import WhisperConfig, WhisperFeatureExtractor, WhisperModel

    settings = {**TINY_WHISPER, **cfg}
    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    WhisperModel(WhisperConfig(**settings)).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=settings["num_mel_bins"]).save_pretrained(
        folder
    )
    return folder


def make_tiny_wavlm(folder, seed=0, **cfg):
    """Saves a tiny random ``WavLMModel`` (and its feature-extractor config).

    The convolutional front end keeps WavLM's strides (320 samples per
    frame, 20 ms); the transformer has width 32 and 2 layers. The
    feature-extractor config asks, as ``microsoft/wavlm-base-plus`` does,
    for an attention mask; ``do_normalize`` is on.

    Arguments
    ---------
    **cfg
        ``WavLMConfig`` overrides (e.g. ``do_stable_layer_norm=True,
        feat_extract_norm="layer"`` for a pre-LN "large"-style model).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.lobes.wavlm import WavLM
    >>> folder = make_tiny_wavlm(tempfile.mkdtemp())
    >>> WavLM(folder).output_size
    32
    """
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    settings = {**TINY_WAVLM, **cfg}
    torch.manual_seed(seed)
    os.makedirs(folder, exist_ok=True)
    WavLMModel(WavLMConfig(**settings)).save_pretrained(folder)
    Wav2Vec2FeatureExtractor(
        feature_size=1, do_normalize=True, return_attention_mask=True
    ).save_pretrained(folder)
    return folder
