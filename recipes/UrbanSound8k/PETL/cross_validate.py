#!/usr/bin/env python3
"""Runs the UrbanSound8K recipe on its ten folds and reports mean ± std accuracy.

::

    python cross_validate.py hparams/ast.yaml --data_folder=/path/to/UrbanSound8K \\
        --output_folder=results/US8K/cv [--folds=1,2] [--nproc=2] \\
        [--petl_method=soft_moa ...]

The audio is checked once for all folds; fold ``k`` trains in
``<output_folder>/fold<k>``; ``<output_folder>/cross_validation.json`` holds
the finished folds, their mean and sample standard deviation. Other arguments
go to ``train.py``.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from urbansound8k_prepare import NUM_FOLDS, prepare_folds

from speechbrain_moe.crossval import cross_validation_main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    cross_validation_main(os.path.join(here, "train.py"), NUM_FOLDS, prepare_folds)
