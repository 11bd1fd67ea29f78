"""A packaged folder as a movable unit of trained adapters (as a peft adapter
folder): :func:`load_adapters` puts a task's trained tensors onto a backbone
instance the user already has, after checking that it is the backbone they
were trained on (the same lobe, source, config and lobe settings).

The folder :func:`~speechbrain_moe.inference.export.package_experiment`
writes holds the trained tensors only (``backbone.ckpt``: adapters, trained
norms; ``classifier.ckpt``: the head), the method file it was trained with
and ``inference.yaml``; its model card gives its size. The frozen backbone
comes from its source, so one copy of it can serve (in turn) the units of
several tasks. :func:`~speechbrain_moe.petl.disable.disable_adapters` gives
the frozen backbone back without unloading.

Authors
 * speechbrain-moe contributors 2026
"""

import os

import ruamel.yaml
import torch

from speechbrain_moe.inference.export import verify_package
from speechbrain_moe.lobes.base import adaptation_of
from speechbrain_moe.petl import apply_method
from speechbrain_moe.recoverables import DESCRIPTION_KEY

# Config entries that record where and how a config was saved, not the model.
BOOKKEEPING = ("_name_or_path", "transformers_version", "architectures", "torch_dtype")


def recorded_backbone(folder):
    """The lobe class and its plain arguments (``source``, ``max_frames``,
    ...) that ``inference.yaml`` of a packaged folder builds the backbone with.

    Arguments
    ---------
    folder : str
        A packaged folder.

    Returns
    -------
    lobe : str
        The dotted class name (e.g. ``speechbrain_moe.lobes.ast.AST``).
    arguments : dict
        Its scalar arguments.

    Example
    -------
    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "inference.yaml"), "w").write(
    ...     "backbone: !apply:speechbrain_moe.petl.apply_method\\n"
    ...     "    backbone: !new:speechbrain_moe.lobes.ast.AST\\n"
    ...     "        source: /models/ast\\n        max_frames: 100\\n")
    >>> recorded_backbone(folder)
    ('speechbrain_moe.lobes.ast.AST', {'source': '/models/ast', 'max_frames': 100})
    """
    path = os.path.join(folder, "inference.yaml")
    with open(path, encoding="utf-8") as fin:
        tree = ruamel.yaml.YAML().load(fin) or {}
    stack = [tree.get("backbone")]
    while stack:
        node = stack.pop(0)
        if isinstance(node, dict):
            if "source" in node:
                tag = str(getattr(getattr(node, "tag", None), "value", "") or "")
                plain = {
                    k: v
                    for k, v in node.items()
                    if isinstance(v, (str, int, float, bool)) or v is None
                }
                return tag.split(":", 1)[-1], plain
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    raise ValueError(
        f"{path} builds no backbone with a source (no 'backbone' entry holding "
        "a lobe with source:). load_adapters moves the units of the "
        "recipes/*/PETL recipes; load other folders with their from_hparams."
    )


def _config_dict(config):
    """A Hugging Face config as a dict, without bookkeeping entries."""
    return {
        k: v
        for k, v in config.to_dict().items()
        if k not in BOOKKEEPING and not k.startswith("_")
    }


def backbone_differences(folder, backbone):
    """How ``backbone`` differs from the one the folder's adapters were
    trained on: lobe class, source, config entries and lobe settings.

    Arguments
    ---------
    folder : str
        A packaged folder.
    backbone : speechbrain_moe.lobes.base.Backbone
        A backbone lobe, not adapted.

    Returns
    -------
    list of str
        ``what: recorded -> given`` lines; empty when they agree.

    Example
    -------
    >>> import tempfile
    >>> from transformers import ASTConfig, ASTModel
    >>> from speechbrain_moe.lobes.ast import AST
    >>> source, folder = tempfile.mkdtemp(), tempfile.mkdtemp()
    >>> ASTModel(ASTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
    ...     intermediate_size=64, max_length=100)).save_pretrained(source)
    >>> _ = open(os.path.join(folder, "inference.yaml"), "w").write(
    ...     "backbone: !new:speechbrain_moe.lobes.ast.AST\\n"
    ...     f"    source: {source}\\n    max_frames: 100\\n")
    >>> backbone_differences(folder, AST(source, max_frames=100))
    []
    >>> backbone_differences(folder, AST(source, max_frames=60))
    ['max_frames: 100 -> 60']
    """
    lobe, arguments = recorded_backbone(folder)
    given = f"{type(backbone).__module__}.{type(backbone).__qualname__}"
    if lobe.rpartition(".")[2] != type(backbone).__name__:
        return [f"lobe: {lobe} -> {given}"]
    config = getattr(backbone, backbone.petl_root_name).config
    differences = []
    source, used = str(arguments.get("source")), str(config._name_or_path)
    if os.path.isdir(source) and os.path.isdir(used):
        same = os.path.samefile(source, used)
    else:
        same = source.rstrip("/") == used.rstrip("/")
    if not same:
        differences.append(f"source: {source!r} -> {used!r}")
    if os.path.isdir(source):
        from transformers import AutoConfig

        recorded = _config_dict(AutoConfig.from_pretrained(source))
        # The source's config.json, not the live config: lobes change
        # training-only entries when they load (WavLM: spec augment, layerdrop).
        live = AutoConfig.from_pretrained(used) if os.path.isdir(used) else config
        current = _config_dict(live)
        differences += [
            f"config {key}: {recorded.get(key)!r} -> {current.get(key)!r}"
            for key in sorted(set(recorded) | set(current))
            if recorded.get(key) != current.get(key)
        ]
    for key, value in arguments.items():
        current = getattr(backbone, key, value)
        if key not in ("source", "save_path") and current != value:
            differences.append(f"{key}: {value!r} -> {current!r}")
    return differences


def load_adapters(folder, backbone, check_source=True):
    """Adapts ``backbone`` (in place) with the method of a packaged folder
    and loads the folder's trained tensors onto it.

    The folder is verified against its ``MANIFEST.json`` first. A backbone
    of another lobe, source, config or lobe setting (e.g. ``max_frames``)
    than the recorded one is refused, naming both.

    Arguments
    ---------
    folder : str
        A packaged folder (``<output_folder>/inference_model``, or a copy).
    backbone : speechbrain_moe.lobes.base.Backbone
        A backbone lobe built from the recorded source, not yet adapted.
    check_source : bool
        False accepts another source of the same config (e.g. a local copy
        of the same pretrained weights under another path).

    Returns
    -------
    torch.nn.Module
        The adapted backbone, as the folder's ``PETLAudioClassifier`` has
        it (``petl_method`` and ``petl_settings`` recorded in it by
        :func:`~speechbrain_moe.petl.apply_method`).

    Example
    -------
    >>> load_adapters("/no/such/folder", torch.nn.Linear(2, 2))
    Traceback (most recent call last):
    ...
    FileNotFoundError: /no/such/folder/backbone.ckpt is missing: ...
    """
    folder = str(folder)
    path = os.path.join(folder, "backbone.ckpt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path} is missing: give a packaged folder (<output_folder>/"
            "inference_model, written by PETLAudioClassifier.from_hparams("
            "source=<output_folder>)), or a copy of it."
        )
    verify_package(folder)
    method, _ = adaptation_of(backbone)
    if method is not None:
        raise ValueError(
            f"This {type(backbone).__name__} is already adapted (petl_method "
            f"{method!r}); load_adapters adapts a plain backbone. Build one from "
            "the recorded source (or leave the adapters with disable_adapters)."
        )
    differences = backbone_differences(folder, backbone)
    if not check_source:
        differences = [d for d in differences if not d.startswith("source:")]
    if differences:
        lobe, arguments = recorded_backbone(folder)
        raise ValueError(
            f"The adapters in {folder} were trained on {lobe} from "
            f"{arguments.get('source')!r} ({arguments}), not on the given "
            f"{type(backbone).__name__}: {'; '.join(differences)}. Build the "
            "backbone as recorded in the folder's inference.yaml (or pass "
            "check_source=False for a copy of the same weights elsewhere)."
        )
    saved = torch.load(path, map_location="cpu", weights_only=True)
    about = saved.get(DESCRIPTION_KEY) or {}
    method = about.get("petl_method")
    copy = os.path.join(folder, f"{method}.yaml")
    if method and os.path.isfile(copy):
        method = copy
    if not method:
        raise ValueError(
            f"{path} records no petl_method: the folder was packaged by an "
            "older version. Package the run again."
        )
    adapted = apply_method(backbone, method, about.get("petl_settings"))
    adapted.load_trainable(path)
    return adapted
