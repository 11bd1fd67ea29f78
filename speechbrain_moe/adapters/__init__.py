"""Adapter modules: each maps ``[batch, time, d]`` (+ optional padding mask) to
``[batch, time, d_out]`` and is placed in a backbone by
:mod:`speechbrain_moe.placement`.

Authors
 * speechbrain-moe contributors 2026
"""

from speechbrain_moe.adapters.bottleneck import BottleneckAdapter
from speechbrain_moe.adapters.convpass import Convpass
from speechbrain_moe.adapters.dense_moa import DenseMoA
from speechbrain_moe.adapters.moe import SparseMoE, update_selection_biases
from speechbrain_moe.adapters.soft_moa import SoftMoA

__all__ = [
    "BottleneckAdapter",
    "Convpass",
    "DenseMoA",
    "SoftMoA",
    "SparseMoE",
    "update_selection_biases",
]
