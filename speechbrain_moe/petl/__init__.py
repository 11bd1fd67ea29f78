"""Parameter-efficient fine-tuning methods, each a HyperPyYAML file (shipped in
``hparams/petl/`` or a user's own): its plain keys are settings, its ``petl``
key adapts a backbone lobe in place and returns it. In a recipe::

    backbone: !apply:speechbrain_moe.petl.apply_method
        backbone: !new:speechbrain_moe.lobes.ast.AST
            source: MIT/ast-finetuned-audioset-10-10-0.4593
        method: soft_moa          # or path/to/my_method.yaml
        overrides: {num_experts: 8}
"""

from speechbrain_moe.hparams_files import load_hparams, packaged_names
from speechbrain_moe.lobes.base import Backbone, adaptation_of
from speechbrain_moe.petl.wrap import insert_adapters, wrap_modules

__all__ = ["apply_method", "available_methods", "insert_adapters", "wrap_modules"]


def available_methods():
    """Names of the methods shipped with the package.

    Returns
    -------
    list of str
        The method files of ``speechbrain_moe/hparams/petl``, sorted.

    Example
    -------
    >>> available_methods()[:3]
    ['adapter', 'bitfit', 'convpass']
    """
    return packaged_names("petl")


def apply_method(backbone, method, overrides=None):
    """Adapts ``backbone`` in place with a PETL method.

    Arguments
    ---------
    backbone : speechbrain_moe.lobes.base.Backbone
        A backbone lobe (a :class:`~speechbrain_moe.lobes.base.Backbone`:
        it declares ``petl_targets`` and the ``petl_method`` /
        ``petl_settings`` record), not yet adapted.
    method : str
        A packaged method name (:func:`available_methods`) or the path of a
        method YAML file.
    overrides : dict, optional
        New values for some of the method's settings.

    Returns
    -------
    speechbrain_moe.lobes.base.Backbone
        The backbone, with the method and its settings recorded in its
        declared ``petl_method`` and ``petl_settings`` (read them with
        :func:`speechbrain_moe.lobes.base.adaptation_of`).

    Example
    -------
    >>> import torch
    >>> from speechbrain_moe.lobes.base import Backbone, adaptation_of
    >>> class Tiny(Backbone):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.model = torch.nn.Linear(2, 2)
    >>> model = apply_method(Tiny(), "linear")
    >>> any(p.requires_grad for p in model.parameters()), adaptation_of(model)[0]
    (False, 'linear')
    >>> apply_method(model, "bitfit")
    Traceback (most recent call last):
    ValueError: This Tiny is already adapted with petl_method 'linear'; ...
    >>> apply_method(torch.nn.Linear(2, 2), "linear")
    Traceback (most recent call last):
    TypeError: apply_method adapts a backbone lobe, not a Linear: ...
    """
    if not isinstance(backbone, Backbone):
        raise TypeError(
            f"apply_method adapts a backbone lobe, not a {type(backbone).__name__}: "
            "give a speechbrain_moe.lobes lobe (AST, Whisper, WavLM, ...) or your "
            "own subclass of speechbrain_moe.lobes.base.Backbone (it says where "
            "the adapters go, petl_targets, and records the method)."
        )
    previous, _ = adaptation_of(backbone)
    if previous is not None:
        raise ValueError(
            f"This {type(backbone).__name__} is already adapted with petl_method "
            f"{previous!r}; a backbone takes one method. Build a fresh backbone "
            "for another method."
        )
    hparams, settings = load_hparams("petl", method, overrides)
    adapted = hparams["petl"](backbone)
    adapted = backbone if adapted is None else adapted
    adapted.petl_method = method
    adapted.petl_settings = settings
    return adapted
