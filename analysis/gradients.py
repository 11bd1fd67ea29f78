"""Gradient conflict between data groups (classes, tasks, data sets).

For each group, the mean gradient of the loss with respect to the trainable
(adapter) parameters over a few batches; then the pairwise cosine similarity.
Negative cosine = the groups pull the shared parameters in opposite
directions (conflict); positive = synergy. The MoE-Adapter paper compares a
dense projector with a mixture this way.

Authors
 * speechbrain-moe contributors 2026
"""

import torch


def mean_group_gradients(params, batches_by_group, loss_fn, max_batches=None):
    """Mean flattened gradient of ``loss_fn`` per group.

    Arguments
    ---------
    params : list of torch.nn.Parameter
        Parameters to differentiate (the trainable ones).
    batches_by_group : dict
        Group name -> iterable of batches.
    loss_fn : callable
        ``loss_fn(batch) -> scalar tensor``.
    max_batches : int, optional
        Use at most this many batches per group.

    Returns
    -------
    dict
        Group name -> 1-D gradient tensor (float64, on CPU).

    Example
    -------
    >>> w = torch.nn.Parameter(torch.zeros(2))
    >>> grads = mean_group_gradients(
    ...     [w], {"a": [torch.tensor([1.0, 0.0])]}, lambda b: (w * b).sum())
    >>> grads["a"].tolist()
    [1.0, 0.0]
    """
    params = [p for p in params if p.requires_grad]
    if not params:
        raise ValueError(
            "No trainable parameters to compare gradients on; the gradient "
            "analysis needs a method with trainable parameters."
        )
    result = {}
    for group, batches in batches_by_group.items():
        total, count = None, 0
        for i, batch in enumerate(batches):
            if max_batches is not None and i >= max_batches:
                break
            loss = loss_fn(batch)
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            flat = torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p))
                    .reshape(-1)
                    .double()
                    .cpu()
                    for g, p in zip(grads, params)
                ]
            )
            total = flat if total is None else total + flat
            count += 1
        if count == 0:
            raise ValueError(
                f"Group {group!r} has no batch; check the --groups column."
            )
        result[group] = total / count
    return result


def cosine_matrix(gradients):
    """Pairwise cosine similarity of group gradients.

    Arguments
    ---------
    gradients : dict
        Group name -> 1-D tensor.

    Returns
    -------
    names : list of str
        Sorted group names.
    matrix : list of list of float
        ``matrix[i][j]`` = cosine(g_i, g_j).

    Example
    -------
    >>> names, m = cosine_matrix({"a": torch.tensor([1.0, 0.0]), "b": torch.tensor([-1.0, 0.0])})
    >>> names, m
    (['a', 'b'], [[1.0, -1.0], [-1.0, 1.0]])
    """
    names = sorted(gradients)
    stacked = torch.stack([gradients[n].double() for n in names])
    unit = stacked / stacked.norm(dim=1, keepdim=True).clamp(min=1e-30)
    matrix = unit @ unit.T
    return names, [[round(float(v), 6) for v in row] for row in matrix]
