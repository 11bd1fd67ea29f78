"""The end of a DDP run: the process group freed while Python is still alive.

``torch.distributed.destroy_process_group()`` takes the group out of
``torch.distributed``'s own tables, but the group's C++ object lives on while
anything else refers to it, and with it gloo's worker threads. Two things
do, in a SpeechBrain recipe:

* the ``DistributedDataParallel`` wrappers that ``Brain`` puts in
  ``brain.modules``: their ``Reducer`` holds the group;
* ``torch.distributed.nn.functional``, whose functions take
  ``group=group.WORLD`` as a default argument, evaluated when the module is
  first imported. Built after ``init_process_group`` (the first DDP wrapper
  imports it, through ``torch._dynamo``, FSDP and ``torch.distributed._shard``),
  those defaults hold the world group for the life of the process.

A group that outlives the script is freed during interpreter finalization.
A gloo worker can then still be dropping its last reference to a finished
collective (a broadcast of tensors Python has seen): that needs the GIL,
which a finalizing interpreter refuses by ending the thread, and the forced
unwind through a ``noexcept`` frame calls ``std::terminate``: the process
aborts (SIGABRT, "terminate called without an active exception") after a run
that succeeded, and ``torchrun`` reports the whole job failed. Rare and
timing-dependent, so it looks like flakiness: 3 of 181 two-process launches of
a three-epoch ESC-50 MoE-Adapter run on a 2-core machine before this module,
0 of 150 with it. pytorch/pytorch#179291 describes the same finalization
crash.

This module removes both references: importing it (``import speechbrain_moe``
does) imports ``torch.distributed.nn`` first, so its defaults are ``None``
(import it before ``ddp_init_group``), and :func:`close_process_group` takes the brain's DDP
wrappers off, destroys the group and checks that it was freed, which joins the
gloo threads while the interpreter is alive.

Authors
 * speechbrain-moe contributors 2026
"""

import gc
import sys

import torch
import torch.distributed

# Imported for its side effect, before any process group exists: see the
# module docstring (its functions' ``group=group.WORLD`` defaults).
import torch.distributed.nn  # noqa: F401
from speechbrain.utils.logger import get_logger
from torch.nn.parallel import DistributedDataParallel

logger = get_logger(__name__)


def close_process_group(brain=None):
    """Ends this process's part of a DDP run (a no-op outside one).

    Every rank waits for the others (a barrier: call it on all ranks, after
    the last collective, e.g. after ``brain.evaluate``), the brain's
    ``DistributedDataParallel`` wrappers are replaced by the modules they
    wrap (so ``brain.modules`` keeps working for single-process use, such as
    saving weights), the process group is destroyed, and the group's last
    reference is dropped here, so that gloo's worker threads are joined now
    and not during interpreter shutdown (see the module docstring).

    Arguments
    ---------
    brain : speechbrain.Brain, optional
        The brain whose ``modules`` may hold DDP wrappers.

    Returns
    -------
    bool
        True when a process group was closed, False when none was open.

    Example
    -------
    >>> close_process_group()  # not under torchrun: nothing to close
    False
    """
    if not torch.distributed.is_initialized():
        return False
    torch.distributed.barrier()
    if brain is not None:
        wrapped = [
            name
            for name, module in brain.modules.items()
            if isinstance(module, DistributedDataParallel)
        ]
        for name in wrapped:
            brain.modules[name] = brain.modules[name].module
    # Held here so that the group is freed by the ``del`` below: that frees
    # it with the GIL released (torch's binding does), while a gloo worker
    # may still need the GIL to finish its last collective. Freed by a
    # reducer, it would be joined with the GIL held.
    group = torch.distributed.group.WORLD
    gc.collect()  # DDP wrappers sit in reference cycles (hooks)
    torch.distributed.destroy_process_group()
    holder = None
    if any(isinstance(o, DistributedDataParallel) for o in gc.get_objects()):
        holder = "a DistributedDataParallel wrapper (its reducer)"
    elif sys.getrefcount(group) > 2:  # more than ``group`` and the argument
        holder = "a Python object (a default argument, a global)"
    if holder is not None:
        logger.warning(
            "The process group outlives destroy_process_group(), held by %s: "
            "its gloo threads then outlive the script and can abort the "
            "process at exit (SIGABRT). Import speechbrain_moe.distributed "
            "before ddp_init_group, pass the brain to close_process_group(), "
            "and keep no other DDP wrapper.",
            holder,
        )
    del group
    return True
