"""Random parameters for tests that compare a module with a reference."""

import torch


def randomize(module, seed=0):
    """Gives every parameter random values (no zero-initialised projection)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
    return module
