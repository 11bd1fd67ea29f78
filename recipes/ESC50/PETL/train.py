#!/usr/bin/env python3
"""Recipe: parameter-efficient fine-tuning of an audio encoder on ESC-50.

The backbone (AST, Whisper encoder or WavLM: ``hparams/<backbone>.yaml``) is
adapted by the PETL method named by ``petl_method`` (Soft-MoA, Dense-MoA, the
sparse MoE-Adapter, a bottleneck adapter, LoRA, ...: a YAML file shipped in
``speechbrain_moe/hparams/petl/`` or the path of your own); a LayerNorm +
linear head classifies the pooled embedding.

To run one fold::

    python train.py hparams/ast.yaml --data_folder=/path/to/ESC-50 \\
        [--petl_method=soft_moa] [--petl_overrides="{num_experts: 8}"] [--fold=1]

All five folds, mean ± std accuracy::

    python cross_validate.py hparams/ast.yaml --data_folder=/path/to/ESC-50 \\
        --output_folder=results/ESC50/cv

Multi-GPU (or CPU) DDP::

    torchrun --standalone --nproc_per_node=2 train.py hparams/ast.yaml \\
        --data_folder=... [--device=cpu --distributed_backend=gloo]

The output folder is also the inference folder (``inference.yaml``, see
``speechbrain_moe.inference.PETLAudioClassifier``).

Authors
 * speechbrain-moe contributors 2026
"""

import logging
import sys

import speechbrain as sb
from esc50_prepare import prepare_esc50
from hyperpyyaml import load_hyperpyyaml
from speechbrain.utils.distributed import run_once_per_node

from speechbrain_moe.brain import PETLClassifierBrain
from speechbrain_moe.dataio import classification_datasets
from speechbrain_moe.distributed import close_process_group
from speechbrain_moe.experiment import Experiment, merge_overrides
from speechbrain_moe.inference import export_inference_hparams
from speechbrain_moe.labels import training_classes
from speechbrain_moe.tensorboard import open_tensorboard
from speechbrain_moe.upcycling import plan_upcycling


def dataio_prep(hparams):
    """Train/valid/test datasets (``id``, ``sig`` at 16 kHz, ``label_encoded``).

    Arguments
    ---------
    hparams : dict
        The recipe's hyper-parameters.

    Returns
    -------
    dict
        ``{"train", "valid", "test"}`` -> ``DynamicItemDataset``.
    """
    datasets = classification_datasets(
        {
            "train": hparams["train_csv"],
            "valid": hparams["valid_csv"],
            "test": hparams["test_csv"],
        },
        hparams["label_encoder"],
        hparams["label_encoder_file"],
        sample_rate=hparams["sample_rate"],
        max_seconds=hparams["backbone"].max_duration,
    )
    return datasets


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    # The output folder holds one experiment: another configuration is
    # refused here, before any file is written (speechbrain_moe/experiment.py).
    experiment = Experiment(hparams_file, overrides, run_opts)
    hparams = experiment.settings  # plain values; the model is built below
    experiment.check_folder(overwrite=hparams["overwrite_experiment"])

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    # Python warnings go through SpeechBrain's logging too: into log.txt, and
    # to the console by a handler that never writes onto a progress bar.
    logging.captureWarnings(True)
    run_once_per_node(
        prepare_esc50,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["output_folder"],
            "test_fold": hparams["fold"],
            "valid_fold": hparams["valid_fold"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    # The head has one output per class of the training data (n_classes
    # only checks it), so the YAML is loaded once the data is prepared.
    label_encoder = training_classes(
        hparams["train_csv"], hparams["label_encoder_file"], hparams["n_classes"]
    )
    overrides = merge_overrides(overrides, {"n_classes": len(label_encoder)})
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    # --petl_init_from: the mixture starts from a finished single-adapter
    # run (checked here, before the run is recorded; applied when the fit
    # starts, unless a checkpoint is resumed: speechbrain_moe/upcycling.py).
    upcycling = plan_upcycling(
        hparams["petl_init_from"],
        hparams["backbone"],
        hparams["classifier"],
        labels=[label_encoder.ind2lab[i] for i in range(len(label_encoder))],
        options=hparams["petl_init_options"],
        identity=experiment.identity,
    )
    datasets = dataio_prep(hparams)
    run_once_per_node(
        export_inference_hparams,
        args=[hparams_file, overrides, hparams["output_folder"]],
        kwargs=dict(
            keys=["sample_rate", "backbone", "classifier", "label_encoder"],
            loadables=["backbone", "classifier", "label_encoder"],
            card={"task": "audio-classification", "dataset": "ESC-50"},
        ),
    )
    # <output_folder>/experiment.json, and the identity in every checkpoint
    experiment.record(
        labels=[label_encoder.ind2lab[i] for i in range(len(label_encoder))]
    )
    hparams["checkpointer"].add_recoverable(
        "experiment", experiment, optional_load=True
    )
    tensorboard = None
    if hparams["use_tensorboard"]:
        tensorboard = open_tensorboard(hparams["tensorboard_logs_folder"])

    brain = PETLClassifierBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        train_logger=hparams["train_logger"],
        lr_schedule=hparams["lr_schedule"],
        tensorboard=tensorboard,
        init_from=upcycling,
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

    # All ranks: frees the process group now, not at interpreter exit
    # (where gloo can abort a run that succeeded; see its docstring).
    close_process_group(brain)
