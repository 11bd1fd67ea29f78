"""Expert utilisation per layer and per class, from recorded routing.

Use a :class:`UtilisationAccumulator` as the callback of
:func:`speechbrain_moe.routing.record_routing`, tell it the class of each
sample before each forward pass, then read :meth:`UtilisationAccumulator.summary`.

For every method the recorded per-token weights say how much each expert
contributes to a token's output: Soft-MoA combine weights summed over each
expert's slots, Dense-MoA gates, sparse-MoE routing weights (zero for experts
not selected). They sum to one over experts for every token, so the per-layer
contribution does too. Sparse routers also report ``selected`` (one for each
of the k chosen experts), giving selection frequencies.

Authors
 * speechbrain-moe contributors 2026
"""

from collections import defaultdict

import torch  # noqa: F401  (used by the doctests)

from speechbrain_moe.routing import load_statistics


class UtilisationAccumulator:
    """Sums routing weights per layer, per expert and per group (class).

    Example
    -------
    >>> acc = UtilisationAccumulator()
    >>> acc.set_groups(["dog", "cat"])
    >>> w = torch.tensor([[[1.0, 0.0], [1.0, 0.0]], [[0.0, 1.0], [0.5, 0.5]]])
    >>> acc("layer0", {"weights": w, "mask": torch.tensor([[1, 1], [1, 0]]).bool()})
    >>> s = acc.summary()
    >>> s["layers"]["layer0"]["contribution"]
    [0.666667, 0.333333]
    >>> s["by_group"]["layer0"]["cat"]
    [0.0, 1.0]
    """

    def __init__(self):
        self.groups = None
        self.weight_sum = {}
        self.selected_sum = {}
        self.tokens = defaultdict(float)
        self.group_sum = defaultdict(dict)
        self.group_tokens = defaultdict(lambda: defaultdict(float))

    def set_groups(self, groups):
        """Names the group (class, task, ...) of each sample of the next batch.

        Arguments
        ---------
        groups : list of str
            One label per sample (None: no per-group statistics).
        """
        self.groups = None if groups is None else [str(g) for g in groups]

    def __call__(self, layer, stats):
        """Receives one router's statistics (the record_routing callback).

        Arguments
        ---------
        layer : str
            Qualified name of the router.
        stats : dict
            ``weights`` ``[batch, time, experts]``, ``mask`` ``[batch, time]``
            and optionally ``selected``.
        """
        weights = stats["weights"].float()
        mask = stats["mask"].unsqueeze(-1).float()
        per_sample = (weights * mask).sum(1).cpu()  # [batch, experts]
        counts = mask.sum((1, 2)).cpu()
        self._add(self.weight_sum, layer, per_sample.sum(0))
        if "selected" in stats:
            sel = (stats["selected"].float() * mask).sum((0, 1)).cpu()
            self._add(self.selected_sum, layer, sel)
        self.tokens[layer] += float(counts.sum())
        if self.groups is not None:
            for group, row, count in zip(self.groups, per_sample, counts.tolist()):
                self._add(self.group_sum[layer], group, row)
                self.group_tokens[layer][group] += count

    @staticmethod
    def _add(store, key, value):
        """``store[key] += value`` with a first-time copy."""
        store[key] = value.clone() if key not in store else store[key] + value

    def summary(self):
        """Utilisation figures, as plain Python numbers (JSON-ready).

        Returns
        -------
        dict
            ``layers``: per router ``contribution`` (mean weight of each
            expert over real tokens; sums to 1), ``balance`` (cv, entropy,
            max_share of that contribution), and for sparse routers
            ``selection_frequency`` (share of tokens that select each expert;
            sums to k), ``selections`` (total selections) and ``tokens``.
            ``by_group``: per router and group, the mean contribution.
        """
        layers = {}
        for layer, total in self.weight_sum.items():
            tokens = max(self.tokens[layer], 1.0)
            entry = {
                "contribution": _rounded(total / tokens),
                "balance": load_statistics(total),
                "tokens": int(self.tokens[layer]),
            }
            if layer in self.selected_sum:
                entry["selection_frequency"] = _rounded(
                    self.selected_sum[layer] / tokens
                )
                entry["selections"] = int(round(float(self.selected_sum[layer].sum())))
            layers[layer] = entry
        by_group = {
            layer: {
                group: _rounded(row / max(self.group_tokens[layer][group], 1.0))
                for group, row in sorted(groups.items())
            }
            for layer, groups in self.group_sum.items()
        }
        return {"layers": layers, "by_group": by_group}


def _rounded(tensor):
    """A list of floats rounded to 6 decimals."""
    return [round(float(v), 6) for v in tensor]


def short_layer_names(names):
    """Compact labels for router names (``...layers.3.attention.adapter`` -> ``3.attention``).

    Arguments
    ---------
    names : list of str
        Qualified module names.

    Returns
    -------
    list of str

    Example
    -------
    >>> short_layer_names(["model.adapted_model.layers.3.attention.adapter"])
    ['3.attention']
    """
    out = []
    for name in names:
        parts = [
            p
            for p in name.split(".")
            if p not in ("adapted_model", "adapter", "module", "pretrained_module")
        ]
        if "layers" in parts:
            parts = parts[parts.index("layers") + 1 :]
        out.append(".".join(parts) or name)
    return out
