"""CTranslate2 (faster-whisper) Whisper -> Hugging Face Whisper folder.

The faster-whisper folder (``model.bin``, ``config.json``, ``tokenizer.json``,
``vocabulary.txt``) is turned into a folder that
``WhisperForConditionalGeneration.from_pretrained`` and
``WhisperProcessor.from_pretrained`` load: ``config.json``,
``generation_config.json``, ``model.safetensors`` (float32), the tokenizer
files and ``preprocessor_config.json``.

Name mapping (CTranslate2 -> transformers), per layer ``i``:

- ``encoder/layer_i/self_attention/linear_0`` (fused q, k, v; the k bias is
  zero) -> ``model.encoder.layers.i.self_attn.{q,k,v}_proj`` (``k_proj`` has
  no bias), ``linear_1`` -> ``out_proj``, ``layer_norm`` ->
  ``self_attn_layer_norm``;
- ``.../ffn/linear_0``, ``linear_1``, ``layer_norm`` -> ``fc1``, ``fc2``,
  ``final_layer_norm``;
- decoder cross-attention ``decoder/layer_i/attention``: ``linear_0`` (q),
  ``linear_1`` (fused k, v), ``linear_2`` (out), ``layer_norm`` ->
  ``encoder_attn.*`` and ``encoder_attn_layer_norm``;
- ``encoder/position_encodings/encodings`` ->
  ``model.encoder.embed_positions.weight`` (same for the decoder),
  ``decoder/embeddings/weight`` -> ``model.decoder.embed_tokens.weight`` (the
  output projection is tied to it), ``{encoder,decoder}/layer_norm`` ->
  ``model.{encoder,decoder}.layer_norm``; LayerNorm ``gamma``/``beta`` ->
  ``weight``/``bias``.

Authors
 * speechbrain-moe contributors 2026
"""

import json
import os
import shutil

import numpy as np

from tools.real_assets.ct2 import read_model_bin

# Special token ids of the English-only Whisper checkpoints (tiny.en ... medium.en).
ENGLISH_ONLY_IDS = {
    "eos": 50256,
    "start_of_transcript": 50257,
    "translate": 50358,
    "transcribe": 50359,
    "start_of_lm": 50360,
    "start_of_prev": 50361,
    "no_timestamps": 50362,
}
ENGLISH_ONLY_VOCAB = 51864
# Published dimensions of tiny.en, checked against what model.bin holds.
TINY_EN = {
    "d_model": 384,
    "encoder_layers": 4,
    "decoder_layers": 4,
    "encoder_attention_heads": 6,
    "decoder_attention_heads": 6,
    "vocab_size": 51864,
}


def _layer_count(model, prefix):
    """Number of ``<prefix>/layer_<i>/`` blocks in a CTranslate2 model."""
    count = 0
    while f"{prefix}/layer_{count}/ffn/linear_0/weight" in model:
        count += 1
    return count


def _norm(model, src, dst, out):
    out[f"{dst}.weight"] = model[f"{src}/gamma"]
    out[f"{dst}.bias"] = model[f"{src}/beta"]


def _linear(model, src, dst, out):
    out[f"{dst}.weight"] = model[f"{src}/weight"]
    out[f"{dst}.bias"] = model[f"{src}/bias"]


def _split(model, src, dsts, out):
    """A fused projection split into equal parts (no bias for ``k_proj``)."""
    weights = np.split(model[f"{src}/weight"], len(dsts), axis=0)
    biases = np.split(model[f"{src}/bias"], len(dsts), axis=0)
    for dst, weight, bias in zip(dsts, weights, biases):
        out[f"{dst}.weight"] = weight
        if dst.endswith("k_proj"):
            if np.any(bias != 0):
                raise ValueError(
                    f"{src}: the key part of the fused bias is not zero, but "
                    "Whisper's k_proj has no bias; this is not a Whisper "
                    "CTranslate2 model."
                )
        else:
            out[f"{dst}.bias"] = bias


def whisper_state_dict(model):
    """The transformers ``WhisperForConditionalGeneration`` state dict.

    Arguments
    ---------
    model : tools.real_assets.ct2.CT2Model
        A CTranslate2 ``WhisperSpec`` model.

    Returns
    -------
    dict
        transformers parameter name -> float32 numpy array (the tied
        ``proj_out.weight`` is left out: transformers ties it on load).

    Example
    -------
    >>> from tools.real_assets.ct2 import CT2Model
    >>> arrays = fake_whisper_arrays(d=8, layers=1, vocab=5)
    >>> state = whisper_state_dict(CT2Model("WhisperSpec", 3, arrays, {}))
    >>> state["model.encoder.layers.0.self_attn.k_proj.weight"].shape
    (8, 8)
    >>> "model.encoder.layers.0.self_attn.k_proj.bias" in state
    False
    """
    if model.spec != "WhisperSpec":
        raise ValueError(
            f"The CTranslate2 model is a {model.spec}, not a WhisperSpec: give the "
            "folder of a faster-whisper model (model.bin, config.json, ...)."
        )
    out = {}
    for part in ("encoder", "decoder"):
        _norm(model, f"{part}/layer_norm", f"model.{part}.layer_norm", out)
        out[f"model.{part}.embed_positions.weight"] = model[
            f"{part}/position_encodings/encodings"
        ]
    for conv in ("conv1", "conv2"):
        _linear(model, f"encoder/{conv}", f"model.encoder.{conv}", out)
    out["model.decoder.embed_tokens.weight"] = model["decoder/embeddings/weight"]
    for part in ("encoder", "decoder"):
        for i in range(_layer_count(model, part)):
            src, dst = f"{part}/layer_{i}", f"model.{part}.layers.{i}"
            attn = f"{src}/self_attention"
            _norm(model, f"{attn}/layer_norm", f"{dst}.self_attn_layer_norm", out)
            _split(
                model,
                f"{attn}/linear_0",
                [f"{dst}.self_attn.{p}_proj" for p in "qkv"],
                out,
            )
            _linear(model, f"{attn}/linear_1", f"{dst}.self_attn.out_proj", out)
            if part == "decoder":
                cross = f"{src}/attention"
                _norm(
                    model,
                    f"{cross}/layer_norm",
                    f"{dst}.encoder_attn_layer_norm",
                    out,
                )
                _linear(model, f"{cross}/linear_0", f"{dst}.encoder_attn.q_proj", out)
                _split(
                    model,
                    f"{cross}/linear_1",
                    [f"{dst}.encoder_attn.{p}_proj" for p in "kv"],
                    out,
                )
                _linear(model, f"{cross}/linear_2", f"{dst}.encoder_attn.out_proj", out)
            _norm(model, f"{src}/ffn/layer_norm", f"{dst}.final_layer_norm", out)
            _linear(model, f"{src}/ffn/linear_0", f"{dst}.fc1", out)
            _linear(model, f"{src}/ffn/linear_1", f"{dst}.fc2", out)
    return {name: np.asarray(a, dtype=np.float32) for name, a in out.items()}


def whisper_config_dict(model, ct2_config):
    """The transformers ``WhisperConfig`` fields of a CTranslate2 Whisper.

    Dimensions are read from the arrays; token ids and suppression lists from
    CTranslate2's ``config.json``.

    Arguments
    ---------
    model : tools.real_assets.ct2.CT2Model
        A CTranslate2 ``WhisperSpec`` model.
    ct2_config : dict
        CTranslate2's ``config.json`` (``suppress_ids``,
        ``suppress_ids_begin``, ``lang_ids``, ``alignment_heads``).

    Returns
    -------
    dict
        Keyword arguments of ``transformers.WhisperConfig``.

    Example
    -------
    >>> from tools.real_assets.ct2 import CT2Model
    >>> arrays = fake_whisper_arrays(d=8, layers=1, vocab=5)
    >>> cfg = whisper_config_dict(CT2Model("WhisperSpec", 3, arrays, {}), {})
    >>> cfg["d_model"], cfg["encoder_layers"], cfg["num_mel_bins"]
    (8, 1, 80)
    """
    vocab, d_model = model["decoder/embeddings/weight"].shape
    if vocab > ENGLISH_ONLY_VOCAB:
        raise ValueError(
            f"The Whisper model has a vocabulary of {vocab} tokens: a multilingual "
            "checkpoint. tools/real_assets/whisper.py converts the English-only "
            f"ones (vocabulary {ENGLISH_ONLY_VOCAB} or less, e.g. tiny.en); add the "
            "multilingual special ids to ENGLISH_ONLY_IDS' neighbour to convert it."
        )
    ids = ENGLISH_ONLY_IDS
    return {
        "vocab_size": int(vocab),
        "num_mel_bins": int(model["encoder/conv1/weight"].shape[1]),
        "d_model": int(d_model),
        "encoder_layers": _layer_count(model, "encoder"),
        "decoder_layers": _layer_count(model, "decoder"),
        "encoder_attention_heads": model.scalar("encoder/num_heads"),
        "decoder_attention_heads": model.scalar("decoder/num_heads"),
        "encoder_ffn_dim": int(model["encoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "decoder_ffn_dim": int(model["decoder/layer_0/ffn/linear_0/weight"].shape[0]),
        "max_source_positions": int(
            model["encoder/position_encodings/encodings"].shape[0]
        ),
        "max_target_positions": int(
            model["decoder/position_encodings/encodings"].shape[0]
        ),
        "activation_function": "gelu",
        "scale_embedding": False,
        "pad_token_id": ids["eos"],
        "bos_token_id": ids["start_of_transcript"],
        "eos_token_id": ids["eos"],
        "decoder_start_token_id": ids["start_of_transcript"],
        "suppress_tokens": list(ct2_config.get("suppress_ids", [])),
        "begin_suppress_tokens": list(
            ct2_config.get("suppress_ids_begin", [220, ids["eos"]])
        ),
        "tie_word_embeddings": True,
    }


def whisper_generation_config_dict(config, ct2_config):
    """``generation_config.json`` fields of an English-only Whisper.

    Arguments
    ---------
    config : dict
        Output of :func:`whisper_config_dict`.
    ct2_config : dict
        CTranslate2's ``config.json``.

    Returns
    -------
    dict
        Keyword arguments of ``transformers.GenerationConfig``.

    Example
    -------
    >>> gen = whisper_generation_config_dict({"max_target_positions": 448,
    ...     "suppress_tokens": [1], "begin_suppress_tokens": [220]}, {})
    >>> gen["no_timestamps_token_id"], gen["is_multilingual"]
    (50362, False)
    """
    ids = ENGLISH_ONLY_IDS
    return {
        "decoder_start_token_id": ids["start_of_transcript"],
        "bos_token_id": ids["start_of_transcript"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["eos"],
        "max_length": config["max_target_positions"],
        "suppress_tokens": config["suppress_tokens"],
        "begin_suppress_tokens": config["begin_suppress_tokens"],
        "no_timestamps_token_id": ids["no_timestamps"],
        "prev_sot_token_id": ids["start_of_prev"],
        "is_multilingual": False,
        "alignment_heads": [list(h) for h in ct2_config.get("alignment_heads", [])],
        "max_initial_timestamp_index": 50,
        "return_timestamps": False,
    }


def build_whisper_tokenizer(ct2_folder, normalizer_file=None):
    """A ``WhisperTokenizer`` rebuilt from faster-whisper's tokenizer files.

    ``tokenizer.json`` holds the byte-level BPE (vocabulary and merges) and
    the special tokens up to ``<|notimestamps|>``; the timestamp tokens that
    follow (``<|0.00|>`` ... ``<|30.00|>``) are taken from ``vocabulary.txt``
    (one token a line, line number = id).

    Arguments
    ---------
    ct2_folder : str
        The faster-whisper folder.
    normalizer_file : str, optional
        Whisper's English spelling normaliser (``english.json`` of the
        ``openai-whisper`` package; saved as ``normalizer.json``), which
        ``tokenizer.normalize`` needs.

    Returns
    -------
    transformers.WhisperTokenizer
        With ids matching the model's embedding rows.

    Example
    -------
    >>> tok = build_whisper_tokenizer(whisper_source())  # doctest: +SKIP
    >>> tok.convert_tokens_to_ids("<|notimestamps|>")  # doctest: +SKIP
    50362
    """
    from transformers import AddedToken, WhisperTokenizer

    with open(os.path.join(ct2_folder, "tokenizer.json"), encoding="utf-8") as fin:
        spec = json.load(fin)
    bpe = spec["model"]
    merges = [
        tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in bpe["merges"]
    ]
    tokenizer = WhisperTokenizer(
        vocab=dict(bpe["vocab"]), merges=merges, normalizer_file=normalizer_file
    )
    added = {item["id"]: item for item in spec["added_tokens"]}
    vocab_path = os.path.join(ct2_folder, "vocabulary.txt")
    with open(vocab_path, encoding="utf-8") as fin:
        lines = [line.rstrip("\n") for line in fin]
    start = len(bpe["vocab"])
    for token_id in range(start, len(lines)):
        item = added.get(token_id)
        content = item["content"] if item else lines[token_id]
        special = bool(item["special"]) if item else False
        tokenizer.add_tokens(
            [
                AddedToken(
                    content,
                    lstrip=False,
                    rstrip=False,
                    normalized=False,
                    special=special,
                )
            ],
            special_tokens=special,
        )
        got = tokenizer.convert_tokens_to_ids(content)
        if got != token_id:
            raise ValueError(
                f"{vocab_path}: token {content!r} should have id {token_id} but the "
                f"rebuilt tokenizer gives {got}; tokenizer.json and vocabulary.txt "
                "do not belong together."
            )
    return tokenizer


def convert_whisper(ct2_folder, out_folder, normalizer_file=None):
    """Writes a transformers Whisper folder (float32) from a faster-whisper one.

    Arguments
    ---------
    ct2_folder : str
        Folder with ``model.bin``, ``config.json``, ``tokenizer.json`` and
        ``vocabulary.txt``.
    out_folder : str
        Output folder; loadable with
        ``WhisperForConditionalGeneration.from_pretrained`` and
        ``WhisperProcessor.from_pretrained``.
    normalizer_file : str, optional
        Whisper's English spelling normaliser (see
        :func:`build_whisper_tokenizer`).

    Returns
    -------
    str
        ``out_folder``.

    Example
    -------
    >>> convert_whisper(whisper_source(), "whisper-tiny.en")  # doctest: +SKIP
    'whisper-tiny.en'
    """
    import torch
    from transformers import (
        GenerationConfig,
        WhisperConfig,
        WhisperFeatureExtractor,
        WhisperForConditionalGeneration,
        WhisperProcessor,
    )

    model_bin = read_model_bin(os.path.join(ct2_folder, "model.bin"))
    with open(os.path.join(ct2_folder, "config.json"), encoding="utf-8") as fin:
        ct2_config = json.load(fin)
    fields = whisper_config_dict(model_bin, ct2_config)
    config = WhisperConfig(**fields)
    state = {
        k: torch.from_numpy(v.copy()) for k, v in whisper_state_dict(model_bin).items()
    }
    with torch.device("meta"):
        model = WhisperForConditionalGeneration(config)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    missing = [k for k in missing if k != "proj_out.weight"]
    if missing or unexpected:
        raise ValueError(
            f"Converting {ct2_folder}: parameters missing {missing}, unexpected "
            f"{unexpected}; the CTranslate2 layout differs from the one "
            "tools/real_assets/whisper.py maps."
        )
    model.tie_weights()
    model.generation_config = GenerationConfig(
        **whisper_generation_config_dict(fields, ct2_config)
    )
    model.eval()
    model.save_pretrained(out_folder)
    extractor = WhisperFeatureExtractor(feature_size=fields["num_mel_bins"])
    processor = WhisperProcessor(
        feature_extractor=extractor,
        tokenizer=build_whisper_tokenizer(ct2_folder, normalizer_file),
    )
    processor.save_pretrained(out_folder)
    if normalizer_file:
        # WhisperTokenizer reads normalizer.json when it loads, but its
        # save_pretrained (transformers 5) writes only tokenizer.json.
        shutil.copyfile(normalizer_file, os.path.join(out_folder, "normalizer.json"))
    # preprocessor_config.json too, for readers that look for the feature
    # extractor alone (WhisperFeatureExtractor.from_pretrained in transformers 4).
    extractor.save_pretrained(out_folder)
    return out_folder


def fake_whisper_arrays(d=8, layers=1, vocab=5, mels=80, heads=2, ffn=16):
    """Random arrays named like a CTranslate2 ``WhisperSpec`` (for tests).

    Arguments
    ---------
    d : int
        Model width.
    layers : int
        Encoder and decoder layers.
    vocab : int
        Vocabulary size.
    mels : int
        Mel bins.
    heads : int
        Attention heads.
    ffn : int
        Feed-forward width.

    Returns
    -------
    dict
        Name -> float16 (or int16 for head counts) numpy array.

    Example
    -------
    >>> arrays = fake_whisper_arrays()
    >>> arrays["encoder/layer_0/self_attention/linear_0/weight"].shape
    (24, 8)
    """
    rng = np.random.default_rng(0)

    def rand(*shape):
        return rng.standard_normal(shape).astype(np.float16)

    arrays = {
        "encoder/num_heads": np.array(heads, np.int16),
        "decoder/num_heads": np.array(heads, np.int16),
        "encoder/conv1/weight": rand(d, mels, 3),
        "encoder/conv1/bias": rand(d),
        "encoder/conv2/weight": rand(d, d, 3),
        "encoder/conv2/bias": rand(d),
        "encoder/position_encodings/encodings": rand(12, d),
        "decoder/position_encodings/encodings": rand(6, d),
        "decoder/embeddings/weight": rand(vocab, d),
    }
    for part in ("encoder", "decoder"):
        arrays[f"{part}/layer_norm/gamma"] = rand(d)
        arrays[f"{part}/layer_norm/beta"] = rand(d)
        for i in range(layers):
            blocks = {"self_attention": {"linear_0": 3 * d, "linear_1": d}}
            if part == "decoder":
                blocks["attention"] = {"linear_0": d, "linear_1": 2 * d, "linear_2": d}
            blocks["ffn"] = {"linear_0": ffn, "linear_1": d}
            for block, linears in blocks.items():
                prefix = f"{part}/layer_{i}/{block}"
                arrays[f"{prefix}/layer_norm/gamma"] = rand(d)
                arrays[f"{prefix}/layer_norm/beta"] = rand(d)
                for name, rows in linears.items():
                    cols = ffn if (block == "ffn" and name == "linear_1") else d
                    arrays[f"{prefix}/{name}/weight"] = rand(rows, cols)
                    bias = rand(rows)
                    if name == "linear_0" and block == "self_attention":
                        bias[d : 2 * d] = 0
                    if name == "linear_1" and block == "attention":
                        bias[:d] = 0
                    arrays[f"{prefix}/{name}/bias"] = bias
    return arrays
