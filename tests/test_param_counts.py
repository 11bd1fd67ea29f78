"""Trainable parameters of the Soft-MoA paper's Table 1 configurations on an
AST-base-shaped model (d=768, 12 layers, 12 heads, FFN 3072), excluding the
classifier head and counting the LayerNorms the adapters read from."""

import os

import pytest
import torch
from conftest import REPO

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.summary import count_parameters, format_parameters


@pytest.fixture(scope="module")
def ast_base_folder(tmp_path_factory):
    """An AST-base-shaped model (ASTConfig defaults, max_length 100), saved once.

    Only parameter counts are read, so the weights are left uninitialised and
    stored in bfloat16: this keeps the 86M-parameter model cheap to build.
    """
    from transformers import ASTConfig, ASTModel
    from transformers.initialization import no_init_weights

    folder = tmp_path_factory.mktemp("ast_base")
    default = torch.get_default_dtype()
    torch.set_default_dtype(torch.bfloat16)
    try:
        with no_init_weights():
            model = ASTModel(ASTConfig(max_length=100))
    finally:
        torch.set_default_dtype(default)
    model.save_pretrained(folder)
    return str(folder)


def load(folder):
    """The saved AST-base through the AST lobe."""
    return AST(folder, max_frames=100)


@pytest.mark.parametrize(
    "method, settings, paper",
    [
        (
            "soft_moa",
            {"num_experts": 14, "bottleneck": 1, "placement": "pfeiffer_attention"},
            535_000,
        ),
        (
            "dense_moa",
            {"num_experts": 14, "bottleneck": 1, "placement": "pfeiffer_attention"},
            535_000,
        ),
        ("adapter", {"bottleneck": 24, "placement": "pfeiffer_attention"}, 470_000),
    ],
)
def test_table1_trainable_parameters(ast_base_folder, method, settings, paper):
    backbone = load(ast_base_folder)
    apply_method(backbone, method, settings)
    classifier = torch.nn.Linear(768, 50)
    counts = count_parameters({"backbone": backbone, "classifier": classifier})
    assert counts["trainable_no_head"] == pytest.approx(paper, rel=0.01)
    assert counts["trainable"] == counts["trainable_no_head"] + 768 * 50 + 50
    assert counts["components"]["backbone"]["total"] > 80_000_000
    norms = sum(
        p.numel() for n, p in backbone.named_parameters() if "layernorm_before" in n
    )
    assert norms == 12 * 2 * 768  # the LayerNorms the adapters read from train too
    assert "trainable without head" in format_parameters(counts)


def test_dense_moa_costs_what_an_adapter_of_bottleneck_14_costs(ast_base_folder):
    """N experts of bottleneck 1 hold about the weights of one r = N adapter."""
    dense, single = load(ast_base_folder), load(ast_base_folder)
    apply_method(
        dense, "dense_moa", {"num_experts": 14, "bottleneck": 1, "train_norms": False}
    )
    apply_method(single, "adapter", {"bottleneck": 14, "train_norms": False})
    n_dense = count_parameters(dense)["trainable"]
    n_single = count_parameters(single)["trainable"]
    # Extra: the router (d*N + N) and one output bias per expert instead of one.
    assert n_dense - n_single == 12 * (768 * 14 + 14 + 13 * 768)


#: The mixtures of LoRA experts at their method files' defaults (4 experts of
#: rank 4 on the query and value projections of every layer).
LORA_MIXTURES = ("dense_lora", "soft_lora", "moe_lora")


def readme_count(method):
    """The AST-base trainable count the README's method table states."""
    import re

    with open(os.path.join(REPO, "README.md"), encoding="utf-8") as fin:
        for line in fin:
            if line.startswith(f"| `{method}` |"):
                found = re.search(r"([\d,]+) trainable on AST-base", line)
                assert found, line
                return int(found.group(1).replace(",", ""))
    raise AssertionError(f"no row for {method} in the README's method table")


@pytest.mark.parametrize("method", LORA_MIXTURES)
def test_lora_mixture_counts_are_the_readme_table(ast_base_folder, method):
    """Measured with the counter of the tables, equal to the README's row and
    to the count by hand: per adapted layer (2 x 12 layers) a bank of 4 rank-4
    experts (no biases) plus the router (dense: W_r and b_r; top-k: W_g;
    soft: the slot embeddings)."""
    backbone = load(ast_base_folder)
    apply_method(backbone, method)
    counts = count_parameters({"backbone": backbone})
    bank = 4 * (768 * 4 + 4 * 768)
    router = {"dense_lora": 768 * 4 + 4, "soft_lora": 768 * 4, "moe_lora": 768 * 4}
    assert counts["trainable"] == 24 * (bank + router[method])
    assert counts["trainable"] == readme_count(method)
