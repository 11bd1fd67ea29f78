"""Hand-written kernels, kept beside the plain PyTorch of every mixture.

Every mixture of this package (:class:`~speechbrain_moe.adapters.DenseMoA`,
:class:`~speechbrain_moe.adapters.SoftMoA`, the sparse top-k
:class:`~speechbrain_moe.adapters.SparseMoE` through
:class:`~speechbrain_moe.experts.ExpertBank`, and the bridges'
:class:`~speechbrain_moe.adapters.bridges.RecomputedMLP`) is written first
in plain PyTorch, the way its paper writes it (einsums, softmaxes,
``index_select`` / ``index_add_``), differentiated by autograd. That *plain*
path is the reference: read it to understand a method, change it to try a
variant (a SwiGLU expert, expert dropout, a noise term) without deriving any
backward pass.

This folder holds the faster versions of some of those computations, each
with a comment block saying what it computes, why it exists (the measured
gain and on which device) and how it is tested:

* :mod:`.routed_experts` -- top-k routed experts on rows sorted by expert,
  forward and backward by hand (:class:`ExpertBank.routed
  <speechbrain_moe.experts.ExpertBank.routed>`);
* :mod:`.soft_route` -- Soft MoE's dispatch and combine weights with a fused
  backward (:class:`~speechbrain_moe.adapters.SoftMoA`);
* :mod:`.dense_mixing` -- Dense-MoA's router sharing the experts'
  down-projection product, and the gated output biases folded into the
  up-projection (plain autograd, fewer passes over the tokens);
* :mod:`.recomputed_mlp` -- the bridge's aggregation MLP recomputing its
  activation in the backward pass, and running inference on blocks of rows;
* :mod:`.activations` -- the activation gradients the two hand-written
  backward passes use.

A module picks one or the other with its ``implementation`` setting
(``auto``, ``plain`` or ``kernel``; the method and bridge YAML files of
``speechbrain_moe/hparams/`` expose it). ``auto`` takes a kernel only on a
device where it was measured faster than the plain path: today the CPU
(the only device the kernels were timed on, see ``benchmarks/README.md``);
CUDA and every other device use the plain path until a measurement there
says otherwise, and so does code being compiled by ``torch.compile`` (the
kernels' Python loops over experts and custom backward passes are what
the compiler cannot trace whole). Both paths hold the same parameters under
the same names, so a checkpoint trained with one loads into the other, and
``tests/test_kernels_equal.py`` checks that they compute the same values and
gradients (float32, and under bfloat16 / float16 CPU autocast, with and
without padding masks).

Authors
 * speechbrain-moe contributors 2026
"""

import torch

#: The values of every ``implementation`` setting.
IMPLEMENTATIONS = ("auto", "plain", "kernel")

#: Devices on which ``auto`` takes the kernels: where they were measured
#: faster than the plain path (benchmarks/README.md, 2-core CPU, torch 2.11).
KERNEL_DEVICES = frozenset({"cpu"})


def check_implementation(owner, implementation):
    """Refuses an ``implementation`` setting that is not one of
    :data:`IMPLEMENTATIONS`.

    Arguments
    ---------
    owner : str
        Name of the module being built (shown in the error).
    implementation : str
        The setting to check.

    Returns
    -------
    str
        ``implementation``, unchanged.

    Example
    -------
    >>> check_implementation("SoftMoA", "plain")
    'plain'
    >>> check_implementation("SoftMoA", "fast")
    Traceback (most recent call last):
        ...
    ValueError: SoftMoA: unknown implementation 'fast'. Set implementation to one of ('auto', 'plain', 'kernel') (in the method or bridge YAML, or with --petl_overrides / --bridge_overrides).
    """
    if implementation not in IMPLEMENTATIONS:
        raise ValueError(
            f"{owner}: unknown implementation {implementation!r}. Set "
            f"implementation to one of {IMPLEMENTATIONS} (in the method or bridge "
            "YAML, or with --petl_overrides / --bridge_overrides)."
        )
    return implementation


def use_kernel(implementation, tensor):
    """Whether a module with this ``implementation`` setting runs its kernel
    on ``tensor``.

    Arguments
    ---------
    implementation : str
        ``"plain"`` (never), ``"kernel"`` (always) or ``"auto"`` (on the
        :data:`KERNEL_DEVICES`, and not while ``torch.compile`` traces).
    tensor : torch.Tensor
        The module's input (its device decides ``auto``).

    Returns
    -------
    bool
        True: run the kernel; False: run the plain path.

    Example
    -------
    >>> use_kernel("auto", torch.zeros(1)), use_kernel("plain", torch.zeros(1))
    (True, False)
    """
    if implementation == "kernel":
        return True
    if implementation == "plain" or torch.compiler.is_compiling():
        return False
    return tensor.device.type in KERNEL_DEVICES


__all__ = [
    "IMPLEMENTATIONS",
    "KERNEL_DEVICES",
    "check_implementation",
    "use_kernel",
]
