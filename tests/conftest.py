"""Shared pytest fixtures: tiny models and data built on the fly (no network)."""

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_ast_folder(tmp_path_factory):
    """A random tiny ``ASTModel`` (d=32, 2 layers) saved to a local folder.

    Biases and LayerNorm parameters are perturbed away from their trivial
    initial values (0 and 1), so that the model looks "pretrained" and tests
    cannot pass by accident on an all-zero bias or identity LayerNorm.
    Load it with ``speechbrain_moe.lobes.ast.AST(folder, max_frames=100)``.
    """
    from transformers import ASTConfig, ASTModel

    torch.manual_seed(0)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_length=100,
    )
    model = ASTModel(config)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("tiny_ast")
    model.save_pretrained(folder)
    return str(folder)
