"""The dtype a pretrained model is loaded in: an explicit setting, not the
checkpoint's accident.

transformers 5 loads a model in its checkpoint's dtype (``dtype="auto"``): a
float16 SmolLM2 or Whisper-large folder arrives in float16, and on a CPU
float16 matrix products fall back to a slow kernel (a SmolLM2-135M training
step of batch 8 took about 35 s in float16 against 2.6 s in float32 on the
2-core development machine). The per-device choice:

- CPU: ``float32`` (the default);
- GPU: ``float32`` weights with ``--precision=bf16`` (autocast computes the
  matrix products in bfloat16), or ``bfloat16`` to halve the memory too;
- ``checkpoint``: the checkpoint's own dtype (transformers' behaviour).
"""

import torch
from speechbrain.utils.logger import get_logger

from speechbrain_moe.settings import DTYPE_NAMES

logger = get_logger(__name__)

DTYPES = dict(zip(DTYPE_NAMES, (torch.float32, torch.bfloat16, torch.float16, "auto")))


def load_dtype(dtype, setting="dtype"):
    """The ``dtype`` argument of ``from_pretrained`` for a setting's value.

    Arguments
    ---------
    dtype : str or torch.dtype
        ``float32``, ``bfloat16``, ``float16`` or ``checkpoint`` (or a
        ``torch.dtype`` of the first three).
    setting : str
        The setting's name, for the error message.

    Returns
    -------
    torch.dtype or str
        A ``torch.dtype``, or ``"auto"`` for ``checkpoint``.

    Example
    -------
    >>> load_dtype("float32"), load_dtype("checkpoint")
    (torch.float32, 'auto')
    >>> load_dtype("fp16", "llm_dtype")
    Traceback (most recent call last):
    ...
    ValueError: llm_dtype must be one of float32, bfloat16, float16, checkpoint, got 'fp16'. float32 on CPU; on GPU float32 with --precision=bf16, or bfloat16 to halve the memory; checkpoint keeps the checkpoint's dtype.
    """
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if dtype not in DTYPES:
        raise ValueError(
            f"{setting} must be one of {', '.join(DTYPES)}, got {dtype!r}. float32 "
            "on CPU; on GPU float32 with --precision=bf16, or bfloat16 to halve the "
            "memory; checkpoint keeps the checkpoint's dtype."
        )
    return DTYPES[dtype]


def log_loaded(what, source, model, config_dtype=None):
    """Logs (INFO) what was loaded: source, dtype, parameter count; warns when
    half-precision weights sit on a CPU (slow kernels).

    Arguments
    ---------
    what : str
        ``LLM``, ``encoder``, ...
    source : str
        Hub id or folder it came from.
    model : torch.nn.Module
        The loaded model.
    config_dtype : torch.dtype or str, optional
        The checkpoint's dtype (from its config), when known.

    Returns
    -------
    str
        The logged line.

    Example
    -------
    >>> log_loaded("LLM", "tiny", torch.nn.Linear(4, 2), "float16")
    'LLM tiny: 10 parameters (0.0M) in float32 on cpu (checkpoint dtype float16)'
    """
    param = next(model.parameters())
    count = sum(p.numel() for p in model.parameters())
    stored = str(config_dtype).replace("torch.", "") if config_dtype else "unknown"
    dtype = str(param.dtype).replace("torch.", "")
    line = (
        f"{what} {source}: {count} parameters ({count / 1e6:.1f}M) in {dtype} on "
        f"{param.device.type} (checkpoint dtype {stored})"
    )
    logger.info(line)
    if param.device.type == "cpu" and param.dtype in (torch.float16, torch.bfloat16):
        logger.warning(
            "%s %s is in %s on the CPU, where half-precision matrix products are "
            "slow (about 13x slower than float32 measured); set its dtype setting "
            "to float32 for CPU runs.",
            what,
            source,
            dtype,
        )
    return line
