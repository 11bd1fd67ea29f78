"""Argument checks whose messages name the problem and the fix."""


def check_positive(owner, **values):
    """Raises ``ValueError`` unless every value is an integer >= 1.

    Arguments
    ---------
    owner : str
        Name of the class or method being configured (shown in the message).
    **values : int
        The settings to check, by name.

    Example
    -------
    >>> check_positive("SoftMoA", num_experts=4, bottleneck=1)
    >>> check_positive("SoftMoA", num_experts=0)
    Traceback (most recent call last):
    ...
    ValueError: SoftMoA: num_experts must be a positive integer, got 0. Set num_experts to 1 or more (in the YAML file of the PETL method or bridge, or with --petl_overrides for a method, --bridge_overrides for a bridge).
    """
    for name, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(
                f"{owner}: {name} must be a positive integer, got {value!r}. Set "
                f"{name} to 1 or more (in the YAML file of the PETL method or bridge, "
                "or with --petl_overrides for a method, --bridge_overrides for a "
                "bridge)."
            )
