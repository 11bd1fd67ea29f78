#!/usr/bin/env python3
"""Runs the UrbanSound8K recipe on its ten folds and reports mean ± std accuracy.

::

    python cross_validate.py hparams/ast.yaml --data_folder=/path/to/UrbanSound8K \\
        --output_folder=results/US8K/cv [--folds=1,2] [--rerun_finished] [--nproc=2] \\
        [--petl_method=soft_moa ...]

The audio is checked once for all folds; fold ``k`` trains in
``<output_folder>/fold<k>``; ``<output_folder>/cross_validation.json`` holds
the finished folds, their mean and sample standard deviation, and keeps them
across invocations: ``--folds=3,4,5`` later adds those folds, and the mean is
over every recorded fold. A fold with a recorded result is skipped unless
``--rerun_finished`` is given (with ``--overwrite_experiment=True`` it is
trained afresh); folds of another configuration in the same output folder
are refused. ``--fold`` is refused (use ``--folds``). Other arguments go to
``train.py``.

Authors
 * speechbrain-moe contributors 2026
"""

import os

from urbansound8k_prepare import NUM_FOLDS, prepare_folds

from speechbrain_moe.crossval import cross_validation_main

if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    cross_validation_main(os.path.join(here, "train.py"), NUM_FOLDS, prepare_folds)
