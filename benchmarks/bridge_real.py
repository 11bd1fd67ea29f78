"""The LLM bridge on real weights: Whisper tiny.en -> {dense, moe_adapter,
soft_moa} -> SmolLM2-135M-Instruct (frozen), trained on a speech + sound
task mixture with ``recipes/LibriSpeech/LLM_bridge/train.py``.

``python -m benchmarks.bridge_real run OUT`` trains the three bridges (one
process each, in parallel, one thread each) with the equal-size bridge files of
``recipes/LibriSpeech/LLM_bridge/hparams/bridges_tiny/`` and keeps a copy of
every checkpoint the recipe writes (``--ckpt_interval_steps``) under
``<OUT>/<bridge>/snapshots/`` for the gradient analysis at several points of
training (the recipe keeps only the latest and the best).
``python -m benchmarks.bridge_real collect OUT`` gathers their test metrics
into ``benchmarks/results/bridge_real.json``; ``python -m
benchmarks.make_bridge_real_table`` renders the README table from it.

Data (``python -m tools.real_assets`` then ``python -m
tools.real_assets.bridge_tasks``): the compact mixture, LibriSpeech-layout
spoken phrases (24 training voices x 8 phrases, 4 validation voices x 4, 6
test voices x 5; disjoint espeak-ng variants) and animal-sound clips (9 / 2 /
4 per animal), answered as text to "What sound is this?".

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import glob
import json
import os
import platform
import shutil
import subprocess
import sys
import time

from tools.real_assets.layout import RealAssets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
BRIDGES = ["dense", "moe_adapter", "soft_moa"]
CLS_TASK = "sound"
RESULTS = os.path.join(REPO, "benchmarks", "results", "bridge_real.json")
GRADIENTS = os.path.join(REPO, "benchmarks", "results", "bridge_real_gradients.json")


def train_command(bridge, out, assets, settings):
    """The recipe command line that trains one bridge.

    Arguments
    ---------
    bridge : str
        ``dense``, ``moe_adapter`` or ``soft_moa``.
    out : str
        Its output folder.
    assets : RealAssets
        The real assets.
    settings : dict
        ``batch_size``, ``lr``, ``epochs``, ``ckpt_interval_steps``,
        ``max_new_tokens``, ``seed``.

    Returns
    -------
    list of str
        Run in ``recipes/LibriSpeech/LLM_bridge``.

    Example
    -------
    >>> cmd = train_command("dense", "/o", RealAssets("/a"), dict(
    ...     batch_size=8, lr=0.002, epochs=1, ckpt_interval_steps=12,
    ...     max_new_tokens=28, seed=1986))
    >>> cmd[2], cmd[3]
    ('hparams/bridge.yaml', '--bridge=hparams/bridges_tiny/dense.yaml')
    """
    compact = assets.path("data", "bridge_compact")
    sounds = os.path.join(compact, "sounds")
    return [
        sys.executable,
        "train.py",
        "hparams/bridge.yaml",
        f"--bridge=hparams/bridges_tiny/{bridge}.yaml",
        f"--data_folder={os.path.join(compact, 'LibriSpeech')}",
        f"--llm_source={assets.smollm2}",
        f"--backbone_source={assets.whisper}",
        f"--output_folder={out}",
        f"--cls_task={CLS_TASK}",
        f"--task_weights={{asr: 1.0, {CLS_TASK}: 1.0}}",
        f"--cls_train_csv={os.path.join(sounds, 'train.csv')}",
        f"--cls_valid_csv={os.path.join(sounds, 'valid.csv')}",
        f"--cls_test_csv={os.path.join(sounds, 'test.csv')}",
        f"--batch_size={settings['batch_size']}",
        f"--test_batch_size={settings['batch_size']}",
        f"--lr={settings['lr']}",
        f"--number_of_epochs={settings['epochs']}",
        f"--max_new_tokens={settings['max_new_tokens']}",
        f"--seed={settings['seed']}",
        "--valid_decode=False",
        f"--ckpt_interval_steps={settings['ckpt_interval_steps']}",
        "--device=cpu",
    ]


def snapshot_checkpoints(save_folder, snapshots):
    """Copies every checkpoint folder of ``save_folder`` not yet copied,
    once it is complete: ``MANIFEST.json`` is written last, atomically
    (:mod:`speechbrain_moe.checkpoints`); SpeechBrain writes ``CKPT.yaml``
    first, so a folder holding only that may still be being written.

    Arguments
    ---------
    save_folder : str
        The recipe's ``save_folder``.
    snapshots : str
        Where the copies go (one folder per checkpoint, same name).

    Returns
    -------
    list of str
        The folders copied now.

    Example
    -------
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "save", "CKPT+1"))
    >>> open(os.path.join(root, "save", "CKPT+1", "CKPT.yaml"), "w").close()
    >>> snapshot_checkpoints(os.path.join(root, "save"), os.path.join(root, "snap"))
    []
    >>> open(os.path.join(root, "save", "CKPT+1", "MANIFEST.json"), "w").close()
    >>> [os.path.basename(p) for p in snapshot_checkpoints(
    ...     os.path.join(root, "save"), os.path.join(root, "snap"))]
    ['CKPT+1']
    >>> snapshot_checkpoints(os.path.join(root, "save"), os.path.join(root, "snap"))
    []
    """
    copied = []
    for folder in sorted(glob.glob(os.path.join(save_folder, "CKPT+*"))):
        target = os.path.join(snapshots, os.path.basename(folder))
        if os.path.isdir(target) or not os.path.isfile(
            os.path.join(folder, "MANIFEST.json")
        ):
            continue
        try:
            shutil.copytree(folder, target + ".partial")
        except (FileNotFoundError, shutil.Error):  # deleted while copying
            shutil.rmtree(target + ".partial", ignore_errors=True)
            continue
        os.replace(target + ".partial", target)
        copied.append(target)
    return copied


def run(out, assets, settings, bridges=BRIDGES, poll_seconds=5.0):
    """Trains the bridges in parallel, snapshotting their checkpoints.

    Arguments
    ---------
    out : str
        Output folder (one sub-folder per bridge, with ``train.out`` logs).
    assets : RealAssets
        The real assets.
    settings : dict
        See :func:`train_command`.
    bridges : list of str
        Which bridges.
    poll_seconds : float
        How often the checkpoint folders are looked at.

    Returns
    -------
    dict
        Bridge -> exit status.
    """
    os.makedirs(out, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    procs, commands = {}, {}
    for bridge in bridges:
        folder = os.path.join(os.path.abspath(out), bridge)
        os.makedirs(folder, exist_ok=True)
        cmd = train_command(bridge, folder, assets, settings)
        commands[bridge] = cmd
        log = open(os.path.join(folder, "train.out"), "w")
        procs[bridge] = (
            subprocess.Popen(cmd, cwd=RECIPE, env=env, stdout=log, stderr=log),
            log,
            folder,
        )
    dirty = subprocess.run(
        ["git", "status", "--porcelain", "--untracked-files=no"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()
    launch = {
        "settings": settings,
        "commands": commands,
        "commit": _commit(),
        "working_tree_modified": bool(dirty),
        "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    with open(os.path.join(out, "commands.json"), "w") as fout:
        json.dump(launch, fout, indent=1)
    status = {}
    while len(status) < len(procs):
        for bridge, (proc, log, folder) in procs.items():
            snapshot_checkpoints(
                os.path.join(folder, "save"), os.path.join(folder, "snapshots")
            )
            if bridge not in status and proc.poll() is not None:
                status[bridge] = proc.returncode
                log.close()
                print(f"[{bridge}] exit {proc.returncode}", flush=True)
        time.sleep(poll_seconds)
    return status


def gradient_command(folder, point, out, batches=2, batch_size=8):
    """The ``python -m analysis GRADIENTS`` command of one point of a run.

    Arguments
    ---------
    folder : str
        The run's output folder.
    point : str
        ``init`` or a checkpoint folder.
    out : str
        Where its JSON goes.
    batches, batch_size : int
        Batches per task and their size.

    Returns
    -------
    list of str

    Example
    -------
    >>> gradient_command("/r/dense", "init", "/g")[3:8]
    ['GRADIENTS', '--experiment', '/r/dense', '--out', '/g']
    """
    return [
        sys.executable,
        "-m",
        "analysis",
        "GRADIENTS",
        "--experiment",
        folder,
        "--out",
        out,
        "--split",
        "train",
        "--batches",
        str(batches),
        "--batch_size",
        str(batch_size),
        "--checkpoints",
        point,
    ]


def new_points(snapshots, done_steps):
    """The snapshot folders whose training step is not measured yet, in
    training order (one per step: an end-of-epoch checkpoint repeats the
    weights of the intra-epoch one of the same step).

    Arguments
    ---------
    snapshots : str
        Folder of the copied checkpoints.
    done_steps : set of int
        Steps already measured.

    Returns
    -------
    list of (int, str)
        ``(step, folder)`` pairs.
    """
    from analysis.bridge_gradients import point_step

    found = {}
    for folder in sorted(glob.glob(os.path.join(snapshots, "CKPT+*"))):
        if folder.endswith(".partial"):
            continue
        step = point_step(folder)["step"]
        if step is not None and step not in done_steps and step not in found:
            found[step] = folder
    return sorted(found.items())


def gradients(out, bridge, last_step, batches=2, batch_size=8, poll_seconds=20.0):
    """Measures the task gradients of one run at ``init`` and at each
    snapshot as it appears, until the snapshot of ``last_step``;
    ``<out>/<bridge>/gradients/<step>/bridge_gradients.json`` per point.

    Arguments
    ---------
    out : str
        The folder :func:`run` writes.
    bridge : str
        Which run.
    last_step : int
        The step of the last snapshot to wait for.
    batches, batch_size : int
        Batches per task and their size.
    poll_seconds : float
        How often to look for new snapshots.

    Returns
    -------
    list of list of str
        The commands run.
    """
    folder = os.path.join(os.path.abspath(out), bridge)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    commands, done = [], set()
    pending = [(0, "init")]
    while True:
        for step, point in pending:
            target = os.path.join(folder, "gradients", f"step_{step:04d}")
            cmd = gradient_command(folder, point, target, batches, batch_size)
            subprocess.run(cmd, cwd=REPO, env=env, check=True)
            commands.append(cmd)
            done.add(step)
        if last_step in done:
            return commands
        time.sleep(poll_seconds)
        pending = new_points(os.path.join(folder, "snapshots"), done)


def last_test_stats(train_log):
    """The test statistics of a recipe's ``train_log.txt``, per test set.

    Arguments
    ---------
    train_log : str
        The file.

    Returns
    -------
    dict
        Test-set name -> {statistic: value}.

    Example
    -------
    >>> import tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "log.txt")
    >>> _ = open(path, "w").write(
    ...     "Epoch loaded: 1, test set: test-clean - test loss: 2.1, test WER: 80.5\\n"
    ...     "Epoch loaded: 1, test set: sound - test loss: 0.5, test accuracy_sound: 0.9\\n")
    >>> last_test_stats(path)["sound"]["accuracy_sound"]
    0.9
    """
    stats = {}
    with open(train_log) as fin:
        for line in fin:
            if "test set:" not in line:
                continue
            meta, _, values = line.partition(" - ")
            name = meta.split("test set:")[1].split(",")[0].strip()
            entry = {}
            for item in values.split(", "):
                key, _, value = item.partition(": ")
                key = key.strip().removeprefix("test ")
                try:
                    entry[key] = float(value)
                except ValueError:
                    entry[key] = value.strip()
            stats[name] = entry
    return stats


def exact_test_metrics(wer_folder):
    """Unrounded test metrics from the recipe's test outputs: ``WER`` from
    ``wer_test-clean.txt`` (its ``%WER`` line), ``accuracy`` from
    ``answers_<task>.csv`` (the train log rounds to three digits).

    Arguments
    ---------
    wer_folder : str
        The run's ``output_wer_folder``.

    Returns
    -------
    dict
        ``WER`` and/or ``accuracy`` (those whose file exists).

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "wer_test-clean.txt"), "w").write(
    ...     "%WER 103.45 [ 240 / 232, 10 ins, 224 del, 6 sub ]\\n")
    >>> _ = open(os.path.join(folder, f"answers_{CLS_TASK}.csv"), "w").write(
    ...     "ID,task,reference,hypothesis,correct\\na,sound,dog,dog,1\\nb,sound,cat,,0\\n")
    >>> exact_test_metrics(folder)
    {'WER': 103.45, 'accuracy': 0.5}
    """
    import csv

    metrics = {}
    path = os.path.join(wer_folder, "wer_test-clean.txt")
    if os.path.isfile(path):
        with open(path) as fin:
            first = fin.readline().split()
        if first[:1] == ["%WER"]:
            metrics["WER"] = float(first[1])
    path = os.path.join(wer_folder, f"answers_{CLS_TASK}.csv")
    if os.path.isfile(path):
        with open(path, newline="") as fin:
            hits = [int(row["correct"]) for row in csv.DictReader(fin)]
        metrics["accuracy"] = sum(hits) / max(len(hits), 1)
    return metrics


def bridge_sizes(bridges=BRIDGES, encoder_size=384, factor=4, llm_size=576):
    """Total and active (per token) parameters of each bridge file.

    Arguments
    ---------
    bridges : list of str
        Bridge names (files of ``hparams/bridges_tiny/``).
    encoder_size, factor, llm_size : int
        Encoder width, frames stacked, LLM width.

    Returns
    -------
    dict
        Bridge -> ``total``, ``active``, ``active_ratio``.

    Example
    -------
    >>> sizes = bridge_sizes(["moe_adapter"])
    >>> sizes["moe_adapter"]["total"], round(sizes["moe_adapter"]["active_ratio"], 3)
    (9163968, 0.774)
    """
    import torch

    from speechbrain_moe.lobes.speech_llm import load_bridge

    sizes = {}
    for bridge in bridges:
        path = os.path.join(RECIPE, "hparams", "bridges_tiny", f"{bridge}.yaml")
        builder = load_bridge(path)
        with torch.device("meta"):
            module = builder(encoder_size * factor, llm_size)
        total = sum(p.numel() for p in module.parameters())
        active = total
        moe = getattr(module, "moe", None)
        if moe is not None:
            per_expert = (
                sum(p.numel() for p in moe.experts.parameters())
                // (builder.bridge_settings["num_experts"])
            )
            idle = (
                builder.bridge_settings["num_experts"]
                - builder.bridge_settings["top_k"]
            )
            active = total - idle * per_expert
        sizes[bridge] = {
            "total": total,
            "active": active,
            "active_ratio": active / total,
        }
    return sizes


def collect(out, results=RESULTS, bridges=BRIDGES):
    """Writes the JSON of the bridge runs of ``out`` (test WER/CER, sound
    accuracy, parameters, commands, machine, commit, date).

    Arguments
    ---------
    out : str
        The folder :func:`run` wrote.
    results : str
        JSON to write.
    bridges : list of str
        Which bridges.

    Returns
    -------
    dict
        What was written.
    """
    with open(os.path.join(out, "commands.json")) as fin:
        launched = json.load(fin)
    sizes = bridge_sizes(bridges)
    rows = {}
    for bridge in bridges:
        log = os.path.join(out, bridge, "train_log.txt")
        if not os.path.isfile(log):
            continue
        stats = last_test_stats(log)
        asr = stats.get("test-clean", {})
        sound = stats.get(CLS_TASK, {})
        exact = exact_test_metrics(os.path.join(out, bridge, "wer"))
        asr.update({k: v for k, v in exact.items() if k != "accuracy"})
        if "accuracy" in exact:
            sound[f"accuracy_{CLS_TASK}"] = exact["accuracy"]
        snapshots = os.path.join(out, bridge, "snapshots")
        steps = [step for step, _ in new_points(snapshots, set())]
        rows[bridge] = {
            **sizes[bridge],
            "train_steps": max(steps) if steps else None,
            "test_WER": asr.get("WER"),
            "test_CER": asr.get("CER"),
            "test_loss_asr": asr.get("loss"),
            f"test_accuracy_{CLS_TASK}": sound.get(f"accuracy_{CLS_TASK}"),
            f"test_loss_{CLS_TASK}": sound.get("loss"),
            "command": " ".join(launched["commands"][bridge]),
        }
    report = {
        "machine": _machine(),
        "commit": launched.get("commit") or _commit(),
        "working_tree_modified": launched.get("working_tree_modified"),
        "date": launched.get("started")
        or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": launched["settings"],
        "steps": max((r["train_steps"] or 0 for r in rows.values()), default=None),
        "bridges": rows,
    }
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "w") as fout:
        json.dump(report, fout, indent=1)
    return report


def _machine():
    """Where the runs ran (no timing is reported: the CPU was shared)."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "threads_per_run": 1,
        "note": "2-core CPU shared with other jobs; no timing is reported",
    }


def _commit():
    """The repository's short commit."""
    return subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"],
        cwd=REPO,
        capture_output=True,
        text=True,
    ).stdout.strip()


def collect_gradients(out, results=GRADIENTS, bridges=BRIDGES):
    """Merges the per-point gradient JSON files of every run of ``out`` into
    one report and draws its figures next to it
    (``<stem>_cosine.png``, ``<stem>_routing.png``).

    Arguments
    ---------
    out : str
        The folder :func:`run` and :func:`gradients` wrote.
    results : str
        JSON to write.
    bridges : list of str
        Which runs (those without measurements are left out).

    Returns
    -------
    dict
        What was written.
    """
    from analysis.bridge_plots import plot_cosine_over_training, plot_routing_by_task

    merged = {}
    for bridge in bridges:
        files = sorted(
            glob.glob(os.path.join(out, bridge, "gradients", "step_*", "*.json"))
        )
        if not files:
            continue
        points, entry = [], {}
        for path in files:
            with open(path) as fin:
                one = json.load(fin)
            points.extend(one.pop("points"))
            one.pop("experiment", None)
            entry = one
        entry["points"] = sorted(points, key=lambda p: p["step"])
        merged[bridge] = entry
    stem = os.path.splitext(results)[0]
    report = {
        "machine": _machine(),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.bridge_real gradients "
        f"{out} --bridges {' '.join(merged)} (per point: python -m analysis "
        "GRADIENTS --experiment <run> --out <dir> --split train --batches 2 "
        "--batch_size 8 --checkpoints <init|snapshot>)",
        "bridges": merged,
    }
    os.makedirs(os.path.dirname(results), exist_ok=True)
    with open(results, "w") as fout:
        json.dump(report, fout, indent=1)
    plot_cosine_over_training(report, f"{stem}_cosine.png")
    plot_routing_by_task(report, f"{stem}_routing.png")
    return report


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bridge_real", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("mode", choices=["run", "gradients", "collect"])
    parser.add_argument("out", help="folder of the runs")
    parser.add_argument("--assets", default=None, help="real-asset folder")
    parser.add_argument("--bridges", nargs="+", default=BRIDGES, choices=BRIDGES)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=0.002)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--ckpt_interval_steps", type=int, default=12)
    parser.add_argument("--max_new_tokens", type=int, default=28)
    parser.add_argument("--seed", type=int, default=1986)
    parser.add_argument("--results", default=RESULTS)
    parser.add_argument("--gradient_results", default=GRADIENTS)
    parser.add_argument(
        "--last_step", type=int, default=36, help="gradients: the last snapshot"
    )
    args = parser.parse_args(argv)
    if args.mode == "gradients":
        for bridge in args.bridges:
            gradients(args.out, bridge, args.last_step)
        return
    if args.mode == "run":
        settings = {
            k: getattr(args, k)
            for k in (
                "batch_size",
                "lr",
                "epochs",
                "ckpt_interval_steps",
                "max_new_tokens",
                "seed",
            )
        }
        status = run(args.out, RealAssets(args.assets), settings, args.bridges)
        sys.exit(max(status.values()))
    report = collect(args.out, args.results, args.bridges)
    print(json.dumps(report["bridges"], indent=1))
    gradient_report = collect_gradients(args.out, args.gradient_results, args.bridges)
    print(
        f"gradients of {sorted(gradient_report['bridges'])} -> {args.gradient_results}"
    )


if __name__ == "__main__":
    main()
