"""Every registered PETL method on a tiny AST: function-preserving start, the
intended trainable parameters, and every trainable parameter learning.

The model is a random ``ASTModel`` (d=32, 2 layers) saved to a folder and
loaded through :class:`speechbrain_moe.lobes.ast.AST`, with a linear head on
top, exactly as a recipe builds it.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method, available_methods
from speechbrain_moe.routing import routing_context

HIDDEN = 32
NUM_LAYERS = 2
NUM_CLASSES = 3

# Small settings so the whole file runs in a few seconds.
SETTINGS = {
    "linear": {},
    "full_ft": {},
    "bitfit": {},
    "lora": {"rank": 2, "alpha": 2.0},
    "prompt": {"num_prompts": 3},
    "prefix": {"num_prefix": 3},
    "adapter": {"bottleneck": 4},
    "convpass": {"bottleneck": 4},
    "dense_moa": {"num_experts": 3, "bottleneck": 2},
    "soft_moa": {"num_experts": 3, "bottleneck": 2, "slots_per_expert": 2},
    "moe_adapter": {"num_experts": 3, "top_k": 2, "hidden_size": 4},
    "dense_lora": {"num_experts": 3, "rank": 2, "alpha": 4.0},
    "soft_lora": {"num_experts": 3, "rank": 2, "slots_per_expert": 2},
    "moe_lora": {"num_experts": 3, "top_k": 2, "rank": 2},
}
ADAPTERS = ("adapter", "convpass", "dense_moa", "soft_moa", "moe_adapter")
LORA_MIXTURES = ("dense_lora", "soft_lora", "moe_lora")
FUNCTION_PRESERVING = ADAPTERS + LORA_MIXTURES + ("lora", "bitfit", "linear", "full_ft")

# (method, extra settings) cases: every method with its default placement, and
# the placement variants of the adapter methods.
CASES = [(m, {}) for m in sorted(SETTINGS)] + [
    ("adapter", {"placement": "pfeiffer_ffn"}),
    ("soft_moa", {"placement": "houlsby"}),
    ("dense_moa", {"mode": "sequential"}),
    ("convpass", {"placement": "houlsby", "mode": "sequential"}),
    ("moe_adapter", {"placement": "pfeiffer_ffn"}),
    ("moe_lora", {"target_layers": ["*q_proj", "*fc1"]}),
    ("soft_lora", {"target_layers": ["*fc2"]}),
]


def case_id(case):
    """Readable test id of a (method, extras) case."""
    method, extras = case
    return "-".join([method] + [str(v) for v in extras.values()])


def build(folder, method, **extras):
    """The frozen reference backbone, the adapted backbone and a head."""
    torch.manual_seed(0)
    frozen = AST(folder, max_frames=100)
    backbone = copy.deepcopy(frozen)
    apply_method(backbone, method, {**SETTINGS[method], **extras})
    head = torch.nn.Linear(HIDDEN, NUM_CLASSES)
    return frozen, backbone, head


def batch():
    """Two 1 s clips, the second padded (60 % real), and their labels."""
    generator = torch.Generator().manual_seed(1)
    wavs = 0.1 * torch.randn(2, 16000, generator=generator)
    lens = torch.tensor([1.0, 0.6])
    wavs[1, 9600:] = 0.0
    return wavs, lens, torch.tensor([0, 2])


def expected_trainable(name, method, placement="pfeiffer_attention"):
    """Whether parameter ``name`` of the adapted backbone should train."""
    if method == "full_ft":
        return True
    if method == "linear":
        return False
    if method == "bitfit":
        return name.endswith(".bias")
    if method == "lora":
        return "adapter_down_proj" in name or "adapter_up_proj" in name
    if method in LORA_MIXTURES:  # the router and expert bank of each layer
        return ".mixture." in name
    if method == "prompt":
        return name.endswith(".prompts")
    if method == "prefix":
        return name.endswith(".prefix_keys") or name.endswith(".prefix_values")
    norms = {
        "pfeiffer_attention": ("layernorm_before",),
        "pfeiffer_ffn": ("layernorm_after",),
        "houlsby": ("layernorm_before", "layernorm_after"),
    }[placement]
    return ".adapter." in name or any(f".{n}." in name for n in norms)


def test_every_registered_method_is_covered():
    assert sorted(SETTINGS) == available_methods()


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_only_intended_parameters_train(tiny_ast_folder, case):
    method, extras = case
    _, backbone, _ = build(tiny_ast_folder, method, **extras)
    placement = extras.get("placement", "pfeiffer_attention")
    names = dict(backbone.named_parameters())
    trainable = {n for n, p in names.items() if p.requires_grad}
    expected = {n for n in names if expected_trainable(n, method, placement)}
    assert trainable == expected
    if method != "linear":
        assert trainable, "the method trains nothing"
    if method in ADAPTERS:
        # One adapter per wrapped block; the pretrained q/k/v/o and MLP
        # weights stay frozen.
        wrapped = 2 * NUM_LAYERS if placement == "houlsby" else NUM_LAYERS
        adapters = {n.split(".adapter.")[0] for n in trainable if ".adapter." in n}
        assert len(adapters) == wrapped
        assert not any("pretrained_module" in n for n in trainable)


@pytest.fixture(scope="module")
def frozen_tokens(tiny_ast_folder):
    """Token outputs of the unadapted backbone on :func:`batch`."""
    wavs, lens, _ = batch()
    frozen = AST(tiny_ast_folder, max_frames=100).eval()
    with torch.no_grad():
        return frozen.encode(wavs, lens)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_output_at_init(tiny_ast_folder, frozen_tokens, case):
    """Equal to the frozen model where the method allows it, else different."""
    method, extras = case
    _, backbone, _ = build(tiny_ast_folder, method, **extras)
    wavs, lens, _ = batch()
    with torch.no_grad():
        hidden, mask = backbone.eval().encode(wavs, lens)
    assert torch.equal(mask, frozen_tokens[1])
    assert not mask.all(), "the batch should contain padded tokens"
    if method in FUNCTION_PRESERVING:
        torch.testing.assert_close(hidden, frozen_tokens[0], atol=1e-5, rtol=1e-5)
    else:  # prompt / prefix: random prompts change the output from the start
        assert not torch.allclose(hidden, frozen_tokens[0], atol=1e-4)


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_trainable_parameter_moves(tiny_ast_folder, case):
    method, extras = case
    _, backbone, head = build(tiny_ast_folder, method, **extras)
    wavs, lens, labels = batch()
    params = [p for p in backbone.parameters() if p.requires_grad]
    params += list(head.parameters())
    before = {
        n: p.detach().clone() for n, p in backbone.named_parameters() if p.requires_grad
    }
    # No weight decay: a parameter may move only through its gradient.
    optimizer = torch.optim.AdamW(params, lr=1e-2, weight_decay=0.0)
    backbone.train()
    for _ in range(3):
        optimizer.zero_grad()
        with routing_context(backbone) as routing:
            logits = head(backbone(wavs, lens))
        loss = F.cross_entropy(logits, labels) + routing.aux_loss
        loss.backward()
        optimizer.step()
    after = dict(backbone.named_parameters())
    stuck = [n for n, value in before.items() if torch.equal(value, after[n].detach())]
    assert not stuck, f"{method}: parameters that did not move: {stuck}"
    frozen = [n for n, p in after.items() if not p.requires_grad]
    assert all(after[n].grad is None for n in frozen)
