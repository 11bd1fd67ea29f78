"""The channel between routed modules deep in an encoder and the ``Brain``:
auxiliary losses, padding masks, routing statistics (free when off)."""

import math
from contextlib import contextmanager

import torch
import torch.nn as nn


class RoutedModule(nn.Module):
    """Base class of modules that route tokens to experts: subclasses call
    :meth:`report` once per forward and may set ``self.aux_loss``.

    Arguments
    ---------
    num_experts : int
        Experts the module routes to.

    Example
    -------
    >>> module = RoutedModule(num_experts=2)
    >>> _ = track_load(module)
    >>> module.report(torch.tensor([[[0.25, 0.75]]]), None)
    >>> module.load_sum
    tensor([0.2500, 0.7500])
    """

    def __init__(self, num_experts):
        super().__init__()
        self.num_experts = num_experts
        self.aux_loss = None
        self.routing_sink = None
        self.routing_name = ""
        self.tracking_load = False
        self.register_buffer("load_sum", torch.zeros(num_experts), persistent=False)

    def report(self, weights, mask, **extra):
        """Hands this batch's routing ``weights`` (``[batch, time, experts]``,
        the share of each expert in each token), ``mask`` (``[batch, time]``,
        True: real; None: all) and ``extra`` per-token statistics (e.g.
        ``selected`` of top-k routing) to the active recorders."""
        if not self.tracking_load and self.routing_sink is None:
            return
        weights = weights.detach().float()
        if mask is None:
            mask = torch.ones_like(weights[..., 0], dtype=torch.bool)
        if self.tracking_load:
            self.load_sum += (weights * mask.unsqueeze(-1)).sum(dim=(0, 1))
        if self.routing_sink is not None:
            stats = {"weights": weights, "mask": mask}
            stats.update({k: v.detach() for k, v in extra.items()})
            self.routing_sink(self.routing_name, stats)


def routed_modules(model):
    """Yields ``(name, module)`` for every :class:`RoutedModule` in ``model``
    (DDP-wrapped modules included).

    Example
    -------
    >>> [name for name, _ in routed_modules(nn.Sequential(RoutedModule(2)))]
    ['0']
    """
    for name, module in model.named_modules():
        if isinstance(module, RoutedModule):
            yield name, module


def collect_aux_loss(model):
    """Sums (a scalar; zero when there is none) and clears the auxiliary
    losses of the last forward pass of ``model``'s routers.

    Example
    -------
    >>> model = nn.Sequential(RoutedModule(2), RoutedModule(2))
    >>> model[0].aux_loss = model[1].aux_loss = torch.tensor(0.5)
    >>> float(collect_aux_loss(model)), float(collect_aux_loss(model))
    (1.0, 0.0)
    """
    losses = []
    for _, module in routed_modules(model):
        if module.aux_loss is not None:
            losses.append(module.aux_loss)
            module.aux_loss = None
    if losses:
        return sum(losses[1:], losses[0])
    param = next(model.parameters(), None)
    return torch.zeros((), device=None if param is None else param.device)


@contextmanager
def _setting(modules, attribute, value):
    """Sets ``attribute`` of every module to ``value`` for one ``with`` block."""
    for module in modules:
        setattr(module, attribute, value)
    try:
        yield
    finally:
        for module in modules:
            setattr(module, attribute, None)


def token_mask(model, mask):
    """Gives ``mask`` (``[batch, time]``, True for real tokens) to every
    module of ``model`` with a ``token_mask`` attribute, for one ``with`` block.

    Example
    -------
    >>> layer = nn.Linear(2, 2)
    >>> layer.token_mask = None
    >>> with token_mask(layer, torch.ones(1, 3, dtype=torch.bool)):
    ...     layer.token_mask.shape
    torch.Size([1, 3])
    >>> layer.token_mask is None
    True
    """
    modules = [m for m in model.modules() if hasattr(m, "token_mask")]
    return _setting(modules, "token_mask", mask)


def record_routing(model, callback):
    """Streams the routing weights of every router of ``model`` to
    ``callback(layer_name, stats)``, for one ``with`` block; ``stats`` holds
    ``weights`` ``[batch, time, experts]``, ``mask`` and method-specific entries.

    Example
    -------
    >>> model, seen = nn.Sequential(RoutedModule(3)), []
    >>> with record_routing(model, lambda name, s: seen.append((name, s["mask"].shape))):
    ...     model[0].report(torch.rand(2, 5, 3), None)
    >>> seen
    [('0', torch.Size([2, 5]))]
    """
    for name, module in routed_modules(model):
        module.routing_name = name
    modules = [module for _, module in routed_modules(model)]
    return _setting(modules, "routing_sink", callback)


def track_load(model, enabled=True):
    """Switches the per-expert load counters (:func:`pop_load_stats`) of every
    router of ``model`` on or off; returns the number of routers."""
    modules = list(routed_modules(model))
    for _, module in modules:
        module.tracking_load = enabled
    return len(modules)


def load_statistics(load):
    """Balance figures of one load vector.

    Arguments
    ---------
    load : torch.Tensor
        ``[experts]`` non-negative load of each expert.

    Returns
    -------
    dict
        ``cv`` (coefficient of variation), ``entropy`` (normalised to [0, 1]),
        ``max_share`` (share of the busiest expert), all plain floats.

    Example
    -------
    >>> load_statistics(torch.tensor([1.0, 1.0, 1.0, 1.0]))
    {'cv': 0.0, 'entropy': 1.0, 'max_share': 0.25}
    """
    load, n = load.double(), load.numel()
    if float(load.sum()) <= 0:
        return {"cv": 0.0, "entropy": 0.0, "max_share": 0.0}
    share = load / load.sum()
    nz = share[share > 0]
    entropy = float(-(nz * nz.log()).sum()) / math.log(n) if n > 1 else 1.0
    cv = float(load.std(unbiased=False) / load.mean())
    stats = {"cv": cv, "entropy": entropy, "max_share": float(share.max())}
    return {key: round(value, 6) for key, value in stats.items()}


def pop_load_stats(model):
    """Balance figures since the last call, per router of ``model`` (with
    :func:`track_load` on) and averaged; resets the counters.

    Returns
    -------
    dict
        ``{"layers": {name: stats}, "mean": stats, "shares": {name: share}}``
        (empty: nothing counted), ``share`` the ``[experts]`` fraction of the
        routing weight each expert received; counts summed over DDP ranks
        (a collective: call it on every rank).

    Example
    -------
    >>> model = nn.Sequential(RoutedModule(2))
    >>> track_load(model)
    1
    >>> model[0].report(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), None)
    >>> pop_load_stats(model)["mean"]
    {'cv': 0.0, 'entropy': 1.0, 'max_share': 0.5}
    """
    layers, shares = {}, {}
    for name, module in routed_modules(model):
        load = module.load_sum.detach().double().clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        if float(load.sum()) > 0:
            layers[name] = load_statistics(load)
            shares[name] = load / load.sum()
        module.load_sum.zero_()
    if not layers:
        return {}
    mean = {
        key: round(sum(s[key] for s in layers.values()) / len(layers), 6)
        for key in ("cv", "entropy", "max_share")
    }
    return {"layers": layers, "mean": mean, "shares": shares}
