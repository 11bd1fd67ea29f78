"""Adapter modules, placed in a backbone by :mod:`speechbrain_moe.placement`.

Every adapter is built as ``Adapter(input_size, output_size=None, **settings)``
and called as ``forward(x, mask=None)``: ``x`` is ``[batch, time, input_size]``,
``mask`` ``[batch, time]`` (True for real tokens, None: all real) and the
result ``[batch, time, output_size]``. Token-wise adapters ignore the mask;
routers keep padded tokens out of their routing, statistics and losses, and
give them a zero output.

Authors
 * speechbrain-moe contributors 2026
"""

from speechbrain_moe.adapters.bottleneck import BottleneckAdapter
from speechbrain_moe.adapters.convpass import Convpass
from speechbrain_moe.adapters.dense_moa import DenseMoA
from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.adapters.moe import SparseMoE, update_selection_biases
from speechbrain_moe.adapters.soft_moa import SoftMoA

__all__ = [
    "BottleneckAdapter",
    "Convpass",
    "DenseMoA",
    "LoRAExperts",
    "SoftMoA",
    "SparseMoE",
    "update_selection_biases",
]
