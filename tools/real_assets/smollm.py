"""GGUF (llama.cpp) causal LM -> float32 Hugging Face folder.

transformers reads GGUF files itself (``from_pretrained(folder,
gguf_file=name)``, with the ``gguf`` package) and dequantises the weights to
float; the model it returns is marked as GGUF-quantised and refuses
``save_pretrained``. The dequantised weights are therefore moved into a fresh
model of the same class built from the same configuration without the
quantisation entry, which saves as an ordinary float32 folder (about 5 s to
load, against about 20-40 s to dequantise the GGUF each time).

Authors
 * speechbrain-moe contributors 2026
"""

import os


def convert_gguf_lm(gguf_path, out_folder):
    """Writes a float32 transformers causal-LM folder (and its tokenizer).

    Arguments
    ---------
    gguf_path : str
        The ``.gguf`` file (e.g. ``SmolLM2-135M-Instruct.Q4_1.gguf``).
    out_folder : str
        Output folder, loadable with ``AutoModelForCausalLM.from_pretrained``
        and ``AutoTokenizer.from_pretrained``.

    Returns
    -------
    str
        ``out_folder``.

    Example
    -------
    >>> convert_gguf_lm("SmolLM2-135M-Instruct.Q4_1.gguf", "smollm2")  # doctest: +SKIP
    'smollm2'
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        import gguf  # noqa: F401 - transformers needs it to read the file
    except ImportError as err:
        raise ImportError(
            "Reading a GGUF file needs the `gguf` package: pip install "
            "'speechbrain-moe[real]' (or pip install gguf accelerate)."
        ) from err
    folder, name = os.path.split(os.path.abspath(gguf_path))
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    quantised = AutoModelForCausalLM.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32
    )
    fields = quantised.config.to_dict()
    fields.pop("quantization_config", None)
    fields.pop("_name_or_path", None)
    fields.pop("_model_name_or_path", None)
    config = type(quantised.config).from_dict(fields)
    with torch.device("meta"):
        model = type(quantised)(config)
    result = model.load_state_dict(quantised.state_dict(), strict=True, assign=True)
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{gguf_path}: the dequantised weights do not fit a fresh "
            f"{type(quantised).__name__} (missing {result.missing_keys}, unexpected "
            f"{result.unexpected_keys})."
        )
    model.tie_weights()
    model.generation_config = quantised.generation_config
    model.eval()
    model.save_pretrained(out_folder)
    tokenizer.save_pretrained(out_folder)
    return out_folder
