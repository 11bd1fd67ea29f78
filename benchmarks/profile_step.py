"""Where two cases of a group differ: per-operator CPU time of one step each.

``python -m benchmarks.profile_step --suite scaling --group frames=1000``

Builds every case of the group (as the suites do, sharing one random AST
checkpoint), runs one warm-up step, then profiles one step of each case
with ``torch.profiler`` and prints, for the first two cases, the operators
whose self CPU time differs the most. One profiled step is one sample: on a
CPU without a caching allocator the same operator can take several times
longer in one step than in another (fresh pages), so read a difference as a
lead, not a measurement.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse

from torch.profiler import ProfilerActivity, profile

from benchmarks.suites import CASE_LISTS, build_step, save_random_ast


def operator_times(step):
    """Self CPU milliseconds per operator of one call of ``step``.

    Arguments
    ---------
    step : callable
        One step.

    Returns
    -------
    dict

    Example
    -------
    >>> import torch
    >>> times = operator_times(lambda: torch.ones(3).mul(2))
    >>> "aten::mul" in times
    True
    """
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return {e.key: e.self_cpu_time_total / 1000 for e in prof.key_averages()}


def largest_differences(first, second, count=12):
    """``(difference, operator, first_ms, second_ms)``, largest first and last.

    Arguments
    ---------
    first, second : dict
        From :func:`operator_times`.
    count : int
        Rows from each end.

    Returns
    -------
    list of tuple

    Example
    -------
    >>> largest_differences({"a": 1.0, "b": 5.0}, {"a": 3.0}, count=1)
    [(2.0, 'a', 1.0, 3.0), (-5.0, 'b', 5.0, 0.0)]
    """
    rows = sorted(
        (
            (
                second.get(k, 0.0) - first.get(k, 0.0),
                k,
                first.get(k, 0.0),
                second.get(k, 0.0),
            )
            for k in set(first) | set(second)
        ),
        reverse=True,
    )
    return rows[:count] + rows[-count:] if len(rows) > 2 * count else rows


def main(argv=None):
    """Profiles one step of each case of a group and prints the differences."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_step")
    parser.add_argument("--suite", choices=sorted(CASE_LISTS), required=True)
    parser.add_argument("--group", required=True, help="e.g. frames=1000")
    parser.add_argument("--rows", type=int, default=12)
    args = parser.parse_args(argv)
    cases = [c for c in CASE_LISTS[args.suite]() if c["group"] == args.group]
    if len(cases) < 2:
        groups = sorted({c["group"] for c in CASE_LISTS[args.suite]()})
        parser.error(
            f"group {args.group!r} has {len(cases)} case(s); choose one of {groups}"
        )
    checkpoint = save_random_ast(cases[0]["model"]) if "model" in cases[0] else None
    times = []
    for case in cases[:2]:
        step, _ = build_step(case, checkpoint)
        step()
        times.append(operator_times(step))
        del step
    names = [c["method"] for c in cases[:2]]
    print(
        f"self CPU ms of one step: {names[0]} {sum(times[0].values()):.0f}, "
        f"{names[1]} {sum(times[1].values()):.0f}"
    )
    for diff, key, a, b in largest_differences(*times, count=args.rows):
        print(f"{diff:+10.1f}  {key}  ({names[0]} {a:.1f}, {names[1]} {b:.1f})")


if __name__ == "__main__":
    main()
