"""Mixtures of LoRA experts (``dense_lora``, ``soft_lora``, ``moe_lora``): the
routers of the bottleneck mixtures over an expert bank of rank-r experts on
one linear layer (speechbrain_moe/adapters/lora_experts.py).

Unit checks on one wrapped layer (plain = kernel, the frozen layer at step
0, gradients of every expert, the top-k losses in the routing context, a
LoRA copied into an expert), the methods inside AST, Whisper and WavLM
(batch invariance, merge refused), the bridge LLM's selector, and debug runs
of every classification recipe and of the bridge recipe with a mixture on
its LLM, whose output folders load and predict.
"""

import csv
import functools
import os
import re
import subprocess

import pytest
import torch
from conftest import PYTHON, REPO
from speechbrain.nnet.adapters import LoRA
from test_batch_invariance import TOLERANCE, batch_differences

from speechbrain_moe.adapters import DenseMoA, LoRAExperts, SoftMoA, SparseMoE
from speechbrain_moe.adapters.lora_experts import llm_lora_adapter
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.petl import apply_method
from speechbrain_moe.petl.merge import NOT_MERGEABLE, merge_and_unload
from speechbrain_moe.routing import routing_context, token_mask

METHODS = ("dense_lora", "soft_lora", "moe_lora")
SMALL = {
    "dense_lora": {"num_experts": 3, "rank": 2, "alpha": 4.0},
    "soft_lora": {"num_experts": 3, "rank": 2, "slots_per_expert": 2},
    "moe_lora": {"num_experts": 3, "top_k": 2, "rank": 2},
}
ROUTERS = {
    "dense": (DenseMoA, {"num_experts": 4}),
    "soft": (SoftMoA, {"num_experts": 3, "slots_per_expert": 2}),
    "topk_grouped": (SparseMoE, {"num_experts": 4, "top_k": 2, "dispatch": "grouped"}),
    "topk_dense": (SparseMoE, {"num_experts": 4, "top_k": 2, "dispatch": "dense"}),
    "topk_shared": (
        SparseMoE,
        {"num_experts": 4, "top_k": 1, "num_shared_experts": 1, "dispatch": "grouped"},
    ),
}


def layer(router, implementation="plain", seed=0, d_in=12, d_out=10):
    """A ``LoRAExperts`` (rank 3, alpha 6) around a random linear layer."""
    torch.manual_seed(seed)
    cls, kwargs = ROUTERS[router]
    linear = torch.nn.Linear(d_in, d_out)
    return LoRAExperts(
        linear,
        functools.partial(cls, **kwargs, implementation=implementation),
        rank=3,
        alpha=6.0,
    )


def perturb(module, scale=0.2, seed=1):
    """Random up-projections (they start at zero), as after training."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if name.endswith("up_weight"):
                noise = torch.randn(param.shape, generator=generator)
                param.copy_(scale * noise)
    return module


def tokens(seed=2):
    """Three sequences of 7 tokens, the last two padded."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 7, 12, generator=generator)
    mask = torch.tensor([[1] * 7, [1] * 5 + [0] * 2, [1] * 3 + [0] * 4]).bool()
    return x, mask


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_the_bank_is_bias_free_rank_r_and_zero_at_start(router):
    wrapped = layer(router)
    bank = wrapped.mixture.experts
    assert bank.down_bias is None and bank.up_bias is None
    assert isinstance(bank.activation, torch.nn.Identity)
    assert bank.down_weight.shape == (12, bank.num_experts, 3)
    assert bank.up_weight.shape == (bank.num_experts, 3, 10)
    assert wrapped.scaling == 2.0
    assert not any(p.requires_grad for p in wrapped.pretrained_module.parameters())
    x, mask = tokens()
    with token_mask(mask), torch.no_grad():
        assert torch.equal(wrapped(x), wrapped.pretrained_module(x))


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_kernel_equals_plain_values_and_gradients(router):
    plain = perturb(layer(router, "plain"))
    kernel = layer(router, "kernel")
    kernel.load_state_dict(plain.state_dict())
    x, mask = tokens()
    results = []
    for model in (plain, kernel):
        leaf = x.clone().requires_grad_()
        with token_mask(mask), routing_context(model) as routing:
            y = model(leaf)
        loss = y.pow(2).sum() + routing.aux_loss
        params = [p for p in model.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, [leaf] + params)
        results.append((y, grads))
    (y_p, g_p), (y_k, g_k) = results
    torch.testing.assert_close(y_k, y_p, atol=1e-5, rtol=1e-5)
    for a, b in zip(g_k, g_p):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_autocast_keeps_the_wrapped_layers_dtype(router):
    """Under bf16 autocast the output has the dtype of the wrapped layer's
    (as SpeechBrain's LoRA), and the kernel path stays near the plain one."""
    plain = perturb(layer(router, "plain"))
    kernel = layer(router, "kernel")
    kernel.load_state_dict(plain.state_dict())
    x, mask = tokens()
    with token_mask(mask), torch.autocast("cpu", dtype=torch.bfloat16):
        with routing_context():
            y_p, y_k = plain(x), kernel(x)
    assert y_p.dtype == y_k.dtype == torch.bfloat16
    torch.testing.assert_close(y_k.float(), y_p.float(), atol=3e-2, rtol=3e-2)


@pytest.mark.parametrize("router", sorted(ROUTERS))
def test_each_expert_is_the_low_rank_update_and_gets_gradient(router):
    """Every expert is ``B_i A_i x`` (checked against a loop for the dense
    router), and every expert's weights get a non-zero gradient."""
    wrapped = perturb(layer(router))
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2, 40, 12, generator=generator)  # enough tokens for every expert
    if router == "dense":
        mixture = wrapped.mixture
        gates = torch.softmax(mixture.router(x), -1)
        bank = mixture.experts
        loop = sum(
            gates[..., i : i + 1] * (x @ bank.down_weight[:, i] @ bank.up_weight[i])
            for i in range(bank.num_experts)
        )
        expected = wrapped.pretrained_module(x) + 2.0 * loop
        torch.testing.assert_close(wrapped(x), expected, atol=1e-5, rtol=1e-5)
    with routing_context(wrapped) as routing:
        loss = wrapped(x).pow(2).sum() + routing.aux_loss
    loss.backward()
    for name, param in wrapped.mixture.named_parameters():
        assert param.grad is not None, name
        if name.endswith(("down_weight", "up_weight")):  # per expert
            per_expert = param.grad.transpose(0, 1) if "down" in name else param.grad
            norms = per_expert.flatten(1).norm(dim=1)
            assert (norms > 0).all(), (name, norms)


def test_topk_losses_reach_the_routing_context():
    wrapped = layer("topk_grouped")
    moe = wrapped.mixture
    x, mask = tokens()
    with token_mask(mask), routing_context(wrapped) as routing:
        wrapped(x)
    # Recomputed by hand from the real tokens (no LayerNorm: the experts and
    # the router read x, as LoRA does).
    assert isinstance(moe.norm, torch.nn.Identity)
    logits = moe.router(x[mask]).float()
    chosen = logits.topk(2, dim=-1).indices
    share = torch.bincount(chosen.reshape(-1), minlength=4).float() / chosen.numel()
    balance = 0.01 * 4 * (share * torch.softmax(logits, -1).mean(0)).sum()
    z = 0.001 * torch.logsumexp(logits, -1).pow(2).mean()
    torch.testing.assert_close(routing.aux_loss, balance + z)


def test_a_lora_copied_into_every_expert_is_that_lora():
    """The documented mapping of SpeechBrain's LoRA onto one expert: with
    every expert a copy, dense and top-k (topk_softmax) gates sum to one."""
    torch.manual_seed(0)
    linear = torch.nn.Linear(12, 10)
    lora = LoRA(linear, rank=3, alpha=6.0)
    torch.nn.init.normal_(lora.adapter_up_proj.weight)
    x = torch.randn(2, 7, 12)
    for router in ("dense", "topk_grouped"):
        wrapped = layer(router)
        wrapped.pretrained_module.load_state_dict(linear.state_dict())
        for i in range(wrapped.mixture.num_experts):
            wrapped.load_lora_expert(i, lora)
        with torch.no_grad():
            torch.testing.assert_close(wrapped(x), lora(x), atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="scaling"):
        layer("dense").load_lora_expert(0, LoRA(torch.nn.Linear(12, 10), 3, 1.0))


def test_refusals_name_the_problem_and_the_fix():
    with pytest.raises(ValueError, match="linear layers only"):
        LoRAExperts(torch.nn.Conv1d(4, 4, 3), DenseMoA)
    with pytest.raises(ValueError, match="router must be one of"):
        LoRAExperts(torch.nn.Linear(4, 4), torch.nn.Linear)
    with pytest.raises(ValueError, match="rank"):
        LoRAExperts(torch.nn.Linear(4, 4), DenseMoA, rank=0)
    with pytest.raises(ValueError, match="batch, time, features"):
        LoRAExperts(torch.nn.Linear(4, 4), DenseMoA)(torch.randn(3, 4))


@pytest.fixture(scope="module")
def adapted(tiny_ast_folder):
    """``adapted(method, **settings)``: a tiny AST with the method applied."""

    def build(method, **extra):
        torch.manual_seed(0)
        backbone = AST(tiny_ast_folder, max_frames=100)
        return apply_method(backbone, method, {**SMALL[method], **extra})

    return build


def test_moe_lora_losses_of_every_layer_reach_the_context(adapted):
    backbone = adapted("moe_lora").train()
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    with routing_context(backbone, track_load=True) as routing:
        backbone(wavs, torch.tensor([1.0, 0.6]))
    wrapped = [m for m in backbone.modules() if isinstance(m, LoRAExperts)]
    assert len(wrapped) == 4  # q and v of the two layers
    assert len(routing.loads) == 4
    assert (
        float(routing.aux_loss.detach()) > 4 * 0.01 * 0.99
    )  # each balance loss ~alpha


@pytest.mark.parametrize("method", METHODS)
def test_merge_is_refused_with_the_reason(adapted, method):
    with pytest.raises(ValueError, match="input-dependent routing") as err:
        merge_and_unload(adapted(method))
    assert NOT_MERGEABLE[method] in str(err.value)


@pytest.mark.parametrize("method", METHODS)
def test_a_clip_alone_equals_the_clip_in_a_batch(adapted, method):
    backbone = perturb(adapted(method)).eval()
    frames, pooled = batch_differences(backbone, clip_samples=(16000, 9001, 12345))
    assert frames <= TOLERANCE and pooled <= TOLERANCE, (frames, pooled)


@pytest.mark.parametrize("backbone", ["whisper", "wavlm"])
def test_whisper_and_wavlm_take_every_mixture(backbone, tmp_path):
    """q/v projections and the FFN of the other encoders: the frozen output at
    step 0, batch invariance and gradients once the experts moved."""
    import synthetic.models as models
    from speechbrain_moe.lobes.wavlm import WavLM
    from speechbrain_moe.lobes.whisper import Whisper

    folder = getattr(models, f"make_tiny_{backbone}")(str(tmp_path / "model"))
    lobe_cls = {"whisper": Whisper, "wavlm": WavLM}[backbone]
    ffn = {"whisper": "*fc1", "wavlm": "*intermediate_dense"}[backbone]
    wavs = 0.1 * torch.randn(2, 16000, generator=torch.Generator().manual_seed(0))
    lens = torch.tensor([1.0, 0.7])
    frozen = lobe_cls(folder).eval()
    with torch.no_grad():
        reference = frozen(wavs, lens)
    for method in METHODS:
        for targets in (None, ["*q_proj", ffn]):
            torch.manual_seed(0)
            lobe = apply_method(
                lobe_cls(folder), method, {**SMALL[method], "target_layers": targets}
            ).eval()
            wrapped = [m for m in lobe.modules() if isinstance(m, LoRAExperts)]
            assert wrapped, (method, targets)
            with torch.no_grad():
                torch.testing.assert_close(lobe(wavs, lens), reference)
            perturb(lobe)
            frames, pooled = batch_differences(lobe, clip_samples=(16000, 9001))
            assert frames <= TOLERANCE and pooled <= TOLERANCE, (method, frames)
            with routing_context(lobe) as routing:
                loss = lobe(wavs, lens).pow(2).sum() + routing.aux_loss
            loss.backward()
            trained = [p for p in lobe.parameters() if p.requires_grad]
            assert trained and all(p.grad is not None for p in trained)
            assert all(
                m.mixture.experts.down_weight.grad.abs().sum() > 0 for m in wrapped
            )


def test_the_llm_selector(tmp_path):
    """lora stays SpeechBrain's LoRA; the mixtures are LoRAExperts; soft
    routing is refused on a causal LLM with the reason; a mixture on a tiny
    LLM leaves its output unchanged at step 0."""
    from speechbrain_moe.lobes.speech_llm import load_llm
    from synthetic.llm import make_tiny_llm

    assert llm_lora_adapter("lora", 4, 8.0) == (LoRA, {"rank": 4, "alpha": 8.0})
    adapter, kwargs = llm_lora_adapter("dense_lora", 2, 4.0)
    assert isinstance(adapter(torch.nn.Linear(4, 4)).mixture, DenseMoA)
    with pytest.raises(
        ValueError,
        match="causal LLM: Soft-MoE slots.*tokens after it.*Set llm_lora_method",
    ):
        llm_lora_adapter("soft_lora")
    with pytest.raises(ValueError, match="does not wrap linear layers"):
        llm_lora_adapter("adapter")
    folder = make_tiny_llm(str(tmp_path / "llm"))
    plain = load_llm(folder)
    mixed = load_llm(folder, lora_layers=["*q_proj", "*v_proj"], lora_method="moe_lora")
    wrapped = [m for m in mixed.modules() if isinstance(m, LoRAExperts)]
    assert len(wrapped) == 2 * mixed.config.num_hidden_layers
    ids = torch.randint(0, mixed.config.vocab_size, (2, 9))
    with torch.no_grad():
        expected = plain(input_ids=ids).logits
        torch.testing.assert_close(mixed(input_ids=ids).logits, expected)


#: Each classification recipe with a LoRA-mixture method (all three covered;
#: fluent-speech-commands with experts on the FFN too). A --debug run saves
#: no checkpoint, so ESC50 trains one short epoch instead and its output
#: folder is loaded for inference.
RECIPE_RUNS = {
    "ESC50": ("esc50", "moe_lora", []),
    "UrbanSound8k": ("us8k", "dense_lora", []),
    "Google-speech-commands": ("gsc", "soft_lora", []),
    "fluent-speech-commands": (
        "fsc",
        "moe_lora",
        ['--petl_overrides={target_layers: ["*q_proj", "*v_proj", "*fc1"]}'],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("recipe", sorted(RECIPE_RUNS))
def test_recipe_run_with_lora_experts(
    recipe, tmp_path, tiny_ast_dir, synthetic_dataset
):
    from speechbrain_moe.inference import PETLAudioClassifier

    data, method, extra = RECIPE_RUNS[recipe]
    if recipe == "ESC50":
        mode = ["--number_of_epochs=1"]
    else:
        mode = ["--debug", "--debug_batches=1", "--debug_epochs=1"]
    recipe_dir = os.path.join(REPO, "recipes", recipe, "PETL")
    cmd = [
        PYTHON,
        os.path.join(REPO, "tests", "recipe_runner.py"),
        recipe_dir,
        os.path.join(recipe_dir, "hparams", "ast.yaml"),
        str(tmp_path),
        method,
        f"--data_folder={synthetic_dataset(data)}",
        f"--backbone_source={tiny_ast_dir}",
        "--max_frames=100",
        "--batch_size=2",
        "--test_batch_size=4",
        "--device=cpu",
        "--noprogressbar",
        *mode,
        *extra,
    ]
    proc = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, cwd=str(tmp_path)
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0 and f"=== {method}: ok" in output, output[-6000:]
    out = tmp_path / method
    log = (out / "train_log.txt").read_text()
    assert "test accuracy" in log, log
    if method == "moe_lora":  # the top-k losses reached the Brain's objective
        assert "train aux_loss" in log and "load_entropy" in log, log
    if recipe != "ESC50":
        return
    model = PETLAudioClassifier.from_hparams(
        source=str(out), savedir=str(tmp_path / "loaded")
    )
    experts = [m for m in model.mods.modules() if isinstance(m, LoRAExperts)]
    assert len(experts) == 4
    with open(out / "test.csv", newline="") as fin:
        row = next(csv.DictReader(fin))
    log_probs, _, _, label = model.classify_file(row["wav"])
    assert torch.isfinite(log_probs).all() and len(label) == 1


@pytest.mark.slow
def test_bridge_debug_run_with_lora_experts_on_the_llm(tmp_path):
    """moe_lora on the tiny LLM's q/v projections (dense bridge, which has
    no auxiliary loss of its own): the LLM's losses reach the objective,
    the checkpoint holds the experts and the run folder transcribes."""
    from speechbrain_moe.inference import SpeechLLMTranscriber
    from synthetic.librispeech import make_librispeech
    from synthetic.llm import make_tiny_llm
    from synthetic.models import make_tiny_whisper

    libri = make_librispeech(str(tmp_path / "LibriSpeech"))
    llm = make_tiny_llm(str(tmp_path / "llm"))
    whisper = make_tiny_whisper(str(tmp_path / "whisper"))
    out = tmp_path / "exp"
    cmd = [
        PYTHON,
        "train.py",
        "hparams/bridge.yaml",
        f"--output_folder={out}",
        f"--data_folder={libri}",
        f"--llm_source={llm}",
        f"--backbone_source={whisper}",
        "--bridge=dense",
        "--bridge_overrides={hidden_size: 64}",
        '--llm_lora_layers=["*q_proj", "*v_proj"]',
        "--llm_lora_method=moe_lora",
        "--lora_rank=2",
        "--max_new_tokens=4",
        "--number_of_epochs=1",
        "--select_n_sentences=4",
        "--valid_decode=False",
        "--batch_size=2",
        "--test_batch_size=1",
        "--device=cpu",
        "--noprogressbar",
    ]
    recipe = os.path.join(REPO, "recipes", "LibriSpeech", "LLM_bridge")
    path = [os.path.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in path if p))
    proc = subprocess.run(
        cmd, cwd=recipe, capture_output=True, text=True, timeout=600, env=env
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    log = (out / "train_log.txt").read_text()
    assert "test WER" in log
    aux = [float(v) for v in re.findall(r"aux_loss: ([0-9.e+-]+)", log)]
    assert aux and all(v > 0 for v in aux), log  # the dense bridge has none
    asr = SpeechLLMTranscriber.from_hparams(
        source=str(out), hparams_file="inference.yaml", savedir=str(tmp_path / "s")
    )
    experts = [m for m in asr.mods.modules() if isinstance(m, LoRAExperts)]
    assert len(experts) == 2 * asr.mods.speech_llm.llm.config.num_hidden_layers
    with open(out / "test-clean.csv", newline="") as fin:
        row = next(csv.DictReader(fin))
    assert isinstance(asr.transcribe_file(row["wav"]), str)


def test_disabling_gives_the_frozen_backbone_back(adapted, tiny_ast_folder):
    from speechbrain_moe.petl.disable import disable_adapters

    backbone = perturb(adapted("moe_lora")).eval()
    frozen = AST(tiny_ast_folder, max_frames=100).eval()
    wavs = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert not torch.allclose(backbone(wavs), frozen(wavs), atol=1e-4)
        with disable_adapters(backbone):
            torch.testing.assert_close(backbone(wavs), frozen(wavs))


@pytest.mark.parametrize(
    "method, settings, words",
    [
        ("moe_lora", {"top_k": 5}, ["top_k", "num_experts"]),
        ("dense_lora", {"rank": 0}, ["rank", "integer >= 1"]),
        ("soft_lora", {"alpha": 0}, ["alpha", "> 0"]),
        ("dense_lora", {"target_layers": "*q_proj"}, ["target_layers", "list"]),
    ],
)
def test_bad_settings_are_refused_naming_them(adapted, method, settings, words):
    with pytest.raises(ValueError) as err:
        adapted(method, **settings)
    assert all(word in str(err.value) for word in words), str(err.value)


def test_bridge_setting_is_checked():
    from speechbrain_moe.settings import RECIPE_SETTINGS

    problem = RECIPE_SETTINGS["llm_lora_method"].problem("soft_lora")
    assert "lora, dense_lora, moe_lora" in problem
    assert RECIPE_SETTINGS["llm_lora_method"].problem("moe_lora") is None
