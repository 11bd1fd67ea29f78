"""Runs a recipe's ``train.py`` for several PETL methods in one process.

Used by the recipe tests to pay Python's and the libraries' start-up once per
recipe rather than once per method::

    python tests/recipe_runner.py RECIPE_DIR HPARAMS OUT_DIR METHODS [ARGS...]

``METHODS`` is comma-separated; method ``m`` writes to ``OUT_DIR/m``. Each run
goes through the script's ``__main__`` with a real command line. Under
``torchrun`` each rank also saves the trained weights (backbone's trainable
tensors and the head) to ``OUT_DIR/m/weights_rank<RANK>.pt``.
"""

import os
import runpy
import sys
import traceback

import torch


def main(argv):
    """Runs every method; exits non-zero naming the methods that failed."""
    recipe_dir, hparams, out_dir, methods, *args = argv
    sys.path.insert(0, recipe_dir)
    failed = []
    for method in methods.split(","):
        sys.argv = [
            f"{recipe_dir}/train.py",
            hparams,
            f"--petl_method={method}",
            f"--output_folder={out_dir}/{method}",
            *args,
        ]
        try:
            env = runpy.run_path(f"{recipe_dir}/train.py", run_name="__main__")
            if "RANK" in os.environ:
                run = env["hparams"]
                weights = {
                    f"backbone.{k}": v
                    for k, v in run["backbone"].trainable_state_dict().items()
                }
                for k, v in run["classifier"].state_dict().items():
                    weights[f"classifier.{k}"] = v
                torch.save(
                    weights, f"{out_dir}/{method}/weights_rank{os.environ['RANK']}.pt"
                )
        except BaseException:  # noqa: B036 - report every failure by method
            traceback.print_exc()
            failed.append(method)
        print(f"=== {method}: {'FAILED' if method in failed else 'ok'}", flush=True)
    if failed:
        sys.exit(f"methods failed: {failed}")


if __name__ == "__main__":
    main(sys.argv[1:])
