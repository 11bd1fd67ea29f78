"""Analyse a trained classification experiment: routing and gradient conflict.

Usage (``EXP`` is a recipe's ``output_folder``)::

    python -m analysis ROUTING --experiment EXP --out figures/
    python -m analysis GRADIENTS --experiment EXP --out figures/ \\
        --groups class_name

The experiment is rebuilt from its own folder: the model from its
``inference.yaml`` and best checkpoint (as
:class:`~speechbrain_moe.inference.PETLAudioClassifier` loads it), the data
from its manifests (``<split>.csv``). ``ROUTING`` runs the split with routing
statistics on and writes ``expert_contribution_per_layer.png``,
``expert_by_class.png``, ``load_balance.png`` and ``routing.json``.
``GRADIENTS`` groups the samples by a manifest column (classes, data sets,
tasks), averages the gradient of the loss w.r.t. the trainable parameters over
``--batches`` batches per group and writes ``gradient_cosine.png`` and
``gradient_cosine.json``. It works for any method, so a dense adapter and a
mixture can be compared on the same data.

For the output folder of an LLM-bridge run (``recipes/LibriSpeech/LLM_bridge``)
``GRADIENTS`` compares its tasks (ASR and the classification task) instead,
w.r.t. the bridge parameters, at each of ``--checkpoints`` (``init`` and/or
checkpoint folders), and writes ``bridge_gradients.json`` (see
:mod:`analysis.bridge_gradients`)::

    python -m analysis GRADIENTS --experiment EXP --out figures/ --split train \\
        --checkpoints init EXP/save/CKPT+...

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import json
import os
import sys
from pathlib import Path

import speechbrain as sb
import torch
from speechbrain.dataio.dataloader import make_dataloader

from analysis.bridge_gradients import (
    bridge_gradient_analysis,
    format_bridge_gradients,
    is_bridge_run,
)
from analysis.gradients import cosine_matrix, mean_group_gradients
from analysis.plots import (
    plot_balance,
    plot_contribution_per_layer,
    plot_expert_by_class,
    plot_gradient_cosine,
)
from analysis.utilisation import UtilisationAccumulator
from speechbrain_moe.dataio import read_clip
from speechbrain_moe.inference import PETLAudioClassifier
from speechbrain_moe.routing import record_routing, routed_modules, routing_context


def parse_args(argv):
    """The command line.

    Arguments
    ---------
    argv : list of str
        Command-line arguments.

    Returns
    -------
    argparse.Namespace

    Example
    -------
    >>> parse_args(["ROUTING", "--experiment", "exp", "--out", "o"]).split
    'test'
    """
    parser = argparse.ArgumentParser(
        prog="python -m analysis", description=__doc__.split("\n")[0]
    )
    parser.add_argument("mode", choices=["ROUTING", "GRADIENTS"])
    parser.add_argument("--experiment", required=True, help="a recipe's output_folder")
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
    parser.add_argument(
        "--checkpoints",
        nargs="+",
        default=["init"],
        help="GRADIENTS of an LLM-bridge run: the points of training, 'init' "
        "and/or checkpoint folders (its save/CKPT+...), in training order",
    )
    return parser.parse_args(argv)


def load_experiment(folder, split="test", device="cpu"):
    """The trained model and a split's data of an experiment folder.

    Arguments
    ---------
    folder : str
        A recipe's ``output_folder``.
    split : str
        Which manifest (``<folder>/<split>.csv``).
    device : str
        Where to run.

    Returns
    -------
    model : PETLAudioClassifier
        With the trained parameters trainable again (for GRADIENTS).
    dataset : DynamicItemDataset
        ``id``, ``sig``, ``label_encoded`` and every manifest column.
    """
    manifest = os.path.join(folder, f"{split}.csv")
    if not os.path.isfile(manifest):
        raise FileNotFoundError(
            f"{manifest} does not exist: --experiment must be the output_folder of "
            "a classification recipe run (it holds the manifests)."
        )
    model = PETLAudioClassifier.from_hparams(
        source=folder, run_opts={"device": device}, freeze_params=False
    )
    model.mods.eval()
    encoder = model.hparams.label_encoder
    dataset = sb.dataio.dataset.DynamicItemDataset.from_csv(manifest)

    @sb.utils.data_pipeline.takes("wav", "class_name")
    @sb.utils.data_pipeline.provides("sig", "label_encoded")
    def pipeline(wav, class_name):
        """Audio at the model's rate and the class index."""
        yield read_clip(wav, model.hparams.sample_rate)
        yield encoder.encode_label_torch(class_name)

    dataset.add_dynamic_item(pipeline)
    dataset.set_output_keys(["id", "sig", "label_encoded"])
    return model, dataset


def log_probs_of(model, batch):
    """Log-posteriors of a batch (with gradients when they are enabled).

    Arguments
    ---------
    model : PETLAudioClassifier
        The loaded model.
    batch : PaddedBatch
        With ``sig``.

    Returns
    -------
    torch.Tensor
        ``[batch, classes]``.
    """
    wavs, lens = batch.sig
    embeddings = model.mods.backbone(wavs.to(model.device), lens.to(model.device))
    return torch.log_softmax(model.mods.classifier(embeddings), dim=-1)


def routing_analysis(model, dataset, out, batch_size=8, method=""):
    """Runs ``dataset`` with routing recorded; writes plots and JSON.

    Arguments
    ---------
    model, dataset
        From :func:`load_experiment`.
    out : pathlib.Path
        Output folder.
    batch_size : int
        Batch size.
    method : str
        For the titles.

    Returns
    -------
    dict
        The summary written to ``routing.json``.
    """
    if not list(routed_modules(model.mods)):
        raise ValueError(
            f"Method {method!r} has no router: ROUTING needs soft_moa, dense_moa or "
            "moe_adapter. Use GRADIENTS for other methods."
        )
    decode = model.hparams.label_encoder.ind2lab
    acc = UtilisationAccumulator()
    with record_routing(model.mods, acc), torch.no_grad():
        for batch in make_dataloader(dataset, batch_size=batch_size):
            acc.set_groups([decode[int(i)] for i in batch.label_encoded.data.view(-1)])
            log_probs_of(model, batch)
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


def gradient_analysis(model, dataset, column, out, batches=4, batch_size=8, method=""):
    """Per-group mean gradients and their cosine matrix; writes plot and JSON.

    Arguments
    ---------
    model : PETLAudioClassifier
        The loaded experiment (trained parameters trainable).
    dataset : DynamicItemDataset
        Samples; ``column`` must be a manifest column.
    column : str
        Column naming each sample's group.
    out, batch_size, method
        As for :func:`routing_analysis`.
    batches : int
        Batches per group.

    Returns
    -------
    dict
        ``groups``, ``cosine`` and ``num_parameters``.
    """
    with dataset.output_keys_as(["id", column]):
        try:
            groups = sorted({item[column] for item in dataset})
        except KeyError as err:
            raise KeyError(
                f"Column {column!r} is not in the manifest; pass --groups with one "
                "of its columns (e.g. class_name)."
            ) from err
    loaders = {
        g: make_dataloader(
            dataset.filtered_sorted(key_test={column: lambda v, g=g: v == g}),
            batch_size=batch_size,
        )
        for g in groups
    }
    params = [p for p in model.mods.parameters() if p.requires_grad]
    head = {id(p) for p in model.mods.classifier.parameters()}
    body = [p for p in params if id(p) not in head] or params

    def loss_fn(batch):
        """NLL plus auxiliary losses of one batch, with gradients on."""
        with torch.enable_grad():
            labels = batch.label_encoded.data.to(model.device).view(-1)
            with routing_context(model.mods) as routing:
                log_probs = log_probs_of(model, batch)
            nll = torch.nn.functional.nll_loss(log_probs, labels)
            return nll + routing.aux_loss

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


def format_matrix(names, matrix):
    """A cosine matrix as a table with its group names.

    Arguments
    ---------
    names : list of str
        Group names.
    matrix : list of list of float
        Pairwise cosines.

    Returns
    -------
    str

    Example
    -------
    >>> print(format_matrix(["dog", "rain"], [[1.0, -0.5], [-0.5, 1.0]]))
             dog   rain
    dog    1.000 -0.500
    rain  -0.500  1.000
    """
    width = max(6, *(len(n) for n in names)) + 1
    lines = [" " * width + "".join(f"{n[: width - 1]:>{width}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>{width}.3f}" for v in row))
    return "\n".join(lines)


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default ``sys.argv[1:]``).
    """
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.mode == "GRADIENTS" and is_bridge_run(args.experiment):
        result = bridge_gradient_analysis(
            args.experiment,
            args.out,
            args.checkpoints,
            args.split,
            args.batches,
            args.batch_size,
            args.device,
        )
        print(format_bridge_gradients(result))
        print(f"Wrote {Path(args.out).resolve()}")
        return
    model, dataset = load_experiment(args.experiment, args.split, args.device)
    method = getattr(model.mods.backbone, "petl_method", "")
    out = Path(args.out)
    if args.mode == "ROUTING":
        summary = routing_analysis(model, dataset, out, args.batch_size, method)
        for layer, entry in summary["layers"].items():
            print(f"{layer}: balance {entry['balance']}")
    else:
        result = gradient_analysis(
            model, dataset, args.groups, out, args.batches, args.batch_size, method
        )
        print(format_matrix(result["groups"], result["cosine"]))
    print(f"Wrote {out.resolve()}")


if __name__ == "__main__":
    main()
