#!/usr/bin/env python3
"""Recipe: parameter-efficient fine-tuning of an audio encoder on ESC-50.

The backbone (AST, Whisper encoder or WavLM, see ``hparams/``) is adapted with
the method named by ``petl_method`` (Soft-MoA, Dense-MoA, a bottleneck
adapter, LoRA, ...; settings in the repository's ``hparams/petl/``); a
LayerNorm + linear head classifies the pooled embedding.

To run one fold::

    python train.py hparams/ast.yaml --data_folder=/path/to/ESC-50 \\
        [--petl_method=soft_moa] [--fold=1]

All five folds, mean ± std accuracy::

    python cross_validate.py hparams/ast.yaml --data_folder=/path/to/ESC-50 \\
        --output_folder=results/ESC50/cv

Multi-GPU (or CPU) DDP::

    torchrun --standalone --nproc_per_node=2 train.py hparams/ast.yaml \\
        --data_folder=... [--device=cpu --distributed_backend=gloo]

Authors
 * speechbrain-moe contributors 2026
"""

import os
import sys

import speechbrain as sb
from esc50_prepare import prepare_esc50
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_on_main

from speechbrain_moe.brain import PETLClassifierBrain
from speechbrain_moe.inference import export_inference_hparams
from speechbrain_moe.recipe import classification_datasets, setup_backbone


def dataio_prep(hparams):
    """Train/valid/test datasets (``id``, ``sig`` at 16 kHz, ``label_encoded``).

    Arguments
    ---------
    hparams : dict
        The recipe's hyper-parameters.

    Returns
    -------
    datasets : dict
        ``{"train", "valid", "test"}`` -> ``DynamicItemDataset``.
    label_encoder : speechbrain.dataio.encoder.CategoricalEncoder
        Class name <-> index.
    """
    datasets, label_encoder = classification_datasets(
        {
            "train": hparams["train_csv"],
            "valid": hparams["valid_csv"],
            "test": hparams["test_csv"],
        },
        label_encoder_file=hparams["label_encoder_file"],
        sample_rate=hparams["sample_rate"],
    )
    if len(label_encoder) > hparams["n_classes"]:
        raise ValueError(
            f"The training data has {len(label_encoder)} classes but the head has "
            f"n_classes={hparams['n_classes']}; pass --n_classes={len(label_encoder)}."
        )
    return datasets, label_encoder


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    run_on_main(
        prepare_esc50,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "test_fold": hparams["fold"],
            "valid_fold": hparams["valid_fold"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    datasets, label_encoder = dataio_prep(hparams)
    setup_backbone(
        hparams, method=hparams["petl_method"], overrides=hparams["petl_overrides"]
    )
    # <output_folder>/inference.yaml: loads the trained model for inference
    # (speechbrain_moe.inference.PETLAudioClassifier, see README.md)
    export_inference_hparams(
        os.path.join(
            os.path.dirname(os.path.abspath(__file__)), "hparams", "inference.yaml"
        ),
        hparams,
    )

    brain = PETLClassifierBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        train_logger=hparams["train_logger"],
        lr_schedule=hparams["lr_schedule"],
    )
    brain.fit(
        brain.hparams.epoch_counter,
        datasets["train"],
        datasets["valid"],
        train_loader_kwargs=hparams["train_dataloader_opts"],
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )
    brain.evaluate(
        datasets["test"],
        max_key="accuracy",
        test_loader_kwargs=hparams["test_dataloader_opts"],
    )
