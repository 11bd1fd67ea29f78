"""Times the trimmed Whisper encoder against the 30 s one on short clips.

``python -m benchmarks.whisper_speedup [--batch 8 --seconds 1 --d_model 32]``

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import tempfile
import time

import torch

from speechbrain_moe.lobes.whisper import Whisper


def measure_speedup(batch=8, seconds=1.0, repeats=10, **cfg):
    """Times the trimmed and the 30 s encoder on a batch of short clips.

    Arguments
    ---------
    batch : int
        Clips per batch.
    seconds : float
        Clip duration.
    repeats : int
        Timed forward passes per path (after one warm-up); the best is kept.
    **cfg
        ``WhisperConfig`` overrides of the tiny model (e.g. ``d_model=384,
        encoder_layers=4, encoder_attention_heads=6, encoder_ffn_dim=1536``
        for whisper-tiny's size).

    Returns
    -------
    dict
        ``full_ms``, ``trimmed_ms`` (per batch) and ``speedup``.
    """
    from synthetic.models import make_tiny_whisper

    folder = make_tiny_whisper(tempfile.mkdtemp(), **cfg)
    wavs = torch.randn(batch, int(16000 * seconds))
    timings = {}
    for trim in (False, True):
        lobe = Whisper(folder, trim_to_valid=trim).eval()
        best = float("inf")
        with torch.inference_mode():
            lobe(wavs)
            for _ in range(repeats):
                start = time.perf_counter()
                lobe(wavs)
                best = min(best, time.perf_counter() - start)
        timings["trimmed_ms" if trim else "full_ms"] = 1000 * best
    timings["speedup"] = timings["full_ms"] / timings["trimmed_ms"]
    return timings


def main(argv=None):
    """Command line: ``python -m speechbrain_moe.lobes.whisper --speedup``.

    Arguments
    ---------
    argv : list of str, optional
        Command-line arguments.
    """
    parser = argparse.ArgumentParser(description="Whisper lobe utilities.")
    parser.add_argument("--speedup", action="store_true", help="time trimmed vs 30 s")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=1.0)
    parser.add_argument("--d_model", type=int, default=32)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--heads", type=int, default=2)
    args = parser.parse_args(argv)
    if not args.speedup:
        parser.print_help()
        return
    result = measure_speedup(
        batch=args.batch,
        seconds=args.seconds,
        d_model=args.d_model,
        encoder_layers=args.layers,
        encoder_attention_heads=args.heads,
        encoder_ffn_dim=4 * args.d_model,
    )
    print(
        f"Whisper encoder (d_model={args.d_model}, {args.layers} layers), batch of "
        f"{args.batch} x {args.seconds:g} s clips on {torch.get_num_threads()} CPU "
        f"threads: 30 s padding {result['full_ms']:.1f} ms, trimmed "
        f"{result['trimmed_ms']:.1f} ms, speed-up x{result['speedup']:.1f}"
    )


if __name__ == "__main__":
    main()
