"""``make demo-tiny``: Soft-MoA on a mini ESC-50, end to end, offline, on CPU.

Generates a mini ESC-50 (official layout, 44.1 kHz clips of class-dependent
tones) and a tiny random AST into ``demo_output/``, trains the ESC-50 recipe
(``recipes/ESC50/PETL/train.py``) with ``--petl_method=soft_moa`` for a few
epochs, and prints the test accuracy and where the training log is.

Run (from the repository root; ``make demo-tiny`` does)::

    python tools/demo_tiny.py [--output_folder demo_output] [--epochs 8]

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the repository's synthetic data generators

from speechbrain_moe.crossval import read_test_accuracy  # noqa: E402
from synthetic import generate  # noqa: E402
from synthetic.models import make_tiny_ast  # noqa: E402

NUM_CLASSES = 5


def demo_command(output_folder, epochs=8):
    """The recipe command line the demo runs.

    Arguments
    ---------
    output_folder : str
        Demo folder (data, model and results go there).
    epochs : int
        Training epochs.

    Returns
    -------
    list of str

    Example
    -------
    >>> cmd = demo_command("demo_output")
    >>> cmd[1].endswith("train.py"), "--petl_method=soft_moa" in cmd
    (True, True)
    """
    out = Path(output_folder).resolve()
    recipe = REPO / "recipes" / "ESC50" / "PETL"
    return [
        sys.executable,
        str(recipe / "train.py"),
        str(recipe / "hparams" / "ast.yaml"),
        f"--data_folder={out / 'ESC-50'}",
        f"--backbone_source={out / 'tiny_ast'}",
        f"--output_folder={out / 'results'}",
        "--petl_method=soft_moa",
        f"--n_classes={NUM_CLASSES}",
        f"--number_of_epochs={epochs}",
        "--max_frames=100",
        "--batch_size=4",
        "--lr=0.01",
        "--device=cpu",
    ]


def main(argv=None):
    """Runs the demo (``argv``: the command line) and returns its test accuracy."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output_folder", default="demo_output")
    parser.add_argument("--epochs", type=int, default=8)
    args = parser.parse_args(argv)
    out = Path(args.output_folder).resolve()
    start = time.time()
    data = out / "ESC-50"
    if not (data / "meta" / "esc50.csv").is_file():
        generate(
            "esc50", str(data), num_classes=NUM_CLASSES, clips_per_class_per_fold=3
        )
    if not (out / "tiny_ast" / "config.json").is_file():
        make_tiny_ast(str(out / "tiny_ast"))
    print(f"Mini ESC-50 ({NUM_CLASSES} classes) and tiny AST in {out}", flush=True)
    cmd = demo_command(out, args.epochs)
    print("Running:", " ".join(cmd), flush=True)
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    subprocess.run(cmd, check=True, cwd=str(out), env=env)
    log = out / "results" / "train_log.txt"
    accuracy = read_test_accuracy(str(log))
    print(
        f"\nSoft-MoA on mini ESC-50: test accuracy {accuracy:.3f} "
        f"(chance {1 / NUM_CLASSES:.3f}) in {time.time() - start:.0f} s"
    )
    print(f"Training log: {log}")
    return accuracy


if __name__ == "__main__":
    main()
