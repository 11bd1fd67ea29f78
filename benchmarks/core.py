"""Measurement primitives: interleaved step timing and per-case peak memory.

Timing runs every case of a group in one process, after a warm-up, one step
of each case per round (so that a slow-down of the machine hits every case
alike), and keeps the median, quartiles and minimum per case; ratios between
cases are medians of per-round ratios. On a shared machine a step during
which other processes took CPU time can be discarded and run again. Peak memory is measured
per case in a fresh subprocess (``python -m benchmarks --memory-worker``):
on CPU the process high-water mark of resident memory, on CUDA
``torch.cuda.max_memory_allocated``.

Authors
 * speechbrain-moe contributors 2026
"""

import contextlib
import ctypes
import ctypes.util
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

#: glibc ``M_MMAP_THRESHOLD`` (bytes) of the memory subprocesses.
MMAP_THRESHOLD = "65536"
#: ``mallopt`` parameters of glibc's ``malloc.h``.
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4


def keep_freed_memory():
    """Makes glibc keep freed memory for reuse rather than return it to the OS.

    By default glibc serves large tensors with ``mmap`` and unmaps them when
    freed, so every step faults its large activations in again (a
    1000-frame AST-base step: 0.3M to 0.95M minor faults, 1 to 5.5 s of
    system time, varying from step to step whatever the method). With
    ``mmap`` off and no trimming, a warm step reuses the heap and faults
    nothing, as GPU steps do with PyTorch's caching allocator. The timing
    process calls this once; memory is measured in separate subprocesses.

    Returns
    -------
    str or None
        What was set, or None where ``mallopt`` is missing (not glibc).
    """
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c")).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    if mallopt(M_MMAP_MAX, 0) != 1 or mallopt(M_TRIM_THRESHOLD, 2**31 - 1) != 1:
        return None
    return "glibc mallopt: mmap off, no trim (freed memory reused, no page faults)"


#: ``--autocast`` names and their dtypes.
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def forward_context(spec, device):
    """``torch.autocast`` for a case with ``spec["autocast"]``, else a no-op.

    Steps wrap their forward pass and loss in it (not the backward pass or
    the optimizer step, as PyTorch's autocast guide asks).

    Arguments
    ---------
    spec : dict
        A case spec; ``autocast`` is None or a key of :data:`AUTOCAST_DTYPES`.
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    context manager

    Example
    -------
    >>> with forward_context({"autocast": "bf16"}, "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    """
    name = check_autocast(spec.get("autocast"))
    if not name:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AUTOCAST_DTYPES[name])


def check_autocast(name):
    """Returns ``name`` if it is None or a key of :data:`AUTOCAST_DTYPES`.

    Example
    -------
    >>> check_autocast("bf16")
    'bf16'
    """
    if name is not None and name not in AUTOCAST_DTYPES:
        raise ValueError(
            f"Unknown autocast {name!r}; choose one of {', '.join(AUTOCAST_DTYPES)}."
        )
    return name


def sync(device):
    """Waits for the queued kernels of ``device`` (a no-op on CPU).

    Arguments
    ---------
    device : str or torch.device
        The device the steps run on.

    Example
    -------
    >>> sync("cpu")
    """
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


class CpuProbe:
    """Share of the machine's CPU time that *other* processes used meanwhile.

    A context manager: on exit, ``others`` is ``(busy jiffies of all CPUs -
    this process's user + system time) / all jiffies`` over the block
    (``/proc/stat``), i.e. 0.5 when other processes kept one of two cores
    busy. Where ``/proc/stat`` is missing it reads 0.

    Example
    -------
    >>> with CpuProbe() as probe:
    ...     _ = sum(range(1000))
    >>> 0.0 <= probe.others <= 1.0
    True
    """

    others = 0.0

    @staticmethod
    def _read():
        """``(all jiffies, idle jiffies, own jiffies)`` now (None if unknown)."""
        try:
            with open("/proc/stat") as handle:
                values = [int(v) for v in handle.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        times = os.times()
        own = (times.user + times.system) * os.sysconf("SC_CLK_TCK")
        return sum(values), values[3] + values[4], own

    def __enter__(self):
        self.start = self._read()
        return self

    def __exit__(self, *exc):
        end = self._read()
        if self.start is None or end is None or end[0] <= self.start[0]:
            self.others = 0.0
            return
        total = end[0] - self.start[0]
        busy = total - (end[1] - self.start[1])
        self.others = min(1.0, max(0.0, (busy - (end[2] - self.start[2])) / total))


def wait_until_quiet(max_others, timeout=600.0, interval=0.5):
    """Sleeps until other processes use at most ``max_others`` of the CPUs.

    Arguments
    ---------
    max_others : float
        Largest tolerated share of CPU time used by other processes.
    timeout : float
        Give up after this many seconds.
    interval : float
        Length of each observation.

    Returns
    -------
    bool
        Whether the machine became quiet before the timeout.

    Example
    -------
    >>> wait_until_quiet(1.0)
    True
    """
    start = time.perf_counter()
    while True:
        with CpuProbe() as probe:
            time.sleep(interval)
        if probe.others <= max_others:
            return True
        if time.perf_counter() - start > timeout:
            return False


def quartiles(values):
    """``(first quartile, median, third quartile)`` of a list of numbers.

    Arguments
    ---------
    values : list of float

    Returns
    -------
    tuple

    Example
    -------
    >>> quartiles([1.0, 2.0, 3.0, 4.0, 5.0])
    (2.0, 3.0, 4.0)
    """
    if len(values) < 2:
        return values[0], values[0], values[0]
    q1, median, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, median, q3


def time_interleaved(
    steps,
    warmup=1,
    repeats=5,
    device="cpu",
    max_others=None,
    max_retries=10,
    log=None,
):
    """Times several step functions, interleaved, after a warm-up.

    In each round every step runs once, in turn; odd rounds run the steps in
    reverse order, so that no case always follows the same other case. With
    ``max_others``, a step during which other processes used more than that
    share of the CPUs (see :class:`CpuProbe`) is discarded and run again
    once the machine is quiet (at most ``max_retries`` times; after that the
    disturbed time is kept and counted in ``kept_disturbed``).

    Arguments
    ---------
    steps : dict
        ``name -> callable`` running one step.
    warmup : int
        Untimed calls of every step before measuring.
    repeats : int
        Timed rounds.
    device : str
        Device to synchronise before reading the clock.
    max_others : float, optional
        Contention gate (None: keep every step).
    max_retries : int
        Re-runs of a disturbed step before keeping it anyway.
    log : callable, optional
        Progress messages.

    Returns
    -------
    dict
        ``name -> {"median_ms", "min_ms", "q1_ms", "q3_ms", "times_ms",
        "others", "retries", "kept_disturbed"}``; ``times_ms[r]`` is round r.

    Example
    -------
    >>> out = time_interleaved({"a": lambda: None, "b": lambda: None}, warmup=1, repeats=3)
    >>> sorted(out), len(out["a"]["times_ms"])
    (['a', 'b'], 3)
    """
    for _ in range(warmup):
        for fn in steps.values():
            fn()
    sync(device)
    names = list(steps)
    record = {
        n: {"times": [], "others": [], "retries": 0, "disturbed": 0} for n in names
    }
    for round_index in range(repeats):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            entry = record[name]
            for attempt in range(max_retries + 1):
                sync(device)
                with CpuProbe() as probe:
                    start = time.perf_counter()
                    steps[name]()
                    sync(device)
                    elapsed = 1000.0 * (time.perf_counter() - start)
                if max_others is None or probe.others <= max_others:
                    break
                if attempt == max_retries:
                    entry["disturbed"] += 1
                    break
                entry["retries"] += 1
                wait_until_quiet(max_others)
            entry["times"].append(elapsed)
            entry["others"].append(round(probe.others, 3))
        if log is not None:
            log(f"  round {round_index + 1}/{repeats} done")
    results = {}
    for name, entry in record.items():
        q1, median, q3 = quartiles(entry["times"])
        results[name] = {
            "median_ms": median,
            "min_ms": min(entry["times"]),
            "q1_ms": q1,
            "q3_ms": q3,
            "times_ms": entry["times"],
            "others": entry["others"],
            "retries": entry["retries"],
            "kept_disturbed": entry["disturbed"],
        }
    return results


def _status_kb(field):
    """A ``kB`` field of ``/proc/self/status`` (None when unavailable)."""
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def reset_peak_rss():
    """Resets the resident-memory high-water mark of this process, if possible.

    Returns
    -------
    bool
        Whether the kernel accepted the reset (Linux ``clear_refs``).

    Example
    -------
    >>> isinstance(reset_peak_rss(), bool)
    True
    """
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def peak_rss_mb():
    """High-water mark of this process's resident memory, in MB.

    Reads ``VmHWM`` (Linux): unlike ``ru_maxrss`` it does not inherit the
    resident size of the parent that spawned the process, so a small worker
    forked from a large benchmark process still reports its own peak. Falls
    back to ``ru_maxrss`` elsewhere.

    Returns
    -------
    float

    Example
    -------
    >>> peak_rss_mb() > 0
    True
    """
    hwm = _status_kb("VmHWM")
    if hwm is not None:
        return hwm / 1024.0
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes vs kB
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 1024.0**2


def current_rss_mb():
    """Resident memory of this process now, in MB (``VmRSS``; 0 if unknown).

    Returns
    -------
    float

    Example
    -------
    >>> current_rss_mb() >= 0
    True
    """
    rss = _status_kb("VmRSS")
    return 0.0 if rss is None else rss / 1024.0


def measure_memory(build, warmup=1, repeats=2, device="cpu"):
    """Peak memory of building a case and running its steps (this process).

    Call it in a fresh process (see :func:`memory_in_subprocess`): the CPU
    figure is the high-water mark of the whole process.

    Arguments
    ---------
    build : callable
        Returns a callable running one step.
    warmup : int
        Steps before the measured ones (they count too: it is a peak).
    repeats : int
        Further steps.
    device : str
        ``cpu`` or ``cuda``.

    Returns
    -------
    dict
        ``peak_mem_mb`` (whole process, or all CUDA allocations) and
        ``step_mem_mb`` (growth of the peak over the memory held once the
        case was built: activations, gradients, optimizer state).

    Example
    -------
    >>> out = measure_memory(lambda: (lambda: torch.ones(1000).sum()))
    >>> sorted(out)
    ['peak_mem_mb', 'step_mem_mb']
    """
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    step = build()
    sync(device)
    if cuda:
        base = torch.cuda.memory_allocated(device) / 1024.0**2
    else:
        base = current_rss_mb()
    for _ in range(warmup + repeats):
        step()
    sync(device)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) / 1024.0**2
    else:
        peak = peak_rss_mb()
    return {
        "peak_mem_mb": round(peak, 1),
        "step_mem_mb": round(max(peak - base, 0.0), 1),
    }


def memory_in_subprocess(spec, timeout=None):
    """Runs :func:`measure_memory` for one case spec in a fresh Python process.

    Arguments
    ---------
    spec : dict
        A JSON-serialisable case spec (see :mod:`benchmarks.suites`).
    timeout : float, optional
        Seconds before giving up.

    Returns
    -------
    dict
        The worker's :func:`measure_memory` result.
    """
    cmd = [
        sys.executable,
        "-m",
        "benchmarks",
        "--memory-worker",
        json.dumps(spec),
    ]
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # A fixed glibc mmap threshold returns every freed tensor to the OS, so
    # VmHWM follows live memory (with the default dynamic threshold, two
    # identical bridge runs differed by up to 4 % in peak).
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD)
    proc = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        cwd=repo,
        env=env,
    )
    lines = [line for line in proc.stdout.splitlines() if line[:1] in "{["]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory worker failed for {spec.get('method')!r} "
            f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}"
        )
    return json.loads(lines[-1])


def machine_info(device="cpu"):
    """A short description of the machine the numbers come from.

    Arguments
    ---------
    device : str
        The benchmark device.

    Returns
    -------
    dict

    Example
    -------
    >>> {"cpu", "cpu_count", "torch_threads"} <= set(machine_info())
    True
    """
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "torch_threads": torch.get_num_threads(),
    }
    mem = None
    try:
        with open("/proc/meminfo") as handle:
            mem = int(handle.readline().split()[1]) / 1024.0**2
    except (OSError, ValueError, IndexError):
        pass
    info["memory_gb"] = None if mem is None else round(mem, 1)
    if torch.device(device).type == "cuda" and torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
