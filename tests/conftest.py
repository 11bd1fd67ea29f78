"""Shared fixtures: tiny random backbones and tiny synthetic data sets, built
once per test session (no network)."""

import os
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


@pytest.fixture(scope="session")
def tiny_ast_dir(tmp_path_factory):
    """A tiny random AST (hidden 32, 2 layers, max_length 100) folder."""
    from synthetic.models import make_tiny_ast

    return make_tiny_ast(str(tmp_path_factory.mktemp("tiny_ast")))


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory):
    """Factory: ``synthetic_dataset(kind)`` -> folder of a tiny data set in the
    official layout of ``esc50``, ``us8k``, ``gsc`` or ``fsc`` (built once)."""
    from synthetic import generate

    cache = {}

    def build(kind):
        if kind not in cache:
            cache[kind] = generate(kind, str(tmp_path_factory.mktemp(kind)))
        return cache[kind]

    return build


@pytest.fixture(scope="session")
def tiny_ast_folder(tmp_path_factory):
    """A random tiny ``ASTModel`` (d=32, 2 layers, max_length 100) folder.

    Biases and LayerNorm parameters are perturbed away from their trivial
    initial values (0 and 1), so that the model looks "pretrained" and tests
    cannot pass by accident on an all-zero bias or identity LayerNorm.
    Load it with ``speechbrain_moe.lobes.ast.AST(folder, max_frames=100)``.
    """
    import torch
    from transformers import ASTConfig, ASTModel

    from synthetic.models import TINY_AST

    torch.manual_seed(0)
    model = ASTModel(ASTConfig(**TINY_AST))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias") or "layernorm" in name:
                param.add_(0.1 * torch.randn_like(param))
    folder = tmp_path_factory.mktemp("tiny_ast_petl")
    model.save_pretrained(folder)
    return str(folder)
