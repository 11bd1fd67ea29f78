"""How routers deep inside an encoder reach the code that trains them.

The mixtures of this package sit inside pretrained Hugging Face layers,
which call them with fixed signatures: what a router computes besides its
output (auxiliary losses, routing weights) cannot be returned through those
layers, and the padding mask of the batch cannot be passed down through
them. Both travel through one explicit channel instead, found through
:mod:`contextvars` (never through attributes set on other modules):

* **A routing context** (:func:`routing_context`): the code that runs a
  forward pass opens one around it; every router that runs inside the block
  reports its auxiliary loss and, when asked for, its routing weights into
  it. After the forward the context holds what *this* pass computed::

      with routing_context(model, track_load=True) as routing:
          logits = model(x)
      loss = task_loss + routing.aux_loss   # every router's, every call
      load_counter.add(routing)             # per-expert loads, for logging

  Nothing is stored on the routers and nothing needs clearing: a router
  called twice in the block reports twice (both losses are summed), a new
  block starts empty, and a forward pass run with no context open reports
  to nobody (a router computing an auxiliary loss in training mode then
  warns that it is dropped). Contexts nest: every open context receives
  every report, so a model that opens its own (the Speech-LLM's forward, for
  the loss it returns) does not hide its routers from its caller's.
* **The token mask** (:func:`token_mask`): a backbone opens
  ``with token_mask(mask):`` around its encoder; the adapter placements read
  it with :func:`current_token_mask` and pass it to their adapters'
  ``forward(x, mask)``.

Load statistics for logging are summed over a stage by a
:class:`LoadCounter` and read once per stage with :meth:`LoadCounter.pop`,
which sums them over DDP ranks (a collective that every rank calls, in the
same order, whatever its data).

Authors
 * speechbrain-moe contributors 2026
"""

import contextvars
import math
import warnings
from contextlib import contextmanager

import torch
import torch.nn as nn

#: The routing contexts open in this thread / task, outermost first.
_OPEN_CONTEXTS = contextvars.ContextVar("speechbrain_moe_routing", default=())

#: The padding mask of the sequences the innermost running backbone encodes.
_TOKEN_MASK = contextvars.ContextVar("speechbrain_moe_token_mask", default=None)


class RoutedModule(nn.Module):
    """Base class of modules that route tokens to experts.

    A subclass reports what it computes in its ``forward`` to the open
    routing contexts (:func:`routing_context`): its auxiliary loss with
    :meth:`report_aux_loss`, its per-token routing weights with
    :meth:`report` (cheap to skip: ask :meth:`wants_routing` first when
    building the weights costs something).

    Arguments
    ---------
    num_experts : int
        Experts the module routes to.

    Example
    -------
    >>> module = RoutedModule(num_experts=2)
    >>> with routing_context(module, track_load=True) as routing:
    ...     module.report(torch.tensor([[[0.25, 0.75]]]), None)
    ...     module.report_aux_loss(torch.tensor(0.5))
    >>> routing.loads[""].tolist(), float(routing.aux_loss)
    ([0.25, 0.75], 0.5)
    """

    def __init__(self, num_experts):
        super().__init__()
        self.num_experts = num_experts

    def report_aux_loss(self, loss):
        """Hands this forward pass's auxiliary loss to every open context.

        Arguments
        ---------
        loss : torch.Tensor or None
            A scalar (None: nothing to report).

        Example
        -------
        >>> module = RoutedModule(2)
        >>> with routing_context() as routing:
        ...     module.report_aux_loss(torch.tensor(1.0))
        ...     module.report_aux_loss(torch.tensor(2.0))
        >>> float(routing.aux_loss)
        3.0
        """
        if loss is None:
            return
        contexts = _OPEN_CONTEXTS.get()
        if not contexts and self.training and torch.is_grad_enabled():
            warnings.warn(
                f"{type(self).__name__} computed an auxiliary loss in training "
                "mode, but no routing context is open, so the loss is dropped. "
                "Run the forward pass inside `with "
                "speechbrain_moe.routing.routing_context(model) as routing:` and "
                "add routing.aux_loss to the objective.",
                stacklevel=2,
            )
        for context in contexts:
            context.add_aux_loss(self, loss)

    def wants_routing(self):
        """Whether an open context records routing weights (load counting or
        a recorder): without one, :meth:`report` does nothing.

        Returns
        -------
        bool

        Example
        -------
        >>> module = RoutedModule(2)
        >>> with routing_context(track_load=True):
        ...     module.wants_routing()
        True
        >>> module.wants_routing()
        False
        """
        return any(context.wants_routing for context in _OPEN_CONTEXTS.get())

    def report(self, weights, mask, **extra):
        """Hands this forward pass's routing weights to the open contexts
        that record them.

        Arguments
        ---------
        weights : torch.Tensor
            ``[batch, time, experts]``: the share of each expert in each token.
        mask : torch.Tensor or None
            ``[batch, time]``, True for real tokens (None: all real).
        **extra
            Per-token statistics of the method (e.g. ``selected`` of top-k
            routing), shaped like ``weights``.

        Example
        -------
        >>> module, seen = RoutedModule(2), []
        >>> with record_routing(module, lambda name, stats: seen.append(stats)):
        ...     module.report(torch.ones(1, 3, 2) / 2, None, selected=torch.ones(1, 3, 2))
        >>> sorted(seen[0])
        ['mask', 'selected', 'weights']
        """
        contexts = [c for c in _OPEN_CONTEXTS.get() if c.wants_routing]
        if not contexts:
            return
        weights = weights.detach().float()
        if mask is None:
            mask = torch.ones_like(weights[..., 0], dtype=torch.bool)
        extra = {key: value.detach() for key, value in extra.items()}
        for context in contexts:
            context.add_routing(self, weights, mask, extra)


def routed_modules(model):
    """Yields ``(name, module)`` for every :class:`RoutedModule` in ``model``
    (DDP-wrapped modules included).

    Arguments
    ---------
    model : torch.nn.Module
        Any model.

    Returns
    -------
    generator
        ``(name, module)`` pairs, in ``named_modules`` order.

    Example
    -------
    >>> [name for name, _ in routed_modules(nn.Sequential(RoutedModule(2)))]
    ['0']
    """
    for name, module in model.named_modules():
        if isinstance(module, RoutedModule):
            yield name, module


class RoutingContext:
    """What the routers report during one ``with routing_context(...)`` block.

    Built by :func:`routing_context`; read after (or inside) the block.

    Arguments
    ---------
    model : torch.nn.Module, optional
        Names the routers (their ``named_modules`` names); a router outside
        it, or with no model, is named ``<TypeName #k>`` in order of its
        first report. Its first parameter's device is that of a zero
        :attr:`aux_loss`.
    track_load : bool
        Sum each router's routing weights over real tokens into
        :attr:`loads`.
    on_routing : callable, optional
        ``on_routing(name, stats)`` receives every report's ``stats``:
        ``weights`` ``[batch, time, experts]``, ``mask`` and the method's own
        entries (``selected`` for top-k routing).

    Example
    -------
    >>> context = RoutingContext(track_load=True)
    >>> context.wants_routing, float(context.aux_loss)
    (True, 0.0)
    """

    def __init__(self, model=None, track_load=False, on_routing=None):
        self.names = {}
        self.device = None
        if model is not None:
            self.names = {module: name for name, module in routed_modules(model)}
            param = next(model.parameters(), None)
            self.device = None if param is None else param.device
        self.track_load = track_load
        self.on_routing = on_routing
        #: ``(router name, loss)`` of every auxiliary loss reported.
        self.aux_losses = []
        # Router -> [experts] float64 routing weight summed over real tokens
        # (with track_load). Keyed by the module itself, not its name: the
        # Brain wraps its modules in DDP after building its LoadCounter.
        self._loads = {}

    @property
    def wants_routing(self):
        """Whether routers should report their routing weights here.

        Returns
        -------
        bool

        Example
        -------
        >>> RoutingContext().wants_routing, RoutingContext(on_routing=print).wants_routing
        (False, True)
        """
        return self.track_load or self.on_routing is not None

    @property
    def loads(self):
        """Router name -> ``[experts]`` float64 routing weight summed over
        real tokens (with ``track_load``; empty otherwise).

        Returns
        -------
        dict

        Example
        -------
        >>> model = nn.Sequential(RoutedModule(2))
        >>> with routing_context(model, track_load=True) as routing:
        ...     model[0].report(torch.tensor([[[0.5, 0.5]]]), None)
        >>> routing.loads
        {'0': tensor([0.5000, 0.5000], dtype=torch.float64)}
        """
        return {self.name_of(module): load for module, load in self._loads.items()}

    def load_of(self, module):
        """The summed routing weight of one router (None: it reported none).

        Arguments
        ---------
        module : RoutedModule
            A router.

        Returns
        -------
        torch.Tensor or None
            ``[experts]`` float64.

        Example
        -------
        >>> module = RoutedModule(2)
        >>> with routing_context(track_load=True) as routing:
        ...     module.report(torch.tensor([[[1.0, 0.0]]]), None)
        >>> routing.load_of(module).tolist(), routing.load_of(RoutedModule(2))
        ([1.0, 0.0], None)
        """
        return self._loads.get(module)

    @property
    def aux_loss(self):
        """Sum of every auxiliary loss reported (a zero scalar when none).

        Returns
        -------
        torch.Tensor

        Example
        -------
        >>> context = RoutingContext()
        >>> context.add_aux_loss(RoutedModule(2), torch.tensor(0.25))
        >>> float(context.aux_loss)
        0.25
        """
        if not self.aux_losses:
            return torch.zeros((), device=self.device)
        losses = [loss for _, loss in self.aux_losses]
        return sum(losses[1:], losses[0])

    def name_of(self, module):
        """The name under which ``module``'s reports are filed.

        Arguments
        ---------
        module : RoutedModule
            A router.

        Returns
        -------
        str

        Example
        -------
        >>> model = nn.Sequential(nn.Linear(2, 2), RoutedModule(2))
        >>> RoutingContext(model).name_of(model[1]), RoutingContext().name_of(model[1])
        ('1', '<RoutedModule #0>')
        """
        if module not in self.names:
            self.names[module] = f"<{type(module).__name__} #{len(self.names)}>"
        return self.names[module]

    def add_aux_loss(self, module, loss):
        """Files one auxiliary loss of ``module`` (called by the router).

        Arguments
        ---------
        module : RoutedModule
            The reporting router.
        loss : torch.Tensor
            A scalar.

        Example
        -------
        >>> context = RoutingContext()
        >>> context.add_aux_loss(RoutedModule(2), torch.tensor(1.0))
        >>> context.aux_losses
        [('<RoutedModule #0>', tensor(1.))]
        """
        self.aux_losses.append((self.name_of(module), loss))

    def add_routing(self, module, weights, mask, extra):
        """Files one routing report of ``module`` (called by the router).

        Arguments
        ---------
        module : RoutedModule
            The reporting router.
        weights : torch.Tensor
            ``[batch, time, experts]`` detached float32 weights.
        mask : torch.Tensor
            ``[batch, time]`` boolean, True for real tokens.
        extra : dict
            The method's own detached per-token statistics.

        Example
        -------
        >>> context, module = RoutingContext(track_load=True), RoutedModule(2)
        >>> mask = torch.tensor([[True, False]])
        >>> context.add_routing(module, torch.ones(1, 2, 2) / 2, mask, {})
        >>> context.load_of(module).tolist()
        [0.5, 0.5]
        """
        if self.track_load:
            load = (weights * mask.unsqueeze(-1)).sum(dim=(0, 1)).double()
            total = self._loads.get(module)
            self._loads[module] = load if total is None else total + load
        if self.on_routing is not None:
            stats = {"weights": weights, "mask": mask, **extra}
            self.on_routing(self.name_of(module), stats)


@contextmanager
def routing_context(model=None, track_load=False, on_routing=None):
    """Opens a :class:`RoutingContext` for one ``with`` block.

    Arguments
    ---------
    model, track_load, on_routing
        As :class:`RoutingContext` takes them.

    Yields
    ------
    RoutingContext
        Filled by the routers that run inside the block.

    Example
    -------
    >>> from speechbrain_moe.adapters import SparseMoE
    >>> moe = SparseMoE(8, num_experts=4, top_k=2, hidden_size=4)
    >>> with routing_context(moe) as routing:
    ...     y = moe(torch.randn(2, 5, 8))
    >>> routing.aux_loss.shape, len(routing.aux_losses)
    (torch.Size([]), 1)
    """
    context = RoutingContext(model, track_load=track_load, on_routing=on_routing)
    token = _OPEN_CONTEXTS.set(_OPEN_CONTEXTS.get() + (context,))
    try:
        yield context
    finally:
        _OPEN_CONTEXTS.reset(token)


def record_routing(model, callback):
    """Streams the routing weights of every router of ``model`` to
    ``callback(layer_name, stats)`` for one ``with`` block (a
    :func:`routing_context` with ``on_routing=callback``).

    Arguments
    ---------
    model : torch.nn.Module
        Names the routers.
    callback : callable
        ``callback(name, stats)``; ``stats`` holds ``weights`` ``[batch,
        time, experts]``, ``mask`` and method-specific entries.

    Returns
    -------
    contextlib.AbstractContextManager
        Yields the :class:`RoutingContext`.

    Example
    -------
    >>> model, seen = nn.Sequential(RoutedModule(3)), []
    >>> with record_routing(model, lambda name, s: seen.append((name, s["mask"].shape))):
    ...     model[0].report(torch.rand(2, 5, 3), None)
    >>> seen
    [('0', torch.Size([2, 5]))]
    """
    return routing_context(model, on_routing=callback)


@contextmanager
def token_mask(mask):
    """Makes ``mask`` the token mask of the adapters that run in the block.

    Arguments
    ---------
    mask : torch.Tensor or None
        ``[batch, time]``, True for real tokens (None: all real).

    Yields
    ------
    torch.Tensor or None
        ``mask``.

    Example
    -------
    >>> with token_mask(torch.ones(1, 3, dtype=torch.bool)):
    ...     current_token_mask().shape
    torch.Size([1, 3])
    >>> current_token_mask() is None
    True
    """
    token = _TOKEN_MASK.set(mask)
    try:
        yield mask
    finally:
        _TOKEN_MASK.reset(token)


def current_token_mask():
    """The mask of the innermost :func:`token_mask` block (None outside).

    Returns
    -------
    torch.Tensor or None

    Example
    -------
    >>> current_token_mask() is None
    True
    """
    return _TOKEN_MASK.get()


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


class LoadCounter:
    """Per-expert loads of every router of a model, summed over a stage.

    The counter lives with the code that trains (the ``Brain``), not on the
    routers: :meth:`add` takes the loads of one forward pass's
    :class:`RoutingContext` (opened with ``track_load=True``), :meth:`pop`
    turns the sums into balance figures and starts over.

    Arguments
    ---------
    model : torch.nn.Module
        The routers counted are those of ``model`` (fixed at construction,
        so that every DDP rank reduces the same tensors in the same order).

    Example
    -------
    >>> model = nn.Sequential(RoutedModule(2))
    >>> counter = LoadCounter(model)
    >>> with routing_context(model, track_load=True) as routing:
    ...     model[0].report(torch.tensor([[[1.0, 0.0], [0.0, 1.0]]]), None)
    >>> counter.add(routing)
    >>> counter.pop()["mean"]
    {'cv': 0.0, 'entropy': 1.0, 'max_share': 0.5}
    >>> counter.pop()
    {}
    """

    def __init__(self, model):
        self.routers = dict(routed_modules(model))
        self.sums = {}

    def __len__(self):
        """Number of routers counted.

        Returns
        -------
        int
        """
        return len(self.routers)

    def add(self, routing):
        """Adds the loads of one forward pass.

        Arguments
        ---------
        routing : RoutingContext
            A context opened with ``track_load=True`` (loads of routers that
            are not in the counter's model are ignored). Routers are matched
            as modules, not by name, so a model wrapped in DDP after the
            counter was built is still counted, under its unwrapped names.

        Example
        -------
        >>> model = nn.Sequential(RoutedModule(2))
        >>> counter = LoadCounter(model)
        >>> with routing_context(model, track_load=True) as routing:
        ...     model[0].report(torch.tensor([[[1.0, 0.0]]]), None)
        >>> counter.add(routing)
        >>> counter.sums["0"].tolist()
        [1.0, 0.0]
        """
        for name, module in self.routers.items():
            load = routing.load_of(module)
            if load is not None:
                total = self.sums.get(name)
                self.sums[name] = load if total is None else total + load

    def reset(self):
        """Forgets the loads added so far (local: no collective).

        Example
        -------
        >>> counter = LoadCounter(nn.Sequential(RoutedModule(2)))
        >>> counter.sums["0"] = torch.ones(2, dtype=torch.float64)
        >>> counter.reset()
        >>> counter.pop()
        {}
        """
        self.sums = {}

    def pop(self):
        """Balance figures of the loads added since the last pop or reset,
        per router and averaged; then resets.

        Under DDP the loads are summed over ranks first: a collective that
        every rank must call (it reduces one tensor per router of the model,
        counted or not, so ranks without data take part as well).

        Returns
        -------
        dict
            ``{"layers": {name: stats}, "mean": stats, "shares": {name:
            share}}`` (empty: nothing counted), ``share`` the ``[experts]``
            fraction of the routing weight each expert received.

        Example
        -------
        >>> counter = LoadCounter(nn.Sequential(RoutedModule(2)))
        >>> counter.sums["0"] = torch.tensor([3.0, 1.0], dtype=torch.float64)
        >>> stats = counter.pop()
        >>> stats["layers"]["0"]["max_share"], stats["shares"]["0"].tolist()
        (0.75, [0.75, 0.25])
        """
        distributed = torch.distributed.is_available() and (
            torch.distributed.is_initialized()
        )
        layers, shares = {}, {}
        for name, module in self.routers.items():
            param = next(module.parameters(), None)
            device = None if param is None else param.device
            load = self.sums.get(name)
            if load is None:
                load = torch.zeros(module.num_experts, dtype=torch.float64)
            load = load.to(device=device, dtype=torch.float64)
            if distributed:
                torch.distributed.all_reduce(load)
            if float(load.sum()) > 0:
                layers[name] = load_statistics(load)
                shares[name] = (load / load.sum()).cpu()
        self.reset()
        if not layers:
            return {}
        mean = {
            key: round(sum(s[key] for s in layers.values()) / len(layers), 6)
            for key in ("cv", "entropy", "max_share")
        }
        return {"layers": layers, "mean": mean, "shares": shares}
