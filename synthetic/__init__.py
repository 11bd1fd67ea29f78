"""Built-in tiny data sets (in each corpus' official layout) and tiny random
backbones saved with ``save_pretrained``, so that tests and ``make demo`` run
without any network.

Command line::

    python -m synthetic KIND OUT_DIR

The kinds and the functions that write them are listed in
:data:`GENERATORS`. Every generator is ``fn(out_dir, seed=0, **options)``: it
writes into ``out_dir`` (created), draws from ``seed`` and returns ``out_dir``.

Authors
 * speechbrain-moe contributors 2026
"""

import importlib

#: kind -> "module:function" writing it (``fn(out_dir, **options)``).
GENERATORS = {
    "esc50": "synthetic.datasets:make_esc50",
    "us8k": "synthetic.datasets:make_us8k",
    "gsc": "synthetic.datasets:make_gsc",
    "fsc": "synthetic.datasets:make_fsc",
    "librispeech": "synthetic.librispeech:make_librispeech",
    "tiny-llm": "synthetic.llm:make_tiny_llm",
    "tiny-ast": "synthetic.models:make_tiny_ast",
    "tiny-whisper": "synthetic.models:make_tiny_whisper",
    "tiny-wavlm": "synthetic.models:make_tiny_wavlm",
}


def generate(kind, out_dir, **options):
    """Writes the data set or model ``kind`` into ``out_dir``.

    Arguments
    ---------
    kind : str
        One of :data:`GENERATORS`.
    out_dir : str
        Target folder (created).
    **options
        Generator options (e.g. ``seed``).

    Returns
    -------
    str
        The folder written.

    Example
    -------
    >>> generate("esc5O", "out")
    Traceback (most recent call last):
    ...
    ValueError: Unknown synthetic kind 'esc5O'; choose one of ['esc50', ...
    """
    if kind not in GENERATORS:
        raise ValueError(
            f"Unknown synthetic kind {kind!r}; choose one of {sorted(GENERATORS)}."
        )
    module, name = GENERATORS[kind].split(":")
    return getattr(importlib.import_module(module), name)(out_dir, **options)
