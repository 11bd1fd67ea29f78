"""Upcycling: a mixture that starts from a trained single adapter or LoRA.

A user who has trained a good bottleneck adapter (``petl_method: adapter``)
can grow it into a mixture of bottleneck experts (``dense_moa``,
``soft_moa``, ``moe_adapter``), and a trained LoRA (``petl_method: lora``)
into a mixture of LoRA experts (``dense_lora``, ``soft_lora``, ``moe_lora``,
:mod:`speechbrain_moe.adapters.lora_experts`)::

    python train.py hparams/ast.yaml --petl_method=dense_moa \\
        --petl_overrides="{num_experts: 8, bottleneck: 24}" \\
        --petl_init_from=results/ESC50/ast/adapter/1986/fold1

``--petl_init_from`` names a finished run of the same recipe family (its
output folder, whose best checkpoint by validation accuracy is used, or its
packaged ``inference_model`` folder). Before the first training step every
expert of every mixture is initialised from the source adapter at the same
place, and the head and the trained LayerNorms are the source's own, so the
upcycled model starts as good as the source.

Notation (as in ``docs/design.md``): the source adapter at one place is
``A(x) = W2 act(W1 x + b1) + b2`` of bottleneck ``r``; the mixture has ``N``
experts ``E_i`` of bottleneck ``r_e`` in an
:class:`~speechbrain_moe.experts.ExpertBank`. A LoRA is the same with no
activation and no biases, ``A(x) = s B A x`` (``W1 = A = adapter_down_proj``,
``W2 = B = adapter_up_proj``, ``s = alpha / rank``); a mixture of LoRA
experts scales its sum by its own ``s_e = alpha_e / rank_e``, so the experts'
up-projections are ``B * s / s_e`` (exact for any ``alpha_e``). A source
expert at place ``P`` (the wrapper around a block for an adapter, the
wrapped linear layer for LoRA) seeds the bank of the mixture at ``P``
(``P.adapter.experts`` / ``P.mixture.experts``); the bank layout is
``down_weight[:, i] = W1^T`` ``[d, r]``, ``up_weight[i] = W2^T``
``[r, d_out]``, ``down_bias[i] = b1``, ``up_bias[i] = b2``.

Constructions (``--petl_init_options="{construction: copy}"``):

``copy`` (default)
    Every expert is the source adapter: ``E_i = A`` (when ``r_e > r`` the
    extra hidden units keep their random down-projection and get a zero
    up-projection, so they add nothing at step 0 and still learn). The
    routers keep their random initialisation. At step 0:

    * Dense-MoA and ``dense_lora``: ``y = sum_i g_i A(x) = A(x)`` since
      the gates sum to one: **exact**;
    * top-k MoE-Adapter with ``routing: topk_softmax`` (weights renormalised
      over the k chosen experts): ``y = sum_{i in S} w_i A(LN(x)) = A(LN(x))``:
      **exact** when its experts compute what the adapter computes, i.e. no
      LayerNorm in front (``norm: False``) and the adapter's activation
      (GELU); the packaged ``moe_adapter`` file has a LayerNorm and SiLU
      experts, so its step 0 is *close to, not equal to*, the source (a
      warning says so). With ``routing: softmax_topk`` the k weights sum to
      less than one: not exact either. The top-k mixtures give *padded*
      tokens no output while the adapter adapts every token, so the
      equality holds on unpadded inputs (a clip as long as ``max_frames``
      or longer); an encoder whose attention reads padded tokens (AST) sees
      the difference through them. ``moe_lora`` (no LayerNorm, identity
      activation) is exact likewise;
    * Soft-MoA and ``soft_lora``: **not exact**. Each token's output is a
      combination of the experts' outputs on the *slots*, ``y_t = sum_s
      C_ts A(xs_s)``, and each slot ``xs_s = sum_t' D_t's x_t'`` averages
      many tokens. For a LoRA (``A`` linear) this is ``A(sum_s C_ts
      xs_s)``: ``A`` of a mixture of token averages instead of ``A(x_t)``;
      for a bottleneck adapter, in addition, ``A(average) != average(A)``.
      It is exact only for a sequence of one token (then every slot is that
      token). The experts are still exact copies of ``A``, and the head and
      norms are the source's.

    Why identical experts still diverge in training: the gradient reaching
    expert ``i`` through token ``t`` is scaled by that token's gate ``g_ti``
    (Dense-MoA), its routing weight (top-k, and only for the tokens routed
    to it) or its slot's dispatch/combine weights (Soft-MoA). A randomly
    initialised router gives every expert another weighting of the tokens,
    so after one step the experts differ, and then the router's own
    gradient (zero at step 0, when all experts agree) starts to separate
    them further. (With a *zero* router the gates would be uniform, every
    expert would receive the same gradient and they would stay identical
    forever: the routers are therefore left random.)

``slice``
    The source's ``r`` hidden units are split into ``N`` experts of
    ``r_e = r / N`` units (``N * r_e == r`` is required), expert ``i``
    holding units ``[i r_e, (i + 1) r_e)`` with its up-projection scaled by
    ``N`` and the up bias ``b2``; the router is zeroed, so that every
    expert gets gate ``1/N`` at step 0 and ``sum_i (1/N) N A_i(x) = A(x)``:
    **exact** for Dense-MoA, and for the top-k MoE-Adapter only when
    ``top_k == num_experts`` (with ``k < N`` a token would get only ``k`` of
    the ``N`` slices, which do not sum to ``A``: refused). Soft-MoA refuses
    slices (a token's output mixes the slots of different slices with
    weights that do not give each slice the same share). The experts differ
    from the start, so the router learns from step 1.

``noise`` (default 0.0) adds ``noise * std(W1) * N(0, 1)`` to every
expert's down-projection (drawn from a generator seeded by the source's
SHA-256, so every DDP rank draws the same values); any ``noise > 0`` breaks
the step-0 equality above, which is why the default is 0 (the routers
already make the experts diverge).

Refused, with the reason and the fix: a source folder that is not a finished
run (no complete checkpoint with a validation accuracy) or fails its
``MANIFEST.json`` check; a source of another backbone (lobe, source, config
or lobe setting); a source run of another data split (``fold``,
``valid_fold``: its training data holds this run's test clips); another
``placement`` or ``mode`` than the target; a
source that trained its LayerNorms when the target does not; a LoRA source
whose layers are not the target's (``target_layers``); a source method that
is neither a single bottleneck adapter nor LoRA (prompts, prefixes, BitFit,
Convpass (its experts would need the convolution), another mixture); a
target method that is not a mixture of the source's kind of experts (an
adapter seeds bottleneck experts, a LoRA LoRA experts); a head trained on
other classes.

The source is part of the run's identity (:mod:`speechbrain_moe.experiment`:
``petl_init_from`` and ``petl_init_from_sha256``, the SHA-256 of the source's
weights), so a rerun into the same output folder with another source is
refused; a rerun with the same source resumes its own checkpoint and is not
initialised from the source again (:class:`~speechbrain_moe.brain.PETLClassifierBrain`
initialises only a run that recovered nothing).

Authors
 * speechbrain-moe contributors 2026
"""

import dataclasses
import functools
import hashlib
import inspect
import json
import os

import torch
import torch.nn as nn
from speechbrain.dataio.encoder import CategoricalEncoder
from speechbrain.utils.logger import get_logger

from speechbrain_moe.adapters.bottleneck import BottleneckAdapter
from speechbrain_moe.adapters.dense_moa import DenseMoA
from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.adapters.moe import SparseMoE
from speechbrain_moe.adapters.soft_moa import SoftMoA
from speechbrain_moe.checkpoints import MANIFEST
from speechbrain_moe.hparams_files import load_hparams
from speechbrain_moe.lobes.base import adaptation_of
from speechbrain_moe.recoverables import DESCRIPTION_KEY
from speechbrain_moe.settings import check_settings, choice, number

logger = get_logger(__name__)

#: The interface whose run folders can be upcycled (``recipes/*/PETL``).
CLASSIFIER_INTERFACE = "speechbrain_moe.inference.PETLAudioClassifier"
CONSTRUCTIONS = ("copy", "slice")
#: The settings of ``--petl_init_options`` and their defaults.
INIT_OPTIONS = {
    "construction": choice(*CONSTRUCTIONS, meaning="how the experts are built"),
    "noise": number(0, meaning="relative std of the experts' perturbation"),
}
INIT_DEFAULTS = {"construction": "copy", "noise": 0.0}
#: The mixtures whose experts an adapter can seed.
MIXTURES = (DenseMoA, SoftMoA, SparseMoE)
FIX_SOURCE = (
    "Give --petl_init_from the output folder of a finished run of a "
    "recipes/*/PETL recipe with petl_method adapter (or its inference_model "
    "folder), or leave it null to start the mixture from scratch."
)


class UpcyclingError(ValueError):
    """A source run that cannot seed this mixture; the message names why and
    the fix.

    Example
    -------
    >>> try:
    ...     check_init_options({"noise": -1})
    ... except UpcyclingError as err:
    ...     print("--petl_init_options" in str(err))
    True
    """


def check_init_options(options):
    """The upcycling options with their defaults, checked.

    Arguments
    ---------
    options : dict or None
        ``--petl_init_options`` (``construction``, ``noise``).

    Returns
    -------
    dict
        ``construction`` and ``noise``.

    Example
    -------
    >>> check_init_options({"noise": 0.01})
    {'construction': 'copy', 'noise': 0.01}
    >>> check_init_options({"construction": "split"})
    Traceback (most recent call last):
    ...
    speechbrain_moe.upcycling.UpcyclingError: petl_init_options: construction (how the experts are built) must be one of copy, slice, got 'split' (str). Set construction in that file, or pass --petl_init_options="{construction: copy}".
    """
    options = {} if options is None else options
    if not isinstance(options, dict):
        raise UpcyclingError(
            f"petl_init_options must be a mapping, got {options!r}. Pass e.g. "
            '--petl_init_options="{construction: copy, noise: 0.0}".'
        )
    unknown = sorted(set(options) - set(INIT_OPTIONS))
    if unknown:
        raise UpcyclingError(
            f"petl_init_options has no setting(s) {unknown}. Valid settings: "
            f"{', '.join(INIT_OPTIONS)}."
        )
    values = {**INIT_DEFAULTS, **options}
    try:
        check_settings(
            values,
            "petl_init_options",
            lambda name, example: f'--petl_init_options="{{{name}: {example}}}"',
            schema=INIT_OPTIONS,
            rules=[],
        )
    except ValueError as err:
        raise UpcyclingError(str(err)) from err
    values["noise"] = float(values["noise"])
    return values


@dataclasses.dataclass
class SourceFiles:
    """Where a source run's trained tensors are.

    Arguments
    ---------
    folder : str
        The folder given (a run's output folder or a packaged folder).
    inference_file : str
        Its ``inference.yaml``.
    backbone : str
        The trained tensors of the backbone (``backbone.ckpt``).
    classifier : str
        The head (``classifier.ckpt``).
    label_encoder : str
        The label encoder of the head's classes.

    Example
    -------
    >>> files = SourceFiles("run", "run/inference.yaml", "b.ckpt", "c.ckpt", "l.txt")
    >>> files.backbone
    'b.ckpt'
    """

    folder: str
    inference_file: str
    backbone: str
    classifier: str
    label_encoder: str


def find_source(folder):
    """The files a source run seeds a mixture with, verified.

    A run's output folder (it has ``save/``) gives its best complete
    checkpoint by validation accuracy, checked against the checkpoint's
    ``MANIFEST.json``; a packaged folder is checked against its own
    ``MANIFEST.json`` (one without a manifest is refused).

    Arguments
    ---------
    folder : str
        ``--petl_init_from``.

    Returns
    -------
    SourceFiles

    Example
    -------
    >>> find_source("/no/such/run")
    Traceback (most recent call last):
    ...
    speechbrain_moe.upcycling.UpcyclingError: petl_init_from=/no/such/run does not exist. ...
    """
    # Imported here: the inference package imports the PETL methods, which
    # the experiment's identity (importing this module) must not need first.
    from speechbrain_moe.inference.export import read_header, verify_package
    from speechbrain_moe.inference.verify import best_checkpoint

    folder = str(folder)
    if not os.path.isdir(folder):
        raise UpcyclingError(f"petl_init_from={folder} does not exist. {FIX_SOURCE}")
    inference_file = os.path.join(folder, "inference.yaml")
    save = os.path.join(folder, "save")
    if not os.path.isfile(inference_file):
        raise UpcyclingError(
            f"petl_init_from={folder} is not a run folder of the recipes: it has "
            f"no inference.yaml. {FIX_SOURCE}"
        )
    recorded = read_header(inference_file)["inference_interface"]
    if recorded not in (None, CLASSIFIER_INTERFACE):
        raise UpcyclingError(
            f"petl_init_from={folder} holds a model for {recorded}, not an audio "
            f"classifier: only the recipes/*/PETL runs can be upcycled. {FIX_SOURCE}"
        )
    try:
        if os.path.isdir(save):
            checkpoint = best_checkpoint(save, max_key="accuracy")
            return SourceFiles(
                folder,
                inference_file,
                str(checkpoint.path / "backbone.ckpt"),
                str(checkpoint.path / "classifier.ckpt"),
                os.path.join(save, "label_encoder.txt"),
            )
        if not os.path.isfile(os.path.join(folder, "backbone.ckpt")):
            raise FileNotFoundError(f"{folder} has neither save/ nor backbone.ckpt")
        if not verify_package(folder):
            raise RuntimeError(
                f"{folder} has no {MANIFEST}, so its weights cannot be verified; "
                "package the run again (PETLAudioClassifier.from_hparams(source="
                "<its output folder>))"
            )
    except (FileNotFoundError, RuntimeError) as err:
        raise UpcyclingError(
            f"petl_init_from={folder} is not a finished, intact run: {err}. Train "
            "the source run to the end of at least one epoch with validation "
            f"(without --debug, which keeps no checkpoint). {FIX_SOURCE}"
        ) from err
    return SourceFiles(
        folder,
        inference_file,
        os.path.join(folder, "backbone.ckpt"),
        os.path.join(folder, "classifier.ckpt"),
        os.path.join(folder, "label_encoder.ckpt"),
    )


def source_sha256(folder):
    """SHA-256 of the weights a source run seeds a mixture with (its
    backbone's trained tensors and its head), for the run's identity.

    Arguments
    ---------
    folder : str
        ``--petl_init_from``.

    Returns
    -------
    str
        Hex digest over the two files' digests.

    Example
    -------
    >>> source_sha256("/no/such/run")
    Traceback (most recent call last):
    ...
    speechbrain_moe.upcycling.UpcyclingError: petl_init_from=/no/such/run does not exist. ...
    """
    from speechbrain_moe.inference.verify import sha256_of

    files = find_source(folder)
    digest = hashlib.sha256()
    for path in (files.backbone, files.classifier):
        digest.update(sha256_of(path).encode("ascii"))
    return digest.hexdigest()


def _load(path):
    """A checkpoint file's tensors (weights only)."""
    from speechbrain_moe.recoverables import _load_file

    return dict(_load_file(path))


def _labels(path):
    """The classes of a label encoder file, in the order of the head."""
    encoder = CategoricalEncoder()
    encoder.load(path)
    return [encoder.ind2lab[i] for i in range(len(encoder))]


def _method_file(files, method):
    """The method file the source was trained with: the run's copy when it has
    one (a packaged name or a user's file), else ``method`` itself."""
    from speechbrain_moe.inference.export import read_header

    header = read_header(files.inference_file)
    copy = header["packaged_methods"].get(f"petl/{method}")
    if copy is not None:
        return os.path.join(files.folder, copy)
    name = os.path.basename(str(method))
    if name in header["inference_files"]:
        return os.path.join(files.folder, name)
    return method


def _partial_kwargs(node):
    """The keywords of a ``!name:`` partial (and its callable)."""
    if isinstance(node, functools.partial):
        return node.func, dict(node.keywords)
    return node, {}


def _default(func, name):
    """A callable's default value of the argument ``name``."""
    parameter = inspect.signature(func).parameters.get(name)
    return None if parameter is None else parameter.default


@dataclasses.dataclass
class SourceMethod:
    """What a source run's method puts at each place of the backbone.

    Arguments
    ---------
    kind : str
        ``adapter`` (a :class:`~speechbrain_moe.adapters.BottleneckAdapter`
        beside or after a block) or ``lora`` (SpeechBrain's ``LoRA`` around
        a linear layer).
    method : str
        The method's name (or file) as recorded.
    activation : type
        The activation between the projections (``nn.Identity`` for LoRA).
    placement : dict
        ``placement``, ``mode`` and ``train_norms`` of an adapter (empty
        for LoRA).
    scaling : float
        LoRA's ``alpha / rank`` (1.0 for an adapter).

    Example
    -------
    >>> SourceMethod("lora", "lora", nn.Identity, {}, 2.0).scaling
    2.0
    """

    kind: str
    method: str
    activation: type
    placement: dict
    scaling: float = 1.0


def _source_method(files, description):
    """The source's :class:`SourceMethod`, refusing a method without a single
    bottleneck adapter or LoRA."""
    from speechbrain.nnet.adapters import LoRA

    method = description.get("petl_method")
    settings = dict(description.get("petl_settings") or {})
    hparams, _ = load_hparams("petl", _method_file(files, method), settings)
    insert, keywords = _partial_kwargs(hparams["petl"])
    lora, lora_kwargs = _partial_kwargs(keywords.get("adapter_class"))
    if isinstance(lora, type) and issubclass(lora, LoRA):
        kwargs = {**lora_kwargs, **dict(keywords.get("adapter_kwargs") or {})}
        rank = kwargs.get("rank", _default(lora, "rank"))
        alpha = kwargs.get("alpha", _default(lora, "alpha"))
        return SourceMethod("lora", method, nn.Identity, {}, alpha / rank)
    adapter, adapter_kwargs = _partial_kwargs(keywords.get("adapter"))
    if not (isinstance(adapter, type) and issubclass(adapter, BottleneckAdapter)):
        built = adapter if keywords.get("adapter") is not None else lora
        what = getattr(built, "__name__", None) or getattr(insert, "__name__", "?")
        if isinstance(built, type) and issubclass(built, MIXTURES + (LoRAExperts,)):
            why = "it is already a mixture (growing a mixture is not supported)"
        elif what == "Convpass":
            why = (
                "Convpass has a convolution between its projections, which the "
                "mixtures' bottleneck experts do not have"
            )
        else:
            why = f"it has no single bottleneck adapter or LoRA (it builds {what})"
        raise UpcyclingError(
            f"petl_init_from={files.folder} was trained with petl_method "
            f"{method!r}, which cannot seed a mixture's experts: {why}. Upcycle "
            "from a run of petl_method adapter (into dense_moa, soft_moa, "
            "moe_adapter) or lora (into dense_lora, soft_lora, moe_lora), or "
            "leave petl_init_from null."
        )
    activation = adapter_kwargs.get("activation", _default(adapter, "activation"))
    placement = {
        key: keywords.get(key, _default(insert, key))
        for key in ("placement", "mode", "train_norms")
    }
    return SourceMethod("adapter", method, activation, placement)


@dataclasses.dataclass
class Upcycling:
    """The validated initialisation of a mixture from a source run:
    :meth:`apply` writes it into the model.

    Build it with :func:`plan_upcycling`.

    Arguments
    ---------
    source : str
        The source folder.
    sha256 : str
        :func:`source_sha256` of it.
    backbone_state : dict
        Name (as in the backbone's ``state_dict``) -> tensor to load.
    head_state : dict
        The head's ``state_dict`` to load (rows in the target's class order).
    summary : list of str
        What was built, per kind of mixture, and whether step 0 is exact.
    exact : bool
        Whether the upcycled model's output at step 0 equals the source's.

    Example
    -------
    >>> plan = Upcycling("run", "0" * 64, {"weight": torch.ones(2)}, {}, ["x"], True)
    >>> model = torch.nn.LayerNorm(2)
    >>> plan.apply(model, torch.nn.Identity())
    >>> model.weight.tolist()
    [1.0, 1.0]
    """

    source: str
    sha256: str
    backbone_state: dict
    head_state: dict
    summary: list
    exact: bool

    def apply(self, backbone, classifier):
        """Loads the planned tensors into the (unwrapped) modules.

        Arguments
        ---------
        backbone : torch.nn.Module
            The adapted backbone the plan was made for.
        classifier : torch.nn.Module
            Its head.
        """
        with torch.no_grad():  # in place: the optimizer holds these tensors
            for module, state in (
                (backbone, self.backbone_state),
                (classifier, self.head_state),
            ):
                current = module.state_dict()
                for name, value in state.items():
                    current[name].copy_(value.to(current[name].dtype))
        logger.info(
            "Upcycled from %s (weights SHA-256 %s): %s",
            self.source,
            self.sha256[:12],
            "; ".join(self.summary),
        )


#: The trained tensors of one source expert at a place, by kind: the
#: source's names (after ``<place>.``) of W1, b1, W2, b2 (None: no bias).
SOURCE_PARTS = {
    "adapter": ("adapter.down.weight", "adapter.down.bias")
    + ("adapter.up.weight", "adapter.up.bias"),
    "lora": ("adapter_down_proj.weight", None, "adapter_up_proj.weight", None),
}
#: Where a mixture sits below its place, by kind (the placement wrapper's
#: ``adapter``, ``LoRAExperts.mixture``).
MIXTURE_NAMES = {"adapter": "adapter", "lora": "mixture"}


def _source_places(state, kind):
    """``place -> (W1, b1, W2, b2)`` of the source's experts in its trained
    tensors (biases None for LoRA)."""
    w1_name = SOURCE_PARTS[kind][0]
    places = {}
    for name in state:
        if name.endswith(f".{w1_name}"):
            place = name[: -len(w1_name) - 1]
            parts = [
                None if part is None else state.get(f"{place}.{part}")
                for part in SOURCE_PARTS[kind]
            ]
            if parts[2] is not None:
                places[place] = tuple(parts)
    return places


def _target_mixtures(backbone):
    """``place -> (kind, mixture, scaling)`` of the mixtures in ``backbone``:
    bottleneck mixtures in a placement wrapper (``adapter``) and mixtures of
    LoRA experts (``lora``, with the wrapper's ``alpha / rank``)."""
    modules = dict(backbone.named_modules())
    found = {}
    for name, module in modules.items():
        if not isinstance(module, MIXTURES) or "." not in name:
            continue
        place, attribute = name.rsplit(".", 1)
        parent = modules[place]
        if isinstance(parent, LoRAExperts) and attribute == MIXTURE_NAMES["lora"]:
            found[place] = ("lora", module, parent.scaling)
        elif attribute == MIXTURE_NAMES["adapter"]:
            found[place] = ("adapter", module, 1.0)
    return found


def _backbone_problems(files, backbone):
    """How the target backbone differs from the source's (lobe, source,
    config, lobe settings)."""
    from speechbrain_moe.inference.adapters import backbone_differences

    return backbone_differences(files.folder, backbone)


def _experts_from(source, bank, construction, noise, generator, scale=1.0):
    """The bank's tensors seeded from one source expert ``(W1, b1, W2, b2)``
    (``copy`` or ``slice``; the up-projection times ``scale``, the ratio of
    the source's LoRA scaling to the mixture's)."""
    w1, b1, w2, b2 = source  # [r, d], [r] or None, [d_out, r], [d_out] or None
    w2 = w2.float() * scale
    if b1 is None:
        b1 = torch.zeros(w1.shape[0])
    if b2 is None:
        b2 = torch.zeros(w2.shape[0])
    rank, experts, width = w1.shape[0], bank.num_experts, bank.bottleneck
    down_w = bank.down_weight.detach().clone().float()  # [d, N, r_e]
    down_b = torch.zeros(experts, width)
    up_w = torch.zeros(experts, width, bank.output_size)
    up_b = b2.float().expand(experts, -1).clone()
    if (bank.input_size, bank.output_size) != (w1.shape[1], w2.shape[0]):
        raise UpcyclingError(
            f"the source adapter maps {w1.shape[1]} -> {w2.shape[0]} features, the "
            f"mixture's experts {bank.input_size} -> {bank.output_size}"
        )
    if construction == "copy":
        if width < rank:
            raise UpcyclingError(
                f"construction copy needs experts at least as wide as the source "
                f"adapter (bottleneck {rank}), the mixture's have bottleneck {width}. "
                f'Pass --petl_overrides="{{bottleneck: {rank}}}", or construction '
                "slice with num_experts * bottleneck equal to the source's"
            )
        down_w[:, :, :rank] = w1.float().t().unsqueeze(1)
        down_b[:, :rank] = b1.float()
        up_w[:, :rank] = w2.float().t()
    else:
        if experts * width != rank:
            raise UpcyclingError(
                f"construction slice splits the source's {rank} hidden units into "
                f"num_experts * bottleneck = {experts} * {width} = {experts * width}"
                f" units. Choose num_experts and bottleneck whose product is {rank} "
                f'(e.g. --petl_overrides="{{num_experts: {rank}, bottleneck: 1}}")'
            )
        down_w = w1.float().t().reshape(-1, experts, width).clone()
        down_b = b1.float().reshape(experts, width).clone()
        up_w = w2.float().t().reshape(experts, width, -1) * experts
    if noise:
        scale = noise * float(w1.float().std())
        down_w[:, :, :rank] += scale * torch.randn(
            down_w[:, :, :rank].shape, generator=generator
        )
    tensors = {"down_weight": down_w, "up_weight": up_w}
    if bank.down_bias is not None:
        tensors["down_bias"] = down_b
    elif bool(b1.any()):
        raise UpcyclingError("the source has biases, the mixture's experts none")
    if bank.up_bias is not None:
        tensors["up_bias"] = up_b
    elif bool(b2.any()):
        raise UpcyclingError("the source has biases, the mixture's experts none")
    return tensors


def _mixture_notes(mixture, construction, source_activation):
    """Why a mixture's step 0 is not the source's (empty when it is);
    refuses the constructions that cannot reconstruct it."""
    name = type(mixture).__name__
    notes = []
    if type(mixture.experts.activation) is not source_activation:
        source_name = getattr(source_activation, "__name__", source_activation)
        notes.append(
            f"its experts use {type(mixture.experts.activation).__name__}, the "
            f"source adapter {source_name} (set activation: !name:torch.nn."
            f"{source_name} on the mixture in a method file of your own)"
        )
    if isinstance(mixture, SoftMoA):
        if construction == "slice":
            raise UpcyclingError(
                "Soft-MoA cannot take construction slice: a token's output mixes "
                "the slots of different slices with weights that do not give each "
                "slice the same share, so the slices never add up to the source "
                'adapter. Use --petl_init_options="{construction: copy}"'
            )
        notes.append(
            "Soft-MoA applies the experts to slots (averages of tokens), not to "
            "each token"
        )
    if isinstance(mixture, SparseMoE):
        if construction == "slice" and mixture.top_k != mixture.num_experts:
            raise UpcyclingError(
                f"construction slice needs every slice on every token, but {name} "
                f"routes each token to top_k={mixture.top_k} of "
                f"{mixture.num_experts} experts, whose slices do not add up to the "
                f'source adapter. Use --petl_init_options="{{construction: copy}}" '
                f'or --petl_overrides="{{top_k: {mixture.num_experts}}}"'
            )
        if not isinstance(mixture.norm, nn.Identity):
            notes.append(
                "it applies a LayerNorm before its experts (for an exact start, "
                "give its SparseMoE norm: False in a method file of your own)"
            )
        if mixture.routing == "softmax_topk" and mixture.top_k < mixture.num_experts:
            notes.append("its softmax_topk weights sum to less than one")
        if mixture.shared is not None and bool(mixture.shared.up_weight.any()):
            notes.append("its shared experts are not zero at initialisation")
    return notes


def _router_state(prefix, mixture, construction):
    """The router tensors to zero for ``slice`` (uniform gates at step 0)."""
    if construction != "slice":
        return {}
    return {
        f"{prefix}.router.{name}": torch.zeros_like(tensor)
        for name, tensor in mixture.router.state_dict().items()
    }


def _head_state(files, classifier, labels):
    """The source's head with its output rows in the order of ``labels``."""
    source_labels = _labels(files.label_encoder)
    if sorted(map(str, source_labels)) != sorted(map(str, labels)):
        only_source = sorted(set(map(str, source_labels)) - set(map(str, labels)))
        only_here = sorted(set(map(str, labels)) - set(map(str, source_labels)))
        raise UpcyclingError(
            f"the source run's head classifies {len(source_labels)} classes, this "
            f"run's data has {len(labels)}; only in the source: {only_source[:8]}, "
            f"only here: {only_here[:8]}. The head cannot be copied: upcycle from a "
            "run trained on the same classes (same data set and split)"
        )
    state = _load(files.classifier)
    state.pop(DESCRIPTION_KEY, None)
    current = classifier.state_dict()
    wrong = sorted(
        f"{k}: {tuple(v.shape)} vs {tuple(current[k].shape)}"
        if k in current
        else f"{k}: not in this head"
        for k, v in state.items()
        if k not in current or v.shape != current[k].shape
    )
    if wrong or set(current) - set(state):
        raise UpcyclingError(
            f"the source run's head does not fit this run's ({wrong[:4]}, missing "
            f"{sorted(set(current) - set(state))[:4]}); upcycle from a run of the "
            "same recipe and backbone"
        )
    order = [list(map(str, source_labels)).index(str(label)) for label in labels]
    if order != list(range(len(order))):
        linears = [n for n, m in classifier.named_modules() if isinstance(m, nn.Linear)]
        last = linears[-1]
        index = torch.tensor(order)
        for part in ("weight", "bias"):
            key = f"{last}.{part}" if last else part
            if key in state:
                state[key] = state[key].index_select(0, index)
    return state


#: The identity fields of a run's data split: a source trained on another
#: split has seen this run's test (or validation) clips in training.
SPLIT_KEYS = ("fold", "valid_fold")


def _split_problems(files, identity):
    """How the source's data split (its ``experiment.json``) differs from
    this run's ``identity`` (empty for a packaged source, which has none)."""
    path = os.path.join(files.folder, "experiment.json")
    if identity is None or not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as fin:
        recorded = json.load(fin).get("identity", {})
    return [
        f"{key}: {recorded[key]!r} -> {identity[key]!r}"
        for key in SPLIT_KEYS
        if key in recorded and key in identity and recorded[key] != identity[key]
    ]


def plan_upcycling(folder, backbone, classifier, labels, options=None, identity=None):
    """Checks that a source run can seed ``backbone``'s mixtures and computes
    the tensors :meth:`Upcycling.apply` loads (see the module docstring).

    Arguments
    ---------
    folder : str or None
        ``--petl_init_from`` (None: no upcycling).
    backbone : speechbrain_moe.lobes.base.Backbone
        The adapted backbone of this run (a mixture method).
    classifier : torch.nn.Module
        Its head.
    labels : list of str
        This run's classes, in the order of the head's outputs.
    options : dict, optional
        ``--petl_init_options`` (``construction``, ``noise``).
    identity : dict, optional
        This run's experiment identity
        (:attr:`speechbrain_moe.experiment.Experiment.identity`): a source
        run of another data split (:data:`SPLIT_KEYS`, e.g. another ESC-50
        test fold) is refused, since its training data holds this run's
        test clips.

    Returns
    -------
    Upcycling or None
        None when ``folder`` is None.

    Example
    -------
    >>> plan_upcycling(None, torch.nn.Linear(2, 2), torch.nn.Identity(), []) is None
    True
    """
    if folder is None:
        return None
    options = check_init_options(options)
    try:
        return _plan(str(folder), backbone, classifier, labels, options, identity)
    except UpcyclingError as err:
        message = str(err)
        if not message.startswith("petl_init_from"):
            message = f"petl_init_from={folder} cannot seed this run: {message}."
        raise UpcyclingError(message) from err


def _plan(folder, backbone, classifier, labels, options, identity):
    """:func:`plan_upcycling` once the options are checked."""
    files = find_source(folder)
    sha = source_sha256(folder)
    split = _split_problems(files, identity)
    if split:
        raise UpcyclingError(
            f"the source was trained on another data split ({'; '.join(split)}, "
            "source -> this run): its training data holds clips this run "
            "validates or tests on. Upcycle each fold from the source run of the "
            "same fold (with cross_validate.py, one fold at a time)"
        )
    saved = _load(files.backbone)
    description = saved.pop(DESCRIPTION_KEY, None) or {}
    differences = _backbone_problems(files, backbone)
    if differences:
        raise UpcyclingError(
            f"the source was trained on another backbone than this run's: "
            f"{'; '.join(differences)}. Build this run's backbone as the source's "
            "(same backbone_source, config and lobe settings such as max_frames), "
            "or upcycle from a run on this backbone"
        )
    source = _source_method(files, description)
    target_method, target = adaptation_of(backbone)
    target = dict(target or {})
    mixtures = _target_mixtures(backbone)
    wanted = {"adapter": "dense_moa, soft_moa or moe_adapter"}
    wanted["lora"] = "dense_lora, soft_lora or moe_lora"
    kinds = {kind for kind, _, _ in mixtures.values()}
    if kinds != {source.kind}:
        what = "bottleneck adapter" if source.kind == "adapter" else "LoRA"
        raise UpcyclingError(
            f"the source's {what} can seed a mixture of "
            f"{'bottleneck' if source.kind == 'adapter' else 'LoRA'} experts only, "
            f"and this run's petl_method {target_method!r} is none. Pass "
            f"--petl_method={wanted[source.kind]}"
        )
    for key in ("placement", "mode"):
        if key in target and key in source.placement:
            if target[key] != source.placement[key]:
                raise UpcyclingError(
                    f"the source adapter has {key} {source.placement[key]!r}, this "
                    f"run's mixture {target[key]!r}: the experts would sit elsewhere "
                    f"than the adapter. Pass --petl_overrides="
                    f'"{{{key}: {source.placement[key]}}}"'
                )
    if source.placement.get("train_norms") and target.get("train_norms") is False:
        raise UpcyclingError(
            "the source trained the LayerNorms its adapters read, this run keeps "
            "them frozen (train_norms: False), so it could not start from them. "
            'Pass --petl_overrides="{train_norms: True}"'
        )
    places = _source_places(saved, source.kind)
    missing = sorted(set(places) ^ set(mixtures))
    if missing:
        fix = "the source's target_layers" if source.kind == "lora" else "placement"
        raise UpcyclingError(
            f"the source's {source.kind} modules and this run's mixtures are not "
            f"at the same places (only in one of them: {missing[:4]}); use "
            f"{fix} and the source's backbone"
        )
    generator = torch.Generator().manual_seed(int(sha[:15], 16))
    state, notes, used = {}, {}, set()
    for place, (kind, mixture, scaling) in sorted(mixtures.items()):
        name = f"{place}.{MIXTURE_NAMES[kind]}"
        used.update(f"{place}.{part}" for part in SOURCE_PARTS[kind] if part)
        notes.setdefault(type(mixture).__name__, set()).update(
            _mixture_notes(mixture, options["construction"], source.activation)
        )
        experts = _experts_from(
            places[place],
            mixture.experts,
            options["construction"],
            options["noise"],
            generator,
            scale=source.scaling / scaling,
        )
        for part, tensor in experts.items():
            state[f"{name}.experts.{part}"] = tensor
        state.update(_router_state(name, mixture, options["construction"]))
    trainable = backbone.trainable_state_dict()
    for name, tensor in saved.items():
        if name in used:
            continue
        if name not in trainable or trainable[name].shape != tensor.shape:
            how = "absent" if name not in trainable else "another shape"
            raise UpcyclingError(
                f"the source trained {name} {tuple(tensor.shape)}, which this run "
                f"does not train ({how}); use the source's placement and "
                "train_norms"
            )
        state[name] = tensor
    head = _head_state(files, classifier, labels)
    summary, exact = [], not options["noise"]
    counts = {}
    for _, mixture, _ in mixtures.values():
        counts[type(mixture).__name__] = counts.get(type(mixture).__name__, 0) + 1
    for kind, reasons in sorted(notes.items()):
        line = (
            f"{counts[kind]} {kind} from the {source.method!r} {source.kind} "
            f"({options['construction']})"
        )
        if reasons:
            exact = False
            line += ", step 0 not exact: " + "; ".join(sorted(reasons))
        summary.append(line)
    if options["noise"]:
        summary.append(f"noise {options['noise']}: step 0 not exact")
    if not exact:
        logger.warning(
            "Upcycling from %s: the mixture does not start exactly as the source "
            "(%s). See speechbrain_moe/upcycling.py.",
            folder,
            "; ".join(summary),
        )
    return Upcycling(folder, sha, state, head, summary, exact)


__all__ = [
    "CONSTRUCTIONS",
    "SourceFiles",
    "SourceMethod",
    "Upcycling",
    "UpcyclingError",
    "check_init_options",
    "find_source",
    "plan_upcycling",
    "source_sha256",
]
