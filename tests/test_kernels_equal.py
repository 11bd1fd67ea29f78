"""The plain PyTorch path of every mixture and its hand-written kernel compute
the same thing (the bottleneck mixtures, the mixtures of LoRA experts, the
bridges): values and every gradient (inputs and parameters), in float32
and under bfloat16 / float16 CPU autocast, with and without padding masks;
the ``implementation`` setting changes no parameter name or shape; ``auto``
takes the kernels on the CPU only and never under ``torch.compile``, which
runs (and compiles) the plain path."""

import functools

import pytest
import torch

from speechbrain_moe.adapters import DenseMoA, SoftMoA, SparseMoE
from speechbrain_moe.adapters.bridges import MoEAdapterBridge, RecomputedMLP
from speechbrain_moe.adapters.lora_experts import LoRAExperts
from speechbrain_moe.experts import ExpertBank
from speechbrain_moe.kernels import check_implementation, use_kernel
from speechbrain_moe.routing import routing_context, token_mask

#: (values, gradients) tolerances, as the autocast tests of test_sparse_moe.py.
TOLERANCES = {
    torch.float32: ((1e-5, 1e-4), (1e-4, 1e-3)),
    torch.bfloat16: ((2e-2, 2e-2), (5e-2, 5e-2)),
    torch.float16: ((2e-2, 2e-2), (5e-2, 5e-2)),
}
DTYPES = list(TOLERANCES)

MASK = torch.tensor([[True] * 7, [True] * 5 + [False] * 2, [True] * 2 + [False] * 5])


def twins(build, seed=0):
    """``build("plain")`` and ``build("kernel")`` with the same random
    parameters (none left at zero, so that every gradient is informative)."""
    torch.manual_seed(seed)
    plain, kernel = build("plain"), build("kernel")
    with torch.no_grad():
        for param in plain.parameters():
            param.normal_(0.0, 0.5)
    kernel.load_state_dict(plain.state_dict())
    return plain, kernel


def run(module, call, inputs, dtype):
    """Output and gradients (of the inputs, then every parameter) of
    ``call(module, *inputs)`` under autocast to ``dtype`` (float32: none)."""
    inputs = [t.detach().clone().requires_grad_(t.is_floating_point()) for t in inputs]
    with routing_context(module) as routing:
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            out = call(module, *inputs)
    torch.manual_seed(123)
    target = torch.randn(out.shape)
    loss = (out.float() * target).sum() + routing.aux_loss
    trained = [p for p in module.parameters() if p.requires_grad]
    leaves = [t for t in inputs if t.requires_grad] + trained
    # allow_unused=False: every parameter is in the graph, as DDP needs.
    grads = torch.autograd.grad(loss, leaves)
    return out, float(torch.as_tensor(routing.aux_loss).detach()), grads


def assert_same(plain, kernel, call, inputs, dtype):
    """The two implementations agree in value, aux loss and every gradient."""
    (value_atol, value_rtol), (grad_atol, grad_rtol) = TOLERANCES[dtype]
    out_p, aux_p, grads_p = run(plain, call, inputs, dtype)
    out_k, aux_k, grads_k = run(kernel, call, inputs, dtype)
    assert out_p.dtype == out_k.dtype
    torch.testing.assert_close(
        out_p.float(), out_k.float(), atol=value_atol, rtol=value_rtol
    )
    assert aux_p == pytest.approx(aux_k, rel=1e-5, abs=1e-6)
    names = [f"input {i}" for i, t in enumerate(inputs) if t.is_floating_point()]
    names += [name for name, p in plain.named_parameters() if p.requires_grad]
    assert len(grads_p) == len(grads_k) == len(names)
    for name, grad_p, grad_k in zip(names, grads_p, grads_k):
        assert grad_p.dtype == grad_k.dtype, name
        # Gradients are compared relative to the largest entry of the tensor,
        # so that entries that cancel to ~0 do not need a relative match.
        scale = max(float(grad_p.abs().max()), 1.0)
        torch.testing.assert_close(
            grad_p.float() / scale,
            grad_k.float() / scale,
            atol=grad_atol,
            rtol=grad_rtol,
            msg=lambda m, name=name: f"gradient of {name}: {m}",
        )


def tokens(*shape, seed=1):
    """Random tokens of moderate size."""
    torch.manual_seed(seed)
    return torch.randn(*shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("gated", [True, False])
def test_expert_bank_dense(dtype, gated):
    plain, kernel = twins(
        lambda impl: ExpertBank(4, 8, 3, output_size=6, implementation=impl)
    )
    x = tokens(3, 7, 8)
    if gated:
        gates = torch.softmax(tokens(3, 7, 4, seed=2), dim=-1)
        assert_same(plain, kernel, lambda m, x, g: m.dense(x, g), [x, gates], dtype)
    else:
        assert_same(plain, kernel, lambda m, x: m.dense(x), [x], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("activation", [torch.nn.SiLU, torch.nn.GELU, torch.nn.Tanh])
def test_expert_bank_routed_with_an_idle_expert(dtype, activation):
    plain, kernel = twins(
        lambda impl: ExpertBank(
            5, 8, 3, output_size=6, activation=activation, implementation=impl
        )
    )
    x = tokens(9, 8)
    torch.manual_seed(3)
    experts = torch.stack([torch.randperm(4)[:2] for _ in range(9)])  # 4 idle
    weights = torch.softmax(torch.randn(9, 2), dim=-1)

    def call(module, x, weights):
        return module.routed(x, experts, weights)

    assert_same(plain, kernel, call, [x, weights], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_expert_bank_grouped(dtype):
    plain, kernel = twins(lambda impl: ExpertBank(3, 8, 2, implementation=impl))
    x, row_weights = tokens(7, 8), torch.rand(7)

    def call(module, x, row_weights):
        return module.grouped(x, [3, 0, 4], row_weights)

    assert_same(plain, kernel, call, [x, row_weights], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("normalize", [False, True])
def test_soft_moa(dtype, masked, normalize):
    plain, kernel = twins(
        lambda impl: SoftMoA(
            8,
            num_experts=3,
            bottleneck=2,
            slots_per_expert=2,
            normalize=normalize,
            implementation=impl,
        )
    )
    mask = MASK if masked else None
    assert_same(plain, kernel, lambda m, x: m(x, mask), [tokens(3, 7, 8)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
def test_dense_moa(dtype, masked):
    plain, kernel = twins(
        lambda impl: DenseMoA(8, num_experts=4, bottleneck=2, implementation=impl)
    )
    mask = MASK if masked else None
    assert_same(plain, kernel, lambda m, x: m(x, mask), [tokens(3, 7, 8)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("dispatch", ["grouped", "dense"])
def test_sparse_moe(dtype, masked, dispatch):
    plain, kernel = twins(
        lambda impl: SparseMoE(
            8,
            num_experts=5,
            top_k=2,
            hidden_size=4,
            num_shared_experts=1,
            zero_init_output=False,
            dispatch=dispatch,
            implementation=impl,
        )
    )
    mask = MASK if masked else None
    assert_same(plain, kernel, lambda m, x: m(x, mask), [tokens(3, 7, 8)], dtype)


#: The routers of the mixtures of LoRA experts (dense_lora, soft_lora, moe_lora).
LORA_ROUTERS = {
    "dense": (DenseMoA, {"num_experts": 4}),
    "soft": (SoftMoA, {"num_experts": 3, "slots_per_expert": 2}),
    "topk": (SparseMoE, {"num_experts": 4, "top_k": 2, "num_shared_experts": 1}),
}


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("masked", [False, True])
@pytest.mark.parametrize("router", sorted(LORA_ROUTERS))
def test_lora_experts(dtype, masked, router):
    """LoRA experts on a frozen linear layer (its weights take no gradient):
    the token mask reaches the router through ``token_mask``, as in an
    encoder."""
    cls, settings = LORA_ROUTERS[router]

    def build(impl):
        mixture = functools.partial(cls, **settings, implementation=impl)
        return LoRAExperts(torch.nn.Linear(8, 6), mixture, rank=2, alpha=4.0)

    plain, kernel = twins(build)

    def call(module, x):
        with token_mask(MASK if masked else None):
            return module(x)

    assert_same(plain, kernel, call, [tokens(3, 7, 8)], dtype)


@pytest.mark.parametrize("dtype", DTYPES)
def test_recomputed_mlp(dtype):
    plain, kernel = twins(
        lambda impl: RecomputedMLP(6, 10, 5, implementation=impl), seed=4
    )
    assert_same(plain, kernel, lambda m, x: m(x), [tokens(2, 9, 6)], dtype)
    with torch.no_grad(), torch.autocast("cpu", dtype, enabled=dtype != torch.float32):
        x = tokens(2, 9, 6)
        (atol, rtol), _ = TOLERANCES[dtype]
        torch.testing.assert_close(
            plain(x).float(), kernel(x).float(), atol=atol, rtol=rtol
        )


@pytest.mark.parametrize("masked", [False, True])
def test_moe_adapter_bridge(masked):
    plain, kernel = twins(
        lambda impl: MoEAdapterBridge(
            12,
            8,
            fused_size=10,
            num_experts=4,
            top_k=2,
            expert_hidden=6,
            aggregation_hidden=16,
            num_shared_experts=1,
            implementation=impl,
        )
    )
    mask = MASK if masked else torch.ones(3, 7, dtype=torch.bool)
    call = lambda m, x: m(x, mask)  # noqa: E731
    assert_same(plain, kernel, call, [tokens(3, 7, 12)], torch.float32)


def test_implementation_changes_no_parameter_name_or_shape():
    """A checkpoint of one implementation loads into the other."""
    builders = [
        lambda impl: SoftMoA(8, num_experts=3, normalize=True, implementation=impl),
        lambda impl: DenseMoA(8, num_experts=3, implementation=impl),
        lambda impl: SparseMoE(8, num_shared_experts=1, implementation=impl),
        lambda impl: MoEAdapterBridge(
            12,
            8,
            fused_size=10,
            expert_hidden=6,
            aggregation_hidden=16,
            implementation=impl,
        ),
    ]
    for build in builders:
        shapes = {
            impl: {k: v.shape for k, v in build(impl).state_dict().items()}
            for impl in ("plain", "kernel", "auto")
        }
        assert shapes["plain"] == shapes["kernel"] == shapes["auto"]
        build("plain").load_state_dict(build("kernel").state_dict())


def test_auto_takes_the_kernels_on_the_cpu_only(monkeypatch):
    cpu, other = torch.zeros(1), torch.zeros(1, device="meta")
    assert use_kernel("auto", cpu) and not use_kernel("auto", other)
    assert use_kernel("kernel", other) and not use_kernel("plain", cpu)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    assert not use_kernel("auto", cpu)  # torch.compile traces the plain path
    assert use_kernel("kernel", cpu)


def test_unknown_implementation_names_the_setting():
    with pytest.raises(ValueError, match="implementation to one of"):
        check_implementation("SoftMoA", "fast")
    for build in (SoftMoA, DenseMoA, SparseMoE):
        with pytest.raises(ValueError, match="implementation"):
            build(8, implementation="cuda")
    with pytest.raises(ValueError, match="implementation"):
        RecomputedMLP(4, 8, 4, implementation="fused")


def _recording_backend(graphs):
    """A ``torch.compile`` backend that keeps every graph Dynamo traced and
    runs it as it is (no code generation: fast on a CPU)."""

    def backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward

    return backend


@pytest.mark.parametrize(
    "build",
    [
        lambda: SoftMoA(8, num_experts=3, bottleneck=2, slots_per_expert=2),
        lambda: DenseMoA(8, num_experts=3, bottleneck=2),
        lambda: SparseMoE(8, num_experts=4, top_k=2, hidden_size=3, dispatch="grouped"),
    ],
    ids=["soft_moa", "dense_moa", "sparse_moe"],
)
def test_torch_compile_traces_the_plain_path(build):
    """``implementation="auto"`` under ``torch.compile``: Dynamo traces the
    plain path (no hand-written autograd.Function in any graph), and the
    compiled module computes what the eager one does, gradients included."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = build()
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
    graphs = []
    compiled = torch.compile(
        module, backend=_recording_backend(graphs), fullgraph=False, dynamic=False
    )
    x = tokens(3, 7, 8)
    x_eager, x_compiled = x.clone().requires_grad_(), x.clone().requires_grad_()
    with routing_context(module) as routing:
        y_compiled = compiled(x_compiled, MASK)
    with routing_context(module):
        y_eager = module(x_eager, MASK)  # eager on the CPU: the kernel
    assert graphs, "torch.compile traced nothing"
    code = "\n".join(graph.code for graph in graphs)
    assert "autograd_function_apply" not in code  # no kernel in the graphs
    torch.testing.assert_close(y_compiled, y_eager, atol=1e-5, rtol=1e-4)
    grads_compiled = torch.autograd.grad(
        y_compiled.pow(2).sum() + routing.aux_loss, [x_compiled, *module.parameters()]
    )
    with routing_context(module) as routing:
        y_eager = module(x_eager, MASK)
    grads_eager = torch.autograd.grad(
        y_eager.pow(2).sum() + routing.aux_loss, [x_eager, *module.parameters()]
    )
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-3)


@pytest.mark.slow
def test_torch_compile_with_inductor_runs_the_plain_soft_moa():
    """The default backend (Inductor generates and compiles C++ for the CPU)
    on a tiny shape: the compiled plain path equals the eager kernel."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = SoftMoA(8, num_experts=2, bottleneck=2)
    with torch.no_grad():
        for param in module.parameters():
            param.normal_(0.0, 0.5)
    compiled = torch.compile(module, fullgraph=False, dynamic=False)
    x = tokens(2, 5, 8)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), module(x), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("method", ["soft_moa", "dense_moa", "moe_adapter"])
def test_method_yaml_sets_the_implementation(tiny_ast_folder, method):
    """``implementation`` is a setting of the packaged method files, so that
    ``--petl_overrides={implementation: plain}`` reaches every mixture."""
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.petl import apply_method

    backbone = apply_method(
        AST(tiny_ast_folder, max_frames=100), method, {"implementation": "plain"}
    )
    chosen = [
        m.implementation for m in backbone.modules() if hasattr(m, "implementation")
    ]
    assert chosen and set(chosen) == {"plain"}


@pytest.mark.parametrize("name", ["soft_moa", "moe_adapter"])
def test_bridge_yaml_sets_the_implementation(name):
    from speechbrain_moe.lobes.speech_llm import load_bridge

    build = load_bridge(name, {"implementation": "kernel"})
    sizes = {} if name == "soft_moa" else {"fused_size": 8, "expert_hidden": 4}
    bridge = build(40, 16, **sizes)
    chosen = [
        m.implementation for m in bridge.modules() if hasattr(m, "implementation")
    ]
    assert chosen and set(chosen) == {"kernel"}


def test_a_checkpoint_loads_whatever_the_implementation(tiny_ast_folder, tmp_path):
    """``implementation`` is recorded with the method's settings but is not
    part of what a checkpoint must match: trained with the kernels, loaded
    onto the plain path, the model computes the same."""
    from speechbrain_moe.lobes.ast import AST
    from speechbrain_moe.petl import apply_method

    def build(implementation):
        torch.manual_seed(0)
        backbone = AST(tiny_ast_folder, max_frames=100)
        settings = {"num_experts": 3, "implementation": implementation}
        return apply_method(backbone, "soft_moa", settings).eval()

    trained = build("kernel")
    with torch.no_grad():
        for param in trained.parameters():
            if param.requires_grad:
                param.normal_(0.0, 0.1)
    path = str(tmp_path / "backbone.ckpt")
    trained.save_trainable(path)
    plain = build("plain")
    plain.load_trainable(path)
    wavs = tokens(2, 16000) * 0.1
    with torch.no_grad():
        torch.testing.assert_close(plain(wavs), trained(wavs), atol=1e-5, rtol=1e-4)
