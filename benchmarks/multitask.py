"""N tasks on one frozen backbone (``MultiTaskClassifier``) vs N separate
single-task models (``PETLAudioClassifier`` each): resident memory and time
per batch, for N in {1, 2, 4}.

Task folders: packaged folders in the layout ``package_experiment`` writes
(``inference.yaml``, ``backbone.ckpt`` with the trainable tensors only,
``classifier.ckpt``, ``label_encoder.ckpt``, the method file), built by
:func:`make_task_folder` through the real code (``apply_method`` on the
backbone lobe, ``save_trainable``), with RANDOMLY INITIALISED trained tensors
(no training: memory and speed do not depend on the values). The methods
cycle through soft_moa, lora, adapter (sequential) and moe_adapter,
so N = 4 mixes four methods and both modes in one forward.

Each configuration (``shared`` or ``separate``, N) runs in a fresh Python
process: the resident set size (RSS, split into anonymous and file-backed
pages) is read after the imports (baseline), after loading and after the
timed batches, the peak RSS (``ru_maxrss``) at the end, and the distinct
tensors the model(s) hold are counted (what a GPU holds); the time is the
median over ``--reps`` batches of ``--batch`` clips of 1 s (clip i for task
i mod N: the shared model classifies the whole mixed batch in one call, the
separate models each classify their own clips).

Backbone: Whisper tiny.en from the real assets (``python -m
tools.real_assets``; ``.cache/real_assets/models/whisper-tiny.en``) when it
is there, else (or with ``--quick``) a tiny random Whisper.

``python -m benchmarks.multitask --json benchmarks/results/multitask.json``
measures; ``--table`` writes the README table from the JSON (between
``<!-- multitask:start -->`` and ``<!-- multitask:end -->``).

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import resources

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
START, END = "<!-- multitask:start -->", "<!-- multitask:end -->"

#: (method, settings) of task k (cycled).
METHODS = (
    ("soft_moa", {"num_experts": 4}),
    ("lora", {"rank": 8}),
    ("adapter", {"mode": "sequential"}),
    ("moe_adapter", {}),
)

LOBES = {
    "ast": "speechbrain_moe.lobes.ast.AST",
    "whisper": "speechbrain_moe.lobes.whisper.Whisper",
    "wavlm": "speechbrain_moe.lobes.wavlm.SSLEncoder",
}

INFERENCE_YAML = """\
inference_folder: !PLACEHOLDER
inference_interface: speechbrain_moe.inference.PETLAudioClassifier
inference_files:
- {method}.yaml
packaged_methods:
  petl/{method}: {method}.yaml
sample_rate: {sample_rate}
backbone: &id001 !apply:speechbrain_moe.petl.apply_method
  backbone: !new:{lobe}
{lobe_args}
  method: {method}
  overrides: {overrides}
classifier: !new:torch.nn.Sequential
- !new:torch.nn.LayerNorm [&id002 !apply:getattr [*id001, output_size]]
- !new:torch.nn.Linear [*id002, {n_classes}]
label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder
modules:
  backbone: !ref <backbone>
  classifier: !ref <classifier>
pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
  loadables:
    backbone: !ref <backbone>
    classifier: !ref <classifier>
    label_encoder: !ref <label_encoder>
"""


def make_task_folder(
    folder,
    lobe,
    lobe_args,
    method,
    overrides=None,
    n_classes=3,
    seed=0,
    scale=0.3,
    sample_rate=16000,
):
    """Writes a packaged task folder whose trained tensors are random.

    Arguments
    ---------
    folder : str
        Created (must not exist or be empty).
    lobe : str
        ``ast``, ``whisper`` or ``wavlm`` (or a dotted lobe class).
    lobe_args : dict
        The lobe's plain arguments (``source`` first).
    method : str
        A packaged method name.
    overrides : dict, optional
        Its settings.
    n_classes : int
        Outputs of the head (labels ``c0``, ``c1``, ...).
    seed : int
        Of the random tensors.
    scale : float
        Standard deviation added to every trainable tensor (as after
        training: zero-initialised projections become non-zero).
    sample_rate : int
        Recorded in ``inference.yaml``.

    Returns
    -------
    str
        ``folder``.
    """
    import torch
    from speechbrain.dataio.encoder import CategoricalEncoder

    from speechbrain_moe.inference.verify import write_manifest
    from speechbrain_moe.lobes.base import quiet_loading
    from speechbrain_moe.petl import apply_method

    lobe = LOBES.get(lobe, lobe)
    overrides = dict(overrides or {})
    module, _, name = lobe.rpartition(".")
    cls = getattr(__import__(module, fromlist=[name]), name)
    os.makedirs(folder, exist_ok=True)
    torch.manual_seed(seed)
    with quiet_loading():
        adapted = apply_method(cls(**lobe_args), method, overrides)
    with torch.no_grad():
        for param in adapted.parameters():
            if param.requires_grad:
                param.add_(scale * torch.randn_like(param))
    adapted.save_trainable(os.path.join(folder, "backbone.ckpt"))
    head = torch.nn.Sequential(
        torch.nn.LayerNorm(adapted.output_size),
        torch.nn.Linear(adapted.output_size, n_classes),
    )
    torch.save(head.state_dict(), os.path.join(folder, "classifier.ckpt"))
    encoder = CategoricalEncoder()
    encoder.update_from_iterable([f"c{i}" for i in range(n_classes)])
    encoder.save(os.path.join(folder, "label_encoder.ckpt"))
    installed = resources.files("speechbrain_moe") / "hparams" / "petl"
    with open(os.path.join(folder, f"{method}.yaml"), "w", encoding="utf-8") as out:
        out.write((installed / f"{method}.yaml").read_text(encoding="utf-8"))
    args = "\n".join(
        f"    {key}: {json.dumps(value)}" for key, value in lobe_args.items()
    )
    text = INFERENCE_YAML.format(
        method=method,
        lobe=lobe,
        lobe_args=args,
        overrides=json.dumps(overrides),
        n_classes=n_classes,
        sample_rate=sample_rate,
    )
    with open(os.path.join(folder, "inference.yaml"), "w", encoding="utf-8") as out:
        out.write(text)
    names = ["backbone.ckpt", "classifier.ckpt", "label_encoder.ckpt"]
    write_manifest(folder, [*names, f"{method}.yaml", "inference.yaml"])
    return folder


def rss_mb():
    """The resident set size of this process now, in MiB (Linux ``/proc``),
    in all and split into anonymous memory and file-backed pages (the
    safetensors weights are memory-mapped: their pages are file-backed and
    shared by every mapping of the same file).

    Returns
    -------
    dict
        ``rss``, ``anon`` and ``file``, in MiB.
    """
    values = {}
    with open("/proc/self/status") as fin:
        for line in fin:
            key = line.split(":")[0]
            if key in ("VmRSS", "RssAnon", "RssFile"):
                values[key] = int(line.split()[1]) / 1024
    return {
        "rss": round(values["VmRSS"], 1),
        "anon": round(values["RssAnon"], 1),
        "file": round(values["RssFile"], 1),
    }


def peak_rss_mb():
    """The peak resident set size of this process, in MiB (``ru_maxrss``).

    Returns
    -------
    float
    """
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child(mode, folders, batch, reps, threads):
    """One configuration, measured in this (fresh) process.

    Arguments
    ---------
    mode : str
        ``shared`` (one ``MultiTaskClassifier``) or ``separate`` (one
        ``PETLAudioClassifier`` per task).
    folders : list of str
        The task folders.
    batch, reps, threads : int
        Clips per batch, timed batches, torch threads.

    Returns
    -------
    dict
        ``baseline_rss_mb`` (after the imports), ``loaded_rss_mb`` (after
        loading), ``after_batches_rss_mb`` (after the timed batches: every
        weight page touched), each as :func:`rss_mb` gives it;
        ``peak_rss_mb``; ``ms_per_batch`` (median) and ``ms_all``;
        ``tensor_elements`` and ``tensor_mb``: the distinct parameter and
        buffer tensors the model(s) hold (what a GPU would hold: there each
        model's weights are copied into device memory).
    """
    import torch

    from speechbrain_moe.inference import MultiTaskClassifier, PETLAudioClassifier

    torch.set_num_threads(threads)
    baseline = rss_mb()
    savedir = tempfile.mkdtemp()
    names = [f"task{i}" for i in range(len(folders))]
    if mode == "shared":
        model = MultiTaskClassifier.from_hparams(
            sources=dict(zip(names, folders)), savedir=savedir
        )
        models = [model]
    else:
        models = [
            PETLAudioClassifier.from_hparams(
                source=folder, savedir=os.path.join(savedir, name)
            )
            for name, folder in zip(names, folders)
        ]
    loaded = rss_mb()
    unique = {}
    for one in models:
        for tensor in [*one.mods.parameters(), *one.mods.buffers()]:
            unique[tensor.data_ptr()] = (tensor.numel(), tensor.element_size())
    torch.manual_seed(0)
    wavs = 0.1 * torch.randn(batch, 16000)
    tasks = [names[i % len(names)] for i in range(batch)]

    def step():
        if mode == "shared":
            models[0].classify_batch(wavs, tasks=tasks)
            return
        for k, one in enumerate(models):
            rows = [i for i, t in enumerate(tasks) if t == names[k]]
            if rows:
                one.classify_batch(wavs[rows])

    step()  # warm-up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        step()
        times.append(1000 * (time.perf_counter() - start))
    ran = rss_mb()
    shutil.rmtree(savedir, ignore_errors=True)
    return {
        "baseline_rss_mb": baseline,
        "loaded_rss_mb": loaded,
        "after_batches_rss_mb": ran,
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "ms_per_batch": round(statistics.median(times), 2),
        "ms_all": [round(t, 2) for t in times],
        "tensor_elements": sum(n for n, _ in unique.values()),
        "tensor_mb": round(sum(n * size for n, size in unique.values()) / 2**20, 2),
    }


def backbone_args(quick, workdir):
    """``(lobe, lobe_args, description)`` of the backbone to measure.

    Arguments
    ---------
    quick : bool
        A tiny random Whisper (built in ``workdir``) instead of the real one.
    workdir : str
        Scratch folder.

    Returns
    -------
    tuple
    """
    sys.path.insert(0, REPO)
    from tools.real_assets.layout import RealAssets

    real = RealAssets().whisper
    if not quick and os.path.isfile(os.path.join(real, "config.json")):
        return "whisper", {"source": real}, "Whisper tiny.en (real weights)"
    from synthetic.models import make_tiny_whisper

    source = make_tiny_whisper(os.path.join(workdir, "tiny_whisper"))
    return "whisper", {"source": source}, "tiny random Whisper (d=32, 2 layers)"


def measure(args):
    """Builds the task folders, runs every configuration in its own process.

    Arguments
    ---------
    args : argparse.Namespace
        The command line.

    Returns
    -------
    dict
        The report written to ``--json``.
    """
    workdir = tempfile.mkdtemp(prefix="multitask_bench_")
    lobe, lobe_args, described = backbone_args(args.quick, workdir)
    counts = [1, 2] if args.quick else [1, 2, 4]
    folders = []
    for k in range(max(counts)):
        method, overrides = METHODS[k % len(METHODS)]
        folders.append(
            make_task_folder(
                os.path.join(workdir, f"task{k}"),
                lobe,
                lobe_args,
                method,
                overrides,
                n_classes=5 + k,
                seed=k,
            )
        )
    rows = []
    for n in counts:
        for mode in ("shared", "separate"):
            command = [
                sys.executable,
                "-m",
                "benchmarks.multitask",
                "--child",
                mode,
                "--batch",
                str(args.batch),
                "--reps",
                str(args.reps),
                "--threads",
                str(args.threads),
                *folders[:n],
            ]
            proc = subprocess.run(
                command, cwd=REPO, capture_output=True, text=True, check=False
            )
            if proc.returncode != 0:
                sys.exit(f"{' '.join(command)} failed:\n{proc.stderr[-3000:]}")
            result = json.loads(proc.stdout.strip().splitlines()[-1])
            result.update(
                tasks=n,
                mode=mode,
                methods=[METHODS[k % len(METHODS)][0] for k in range(n)],
            )
            rows.append(result)
            print(json.dumps(result), flush=True)
    shutil.rmtree(workdir, ignore_errors=True)
    # (Imported here: the measured child processes import none of this.)
    from benchmarks.core import machine_info
    from benchmarks.runner import provenance

    return {
        "suite": "multitask",
        "backbone": described,
        "task_folders": (
            "packaged folders written by benchmarks.multitask.make_task_folder: "
            "apply_method + save_trainable with randomly initialised trained "
            "tensors (no training), heads of 5, 6, 7, 8 classes"
        ),
        "batch": args.batch,
        "clip_seconds": 1.0,
        "reps": args.reps,
        "threads": args.threads,
        "machine": machine_info("cpu"),
        "provenance": provenance(sys.argv[1:]),
        "timing_note": args.timing_note,
        "rows": rows,
    }


def table(report):
    """The README table of a report.

    Arguments
    ---------
    report : dict
        What :func:`measure` returns.

    Returns
    -------
    str
        Markdown.

    Example
    -------
    >>> rss = {"rss": 710.0, "anon": 400.0, "file": 310.0}
    >>> row = {"tasks": 1, "mode": "shared", "methods": ["lora"], "baseline_rss_mb": rss,
    ...     "after_batches_rss_mb": {"rss": 760.0, "anon": 420.0, "file": 340.0},
    ...     "peak_rss_mb": 770.0, "ms_per_batch": 2.0, "tensor_mb": 31.5}
    >>> print(table({"backbone": "b", "batch": 4, "threads": 1, "rows": [row]}))
    ... # doctest: +NORMALIZE_WHITESPACE
    Backbone: b; a batch of 4 clips of 1 s, clip i for task i mod N; 1 torch thread(s).
    <BLANKLINE>
    | tasks N | methods | model(s) | tensors held (MiB) | RSS after the batches, over the imports (MiB): all = anonymous + file-backed | peak RSS (MiB) | ms per batch |
    |---|---|---|---|---|---|---|
    | 1 | lora | one backbone | 31.5 | +50.0 = +20.0 + 30.0 | 770.0 | 2.0 |
    """
    lines = [
        f"Backbone: {report['backbone']}; a batch of {report['batch']} clips of "
        "1 s, clip i for task i mod N; "
        f"{report['threads']} torch thread(s).",
        "",
        "| tasks N | methods | model(s) | tensors held (MiB) | RSS after the "
        "batches, over the imports (MiB): all = anonymous + file-backed | peak "
        "RSS (MiB) | ms per batch |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        what = f"{row['tasks']} model{'s' if row['tasks'] > 1 else ''}"
        what = "one backbone" if row["mode"] == "shared" else what
        base, ran = row["baseline_rss_mb"], row["after_batches_rss_mb"]
        grown = {key: ran[key] - base[key] for key in ("rss", "anon", "file")}
        lines.append(
            f"| {row['tasks']} | {', '.join(row['methods'])} | {what} | "
            f"{row['tensor_mb']:.1f} | {grown['rss']:+.1f} = {grown['anon']:+.1f} "
            f"{'+' if grown['file'] >= 0 else '-'} {abs(grown['file']):.1f} | "
            f"{row['peak_rss_mb']:.1f} | {row['ms_per_batch']} |"
        )
    if report.get("timing_note"):
        lines += ["", report["timing_note"]]
    return "\n".join(lines)


def main(argv=None):
    """The command line (see the module docstring).

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--json", help="write the report here")
    parser.add_argument("--table", action="store_true", help="README table from --json")
    parser.add_argument(
        "--quick", action="store_true", help="tiny Whisper, N in {1, 2}"
    )
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--timing_note", default="")
    parser.add_argument("--child", choices=("shared", "separate"))
    parser.add_argument("folders", nargs="*")
    args = parser.parse_args(argv)
    if args.child:
        result = child(args.child, args.folders, args.batch, args.reps, args.threads)
        print(json.dumps(result))
        return
    if args.table:
        from benchmarks.make_table import update

        with open(args.json) as fin:
            report = json.load(fin)
        update(os.path.join(REPO, "README.md"), table(report), START, END)
        return
    report = measure(args)
    if args.json:
        os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
        with open(args.json, "w") as out:
            json.dump(report, out, indent=1)
            out.write("\n")


if __name__ == "__main__":
    main()
