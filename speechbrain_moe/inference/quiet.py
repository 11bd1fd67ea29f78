"""Loading pretrained models without transformers' progress bars.

transformers (5.x) draws a "Loading weights" bar for every model it loads;
loading one inference folder builds several (an encoder, an LLM, ...), so
the bars say nothing. :func:`quiet_loading` turns them off for the duration
of a ``with`` block only, and restores the user's setting afterwards: it
never changes transformers' configuration for the rest of the program.

Authors
 * speechbrain-moe contributors 2026
"""

import contextlib


@contextlib.contextmanager
def quiet_loading():
    """Context manager: no transformers (and Hugging Face Hub) progress bars
    inside, the previous setting restored on exit (also on an error).

    Returns
    -------
    contextlib.AbstractContextManager

    Example
    -------
    >>> from transformers.utils import logging as hf_logging
    >>> before = hf_logging.is_progress_bar_enabled()
    >>> with quiet_loading():
    ...     hf_logging.is_progress_bar_enabled()
    False
    >>> hf_logging.is_progress_bar_enabled() == before
    True
    """
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()
