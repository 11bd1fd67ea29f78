"""Measurement primitives: interleaved step timing and per-case peak memory.

Timing runs every case of a suite in one process, after a warm-up, one step
of each case per round (so that a slow-down of the machine hits every case
alike), and keeps the median (and minimum) per case. Peak memory is measured
per case in a fresh subprocess (``python -m benchmarks --memory-worker``):
on CPU the process high-water mark of resident memory, on CUDA
``torch.cuda.max_memory_allocated``.

Authors
 * speechbrain-moe contributors 2026
"""

import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch


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


def time_interleaved(steps, warmup=1, repeats=5, device="cpu"):
    """Times several step functions, interleaved, after a warm-up.

    Arguments
    ---------
    steps : dict
        ``name -> callable`` running one step.
    warmup : int
        Untimed calls of every step before measuring.
    repeats : int
        Timed rounds; in each round every step runs once, in turn.
    device : str
        Device to synchronise before reading the clock.

    Returns
    -------
    dict
        ``name -> {"median_ms", "min_ms", "times_ms"}``.

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
    times = {name: [] for name in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            times[name].append(1000.0 * (time.perf_counter() - start))
    return {
        name: {
            "median_ms": statistics.median(values),
            "min_ms": min(values),
            "times_ms": values,
        }
        for name, values in times.items()
    }


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
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=timeout, check=False, cwd=repo
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
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
