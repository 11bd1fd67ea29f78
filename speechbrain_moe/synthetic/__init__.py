"""Built-in tiny data sets (in each corpus' official layout) and tiny random
backbones saved with ``save_pretrained``, so that tests and ``make demo`` run
without any network.

Command line::

    python -m speechbrain_moe.synthetic KIND OUT_DIR

Each module of this package registers its generators in :data:`GENERATORS`
(kind -> ``fn(out_dir, **options)``).

Authors
 * speechbrain-moe contributors 2026
"""

import importlib

GENERATORS = {}
_MODULES = (
    "speechbrain_moe.synthetic.datasets",
    "speechbrain_moe.synthetic.models",
    "speechbrain_moe.synthetic.librispeech",
    "speechbrain_moe.synthetic.llm",
)


def register_generator(kind):
    """Registers a generator ``fn(out_dir, **options)`` under ``kind``.

    Arguments
    ---------
    kind : str
        Name used on the command line.

    Returns
    -------
    callable
        Decorator.

    Example
    -------
    >>> @register_generator("doc-example")
    ... def make(out_dir):
    ...     return out_dir
    >>> GENERATORS["doc-example"]("x")
    'x'
    """

    def decorate(fn):
        """Registers ``fn``."""
        GENERATORS[kind] = fn
        return fn

    return decorate


def available_generators():
    """Sorted kinds that :func:`generate` accepts.

    Returns
    -------
    list of str
    """
    for module in _MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as err:
            if err.name != module:
                raise
    return sorted(k for k in GENERATORS if k != "doc-example")


def generate(kind, out_dir, **options):
    """Writes the data set or model ``kind`` into ``out_dir``.

    Arguments
    ---------
    kind : str
        One of :func:`available_generators`.
    out_dir : str
        Target folder (created).
    **options
        Generator options (e.g. ``seed``).

    Returns
    -------
    str
        The folder written.
    """
    kinds = available_generators()
    if kind not in GENERATORS:
        raise ValueError(f"Unknown synthetic kind {kind!r}; choose one of {kinds}.")
    return GENERATORS[kind](out_dir, **options)
