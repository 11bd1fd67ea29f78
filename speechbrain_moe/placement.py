"""Where an adapter sits: wrappers usable as ``AdaptedModel``'s ``adapter_class``,
around any sub-module (of a tuple output, only the first element is adapted).

The wrapped module is called by its Hugging Face parent with that parent's
arguments, which carry no padding mask; the wrappers hand their adapter the
mask of the sequences being encoded from the backbone's
:func:`speechbrain_moe.routing.token_mask` block
(:func:`~speechbrain_moe.routing.current_token_mask`).
"""

import torch
import torch.nn as nn

from speechbrain_moe.routing import current_token_mask


def infer_sizes(module):
    """Input and output feature sizes of a module an adapter is placed around:
    its ``in_features``/``out_features``, ``embed_dim``, ``hidden_size``, its
    config's ``hidden_size`` or ``d_model``, or else its first linear layer.

    Arguments
    ---------
    module : torch.nn.Module
        The wrapped module.

    Returns
    -------
    tuple of int
        ``(input_size, output_size)``.

    Example
    -------
    >>> infer_sizes(torch.nn.Linear(4, 6))
    (4, 6)
    """
    if hasattr(module, "in_features") and hasattr(module, "out_features"):
        return module.in_features, module.out_features
    for attr in ("embed_dim", "hidden_size"):
        value = getattr(module, attr, None)
        if isinstance(value, int):
            return value, value
    config = getattr(module, "config", None)
    for attr in ("hidden_size", "d_model"):
        value = getattr(config, attr, None)
        if isinstance(value, int):
            return value, value
    for sub in module.modules():
        if isinstance(sub, nn.Linear):
            return sub.in_features, sub.in_features
    raise ValueError(
        f"Cannot infer the feature size of {type(module).__name__}. Pass "
        "input_size (and output_size) in the placement's adapter_kwargs."
    )


def first_input(args, kwargs, who="Adapter placement"):
    """The hidden states a wrapped (or task-switched) module received: its
    first positional argument, else the first of the keywords Hugging Face
    and SpeechBrain layers take the tokens by.

    Arguments
    ---------
    args : tuple
        The module's positional arguments.
    kwargs : dict
        Its keyword arguments.
    who : str
        Who asks, for the error message.

    Returns
    -------
    torch.Tensor
        The tokens.

    Raises
    ------
    ValueError
        When there is no positional input and none of those keywords.

    Example
    -------
    >>> first_input((1, 2), {}), first_input((), {"hidden_states": 3})
    (1, 3)
    """
    if args:
        return args[0]
    for key in ("hidden_states", "x", "input", "inputs_embeds"):
        if key in kwargs:
            return kwargs[key]
    raise ValueError(
        f"{who}: the module received no positional input and no "
        "'hidden_states' keyword; only modules that take the tokens first can "
        "be wrapped."
    )


def _add_to_first(output, delta):
    """Adds ``delta`` to a tensor output or to the first element of a tuple."""
    if isinstance(output, torch.Tensor):
        return output + delta
    if isinstance(output, (tuple, list)):
        return type(output)([output[0] + delta, *output[1:]])
    raise TypeError(
        f"Adapter placement cannot add to an output of type {type(output).__name__};"
        " wrap a module that returns a tensor or a tuple."
    )


class _Placement(nn.Module):
    """Shared construction of the placement wrappers."""

    reads_output = False  # the adapter reads (and writes) the output size

    def __init__(
        self,
        target_module,
        adapter,
        adapter_kwargs=None,
        input_size=None,
        output_size=None,
    ):
        super().__init__()
        self.pretrained_module = target_module
        in_size, out_size = infer_sizes(target_module)
        out_size = output_size or out_size
        in_size = out_size if self.reads_output else input_size or in_size
        kwargs = dict(adapter_kwargs or {})
        self.adapter = adapter(in_size, output_size=out_size, **kwargs)
        param = next(target_module.parameters(), None)
        if param is not None:
            self.adapter.to(device=param.device)


class ParallelAdapter(_Placement):
    """``target(x) + adapter(x)``: the adapter reads what the target reads.

    Arguments
    ---------
    target_module : torch.nn.Module
        The pretrained sub-module (frozen by ``AdaptedModel``).
    adapter : type or callable
        ``adapter(input_size, output_size=..., **adapter_kwargs)`` builds it.
    adapter_kwargs : dict, optional
        Settings of the adapter.
    input_size, output_size : int, optional
        Override the inferred sizes.

    Example
    -------
    >>> from speechbrain.nnet.adapters import AdaptedModel
    >>> from speechbrain_moe.adapters import SoftMoA
    >>> model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 8))
    >>> adapted = AdaptedModel(model, ParallelAdapter, target_layers=["1"],
    ...     adapter_kwargs={"adapter": SoftMoA, "adapter_kwargs": {"num_experts": 4}})
    >>> x = torch.randn(2, 5, 8)
    >>> torch.allclose(adapted(x), model[1](model[0](x)))  # zero-init: same output
    True
    """

    def forward(self, *args, **kwargs):
        """Runs the target and adds the adapter's output to it.

        Arguments
        ---------
        *args
            The target's positional arguments; the first tensor among them
            (or the first keyword tensor) is what the adapter reads.
        **kwargs
            The target's keyword arguments.

        Returns
        -------
        torch.Tensor or tuple
            The target's output with the adapter's output added to it (to
            its first element when the target returns a tuple).
        """
        x = first_input(args, kwargs)
        output = self.pretrained_module(*args, **kwargs)
        delta = self.adapter(x, mask=current_token_mask())
        return _add_to_first(output, delta)


class SequentialAdapter(_Placement):
    """``t + adapter(t)`` with ``t = target(x)``: the adapter reads the output.

    Arguments as :class:`ParallelAdapter`; the adapter reads and writes the
    target's output size (``input_size`` is unused).

    Example
    -------
    >>> from speechbrain_moe.adapters import BottleneckAdapter
    >>> layer = SequentialAdapter(torch.nn.Linear(8, 4), BottleneckAdapter, {"bottleneck": 2})
    >>> layer(torch.randn(3, 8)).shape
    torch.Size([3, 4])
    """

    reads_output = True

    def forward(self, *args, **kwargs):
        """Runs the target, then adapts its output residually.

        Arguments
        ---------
        *args
            The target's positional arguments.
        **kwargs
            The target's keyword arguments.

        Returns
        -------
        torch.Tensor or tuple
            ``t + adapter(t)`` for the target's output ``t`` (its first
            element when the target returns a tuple).
        """
        output = self.pretrained_module(*args, **kwargs)
        hidden = output if isinstance(output, torch.Tensor) else output[0]
        return _add_to_first(output, self.adapter(hidden, mask=current_token_mask()))


PLACEMENT_MODES = {"parallel": ParallelAdapter, "sequential": SequentialAdapter}
