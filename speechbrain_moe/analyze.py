"""Analyse a trained classification experiment: routing and gradient conflict.

Usage (same YAML and overrides as the training run)::

    python -m speechbrain_moe.analyze ROUTING \\
        --hparams recipes/ESC50/PETL/hparams/ast.yaml --out analysis/ \\
        --data_folder=... --output_folder=... --petl_method=soft_moa

    python -m speechbrain_moe.analyze GRADIENTS \\
        --hparams recipes/ESC50/PETL/hparams/ast.yaml --out analysis/ \\
        --groups class_name --data_folder=... --output_folder=...

``ROUTING`` runs the test set with routing statistics on and writes
``expert_contribution_per_layer.png``, ``expert_by_class.png``,
``load_balance.png`` and ``routing.json``. ``GRADIENTS`` groups the samples by a
manifest column (classes, data sets, tasks), averages the gradient of the loss
w.r.t. the trainable parameters over ``--batches`` batches per group and writes
``gradient_cosine.png`` and ``gradient_cosine.json``. It works for any method,
so a dense adapter and a mixture can be compared on the same data.

The experiment is rebuilt exactly as its ``train.py`` builds it (its
``dataio_prep`` and :func:`speechbrain_moe.recipe.setup_backbone`) and its best
checkpoint (by accuracy) is loaded.

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import importlib.util
import json
import sys
from pathlib import Path

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from speechbrain.dataio.dataloader import make_dataloader

from speechbrain_moe.analysis.gradients import cosine_matrix, mean_group_gradients
from speechbrain_moe.analysis.plots import (
    plot_balance,
    plot_contribution_per_layer,
    plot_expert_by_class,
    plot_gradient_cosine,
)
from speechbrain_moe.analysis.utilisation import UtilisationAccumulator
from speechbrain_moe.brain import PETLClassifierBrain
from speechbrain_moe.recipe import setup_backbone
from speechbrain_moe.routing import collect_aux_loss, record_routing, routed_modules


def parse_args(argv):
    """Splits the command line into analysis options and YAML overrides.

    Arguments
    ---------
    argv : list of str
        Command-line arguments.

    Returns
    -------
    args : argparse.Namespace
    overrides : dict
        ``--key=value`` pairs for the recipe's YAML.

    Example
    -------
    >>> args, over = parse_args(["ROUTING", "--hparams", "a.yaml", "--out", "o",
    ...                          "--data_folder=/d", "--petl_method=soft_moa"])
    >>> args.mode, over
    ('ROUTING', {'data_folder': '/d', 'petl_method': 'soft_moa'})
    """
    parser = argparse.ArgumentParser(
        prog="python -m speechbrain_moe.analyze", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=["ROUTING", "GRADIENTS"])
    parser.add_argument("--hparams", required=True, help="the recipe YAML of the run")
    parser.add_argument("--out", required=True, help="folder for plots and JSON")
    parser.add_argument(
        "--groups", default="class_name", help="manifest column (GRADIENTS)"
    )
    parser.add_argument("--split", default="test", choices=["train", "valid", "test"])
    parser.add_argument(
        "--batches", type=int, default=4, help="batches per group (GRADIENTS)"
    )
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args, rest = parser.parse_known_args(argv)
    overrides = {}
    for item in rest:
        if not item.startswith("--") or "=" not in item:
            parser.error(f"Override {item!r} must look like --key=value.")
        key, value = item[2:].split("=", 1)
        overrides[key] = value
    return args, overrides


def _import_recipe(hparams_file):
    """Imports the ``train.py`` next to the YAML's ``hparams/`` folder."""
    recipe_dir = Path(hparams_file).resolve().parent.parent
    script = recipe_dir / "train.py"
    if not script.is_file():
        raise FileNotFoundError(
            f"No train.py in {recipe_dir}; --hparams must be a recipe's "
            "hparams/<backbone>.yaml."
        )
    sys.path.insert(0, str(recipe_dir))
    spec = importlib.util.spec_from_file_location("recipe_train", script)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "dataio_prep"):
        raise AttributeError(f"{script} defines no dataio_prep(hparams).")
    return module


def load_experiment(hparams_file, overrides, device="cpu"):
    """Rebuilds a trained experiment and loads its best checkpoint.

    Arguments
    ---------
    hparams_file : str
        The recipe YAML used for training.
    overrides : dict
        The same overrides as the training run.
    device : str
        Where to run.

    Returns
    -------
    brain : PETLClassifierBrain
    datasets : dict
    label_encoder : CategoricalEncoder
    hparams : dict
    """
    recipe = _import_recipe(hparams_file)
    yaml_overrides = "\n".join(f"{k}: {v}" for k, v in overrides.items())
    with open(hparams_file, encoding="utf-8") as fin:
        hparams = load_hyperpyyaml(fin, yaml_overrides)
    checkpointer = hparams["checkpointer"]
    if checkpointer.find_checkpoint(max_key="accuracy") is None:
        raise FileNotFoundError(
            f"No checkpoint in {checkpointer.checkpoints_dir}. Train first with the "
            "same YAML and overrides (the analysis loads the best checkpoint)."
        )
    datasets, label_encoder = recipe.dataio_prep(hparams)
    setup_backbone(
        hparams, method=hparams["petl_method"], overrides=hparams["petl_overrides"]
    )
    brain = PETLClassifierBrain(
        modules=hparams["modules"],
        hparams=hparams,
        run_opts={"device": device},
        checkpointer=checkpointer,
    )
    brain.on_evaluate_start(max_key="accuracy")
    brain.on_stage_start(sb.Stage.TEST)
    brain.modules.eval()
    return brain, datasets, label_encoder, hparams


def routing_analysis(brain, dataset, label_encoder, out, batch_size=8, method=""):
    """Runs ``dataset`` with routing recorded; writes plots and JSON.

    Arguments
    ---------
    brain : PETLClassifierBrain
        The loaded experiment.
    dataset : DynamicItemDataset
        Samples with ``sig`` and ``label_encoded``.
    label_encoder : CategoricalEncoder
        Decodes the class names.
    out : pathlib.Path
        Output folder.
    batch_size : int
        Batch size.
    method : str
        Method name (titles).

    Returns
    -------
    dict
        The summary written to ``routing.json``.
    """
    if not list(routed_modules(brain.modules)):
        raise ValueError(
            f"Method {method!r} has no router: ROUTING needs soft_moa, dense_moa or "
            "moe_adapter. Use GRADIENTS for other methods."
        )
    acc = UtilisationAccumulator()
    loader = make_dataloader(dataset, batch_size=batch_size)
    with record_routing(brain.modules, acc), torch.no_grad():
        for batch in loader:
            labels = batch.label_encoded.data.view(-1).tolist()
            acc.set_groups([label_encoder.ind2lab[i] for i in labels])
            brain.compute_forward(batch, sb.Stage.TEST)
            collect_aux_loss(brain.modules)
    summary = acc.summary()
    summary["method"] = method
    out.mkdir(parents=True, exist_ok=True)
    (out / "routing.json").write_text(json.dumps(summary, indent=2))
    plot_contribution_per_layer(
        summary, out / "expert_contribution_per_layer.png", method
    )
    plot_expert_by_class(summary, out / "expert_by_class.png", method=method)
    plot_balance(summary, out / "load_balance.png", method)
    return summary


def gradient_analysis(brain, dataset, column, out, batches=4, batch_size=8, method=""):
    """Per-group mean gradients and their cosine matrix; writes plot and JSON.

    Arguments
    ---------
    brain : PETLClassifierBrain
        The loaded experiment.
    dataset : DynamicItemDataset
        Samples; ``column`` must be a manifest column.
    column : str
        Column naming each sample's group.
    out : pathlib.Path
        Output folder.
    batches : int
        Batches per group.
    batch_size : int
        Batch size.
    method : str
        Method name (titles).

    Returns
    -------
    dict
        ``groups``, ``cosine`` and ``num_parameters``.
    """
    keys = ["id", column]
    with dataset.output_keys_as(keys):
        try:
            groups = sorted({item[column] for item in dataset})
        except KeyError as err:
            raise KeyError(
                f"Column {column!r} is not in the manifest; pass --groups."
            ) from err
    loaders = {
        g: make_dataloader(
            dataset.filtered_sorted(key_test={column: lambda v, g=g: v == g}),
            batch_size=batch_size,
        )
        for g in groups
    }
    params = [p for p in brain.modules.parameters() if p.requires_grad]
    head = {id(p) for p in brain.modules.classifier.parameters()}
    body = [p for p in params if id(p) not in head] or params

    def loss_fn(batch):
        """NLL plus auxiliary losses of one batch, with gradients on."""
        with torch.enable_grad():
            predictions = brain.compute_forward(batch, sb.Stage.TEST)
            labels = batch.label_encoded.data.to(brain.device).view(-1)
            return torch.nn.functional.nll_loss(predictions, labels) + collect_aux_loss(
                brain.modules
            )

    grads = mean_group_gradients(body, loaders, loss_fn, max_batches=batches)
    names, matrix = cosine_matrix(grads)
    result = {
        "method": method,
        "groups": names,
        "cosine": matrix,
        "num_parameters": int(sum(p.numel() for p in body)),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "gradient_cosine.json").write_text(json.dumps(result, indent=2))
    plot_gradient_cosine(names, matrix, out / "gradient_cosine.png", method)
    return result


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    args, overrides = parse_args(sys.argv[1:] if argv is None else argv)
    brain, datasets, label_encoder, hparams = load_experiment(
        args.hparams, overrides, device=args.device
    )
    method = hparams["petl_method"]
    out = Path(args.out)
    dataset = datasets[args.split]
    if args.mode == "ROUTING":
        summary = routing_analysis(
            brain, dataset, label_encoder, out, args.batch_size, method
        )
        for layer, entry in summary["layers"].items():
            print(f"{layer}: balance {entry['balance']}")
    else:
        result = gradient_analysis(
            brain, dataset, args.groups, out, args.batches, args.batch_size, method
        )
        print(json.dumps(result["cosine"]))
    print(f"Wrote {out.resolve()}")


if __name__ == "__main__":
    main()
