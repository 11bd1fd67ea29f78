"""speechbrain-moe: mixtures of adapters and PETL baselines for SpeechBrain."""

from speechbrain_moe.distributed import close_process_group
from speechbrain_moe.petl import apply_method, available_methods
from speechbrain_moe.routing import routing_context

__version__ = "0.2.0"
__all__ = [
    "apply_method",
    "available_methods",
    "close_process_group",
    "routing_context",
]
