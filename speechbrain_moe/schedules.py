"""Learning-rate schedules of the recipes."""

import math


class CosineLR:
    """Cosine learning-rate decay over the whole run, optional linear warm-up.

    Stateless (a function of the training progress alone), so a resumed run
    follows the same schedule without a recoverable of its own.

    Arguments
    ---------
    lr, min_lr : float
        Peak and final learning rates.
    warmup_fraction : float
        Share of the run spent warming up linearly from 0 (0 for none).

    Example
    -------
    >>> schedule = CosineLR(lr=1.0, min_lr=0.0, warmup_fraction=0.0)
    >>> [round(schedule(p), 3) for p in (0.0, 0.5, 1.0)]
    [1.0, 0.5, 0.0]
    >>> round(CosineLR(1.0, warmup_fraction=0.5)(0.25), 3)
    0.5
    """

    def __init__(self, lr, min_lr=0.0, warmup_fraction=0.0):
        if lr <= 0 or min_lr < 0 or not 0 <= warmup_fraction < 1:
            raise ValueError(
                f"CosineLR needs lr > 0, min_lr >= 0 and 0 <= warmup_fraction < 1; "
                f"got lr={lr}, min_lr={min_lr}, warmup_fraction={warmup_fraction}."
            )
        self.lr, self.min_lr, self.warmup_fraction = lr, min_lr, warmup_fraction

    def __call__(self, progress):
        """The learning rate when ``progress`` (epochs done / epochs) of the
        training is done."""
        progress = min(max(float(progress), 0.0), 1.0)
        if progress < self.warmup_fraction:
            return self.lr * progress / self.warmup_fraction
        done = (progress - self.warmup_fraction) / (1.0 - self.warmup_fraction)
        cosine = 1 + math.cos(math.pi * done)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * cosine
