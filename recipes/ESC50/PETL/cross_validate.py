#!/usr/bin/env python3
"""Runs the ESC-50 recipe on all five folds and reports mean ± std accuracy.

::

    python cross_validate.py hparams/ast.yaml --data_folder=/path/to/ESC-50 \\
        --output_folder=results/ESC50/cv [--petl_method=soft_moa] [--nproc=2]

Fold ``k`` writes to ``<output_folder>/fold<k>``; the summary goes to
``<output_folder>/cross_validation.json``. Other arguments are passed to
``train.py``.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from speechbrain_moe.recipe import cross_validation_main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    cross_validation_main(os.path.join(here, "train.py"), default_folds=5)
