"""Settings of the method files, the bridge files and the LLM-bridge recipe:
a value of the wrong type or out of range is refused where the file is
loaded, with a message naming the setting, the file, the bad value, what is
accepted and the override to use; a user's own file with settings of its own
still loads; a broken file names itself and the fix."""

import os
import subprocess
import sys

import pytest
from speech_llm_helpers import FrameEncoder

from speechbrain_moe.hparams_files import load_hparams, packaged_names
from speechbrain_moe.lobes.ast import AST
from speechbrain_moe.lobes.speech_llm import SpeechLLM, load_bridge, load_llm
from speechbrain_moe.petl import apply_method
from speechbrain_moe.settings import check_recipe_settings
from synthetic.llm import make_tiny_llm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPE = os.path.join(ROOT, "recipes", "LibriSpeech", "LLM_bridge")
SAMPLES = os.path.join(ROOT, "tests", "samples")


@pytest.fixture
def tiny_ast(tiny_ast_folder):
    """The tiny AST lobe, not adapted."""
    return AST(tiny_ast_folder, max_frames=100)


def untouched(backbone):
    """Nothing was frozen or wrapped."""
    return (
        all(p.requires_grad for p in backbone.parameters())
        and type(backbone.model).__name__ == "ASTModel"
    )


@pytest.mark.parametrize(
    "method, settings, accepted",
    [
        ("soft_moa", {"train_norms": "False"}, "True or False"),
        ("soft_moa", {"normalize": 1}, "True or False"),
        ("adapter", {"train_norms": "no"}, "True or False"),
        ("moe_adapter", {"balance_loss_weight": -1}, "a number >= 0"),
        ("moe_adapter", {"z_loss_weight": float("nan")}, "a number >= 0"),
        ("moe_adapter", {"bias_balancing": "True"}, "True or False"),
        ("moe_adapter", {"top_k": 9}, "at most num_experts (8)"),
        ("moe_adapter", {"routing": "top1"}, "topk_softmax, softmax_topk"),
        ("moe_adapter", {"num_shared_experts": -1}, "an integer >= 0"),
        ("lora", {"rank": 0}, "an integer >= 1"),
        ("lora", {"rank": 2.5}, "an integer >= 1"),
        ("lora", {"rank": True}, "an integer >= 1"),
        ("lora", {"alpha": 0}, "a number > 0"),
        ("lora", {"target_layers": [5]}, "a list of module-name patterns"),
        ("lora", {"target_layers": "*q_proj"}, "a list of module-name patterns"),
        ("adapter", {"bottleneck": "24"}, "an integer >= 1"),
        ("adapter", {"placement": "everywhere"}, "pfeiffer_attention"),
        ("convpass", {"kernel_size": 4}, "an odd integer >= 1"),
        ("dense_moa", {"num_experts": 0}, "an integer >= 1"),
        ("soft_moa", {"slots_per_expert": 0}, "an integer >= 1"),
        ("prompt", {"num_prompts": 0}, "an integer >= 1"),
        ("prefix", {"num_prefix": -2}, "an integer >= 1"),
    ],
)
def test_bad_method_setting_names_setting_file_value_and_fix(
    tiny_ast, method, settings, accepted
):
    name, value = next(iter(settings.items()))
    with pytest.raises(ValueError) as info:
        apply_method(tiny_ast, method, settings)
    message = str(info.value)
    assert f"{name} " in message
    assert os.path.join("hparams", "petl", f"{method}.yaml") in message  # the file
    assert repr(value) in message or str(value) in message  # the bad value
    assert accepted in message  # what is accepted
    assert "--petl_overrides=" in message  # the fix
    assert untouched(tiny_ast)


@pytest.mark.parametrize(
    "bridge, settings, accepted",
    [
        ("moe_adapter", {"fused_size": 0}, "an integer >= 1"),
        ("moe_adapter", {"fused_size": None}, "an integer >= 1"),
        ("moe_adapter", {"top_k": 9}, "at most num_experts (8)"),
        ("moe_adapter", {"balance_loss_weight": -0.5}, "a number >= 0"),
        ("moe_adapter", {"bias_balancing": "False"}, "True or False"),
        ("moe_adapter", {"expert_hidden": 12.5}, "an integer >= 1"),
        ("soft_moa", {"num_experts": 0}, "an integer >= 1"),
        ("soft_moa", {"fused_size": -4}, "an integer >= 1"),
        ("dense", {"hidden_size": 0}, "an integer >= 1"),
    ],
)
def test_bad_bridge_setting_names_bridge_overrides(bridge, settings, accepted):
    name = next(iter(settings))
    with pytest.raises(ValueError) as info:
        load_bridge(bridge, settings)
    message = str(info.value)
    assert f"{name} " in message and accepted in message
    assert os.path.join("hparams", "bridges", f"{bridge}.yaml") in message
    assert "--bridge_overrides=" in message
    assert "--petl_overrides" not in message


def test_every_packaged_file_accepts_its_own_defaults_and_null_where_it_means_something():
    for kind in ("petl", "bridges"):
        for name in packaged_names(kind):
            load_hparams(kind, name)
    # null is a value where the file's default is null (it says what it means)
    load_bridge("soft_moa", {"fused_size": None})
    load_hparams("petl", "lora", {"target_layers": None})


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_users_own_method_file_with_settings_of_its_own_loads(tiny_ast, tmp_path):
    path = write(
        tmp_path,
        "my_adapter.yaml",
        "bottleneck: 4\nmy_scale: -3  # not a packaged setting: not checked\n"
        "petl: !name:speechbrain_moe.petl.insert_adapters\n"
        "    adapter: !name:speechbrain_moe.adapters.BottleneckAdapter\n"
        "        bottleneck: !ref <bottleneck>\n",
    )
    adapted = apply_method(tiny_ast, path)
    assert adapted.petl_settings == {"bottleneck": 4, "my_scale": -3}


@pytest.mark.parametrize(
    "text, words",
    [
        (  # a YAML syntax error: the file, the line, the fix
            "bottleneck: 4\n  mode: parallel\npetl: !name:torch.nn.Identity\n",
            ["not valid YAML", "line 2", "syntax"],
        ),
        (  # no petl key: the file and the fix
            "bottleneck: 4\n",
            ["no 'petl' key", "Add one", "adapter.yaml"],
        ),
        (  # a petl key that builds nothing callable
            "petl: 3\n",
            ["'petl' key", "callable", "!name:"],
        ),
        (  # a known setting with a bad value in the file itself
            'train_norms: "False"\npetl: !name:torch.nn.Module.requires_grad_\n',
            ["train_norms", "True or False", "'False'"],
        ),
        (  # not a mapping at all
            "- bottleneck\n",
            ["YAML mapping", "adapter.yaml"],
        ),
        (  # a reference to a key the file does not have
            "petl: !name:speechbrain_moe.petl.insert_adapters\n"
            "    adapter: !name:speechbrain_moe.adapters.BottleneckAdapter\n"
            "        bottleneck: !ref <bottlenek>\n",
            ["does not load", "bottlenek", "!ref <name>"],
        ),
        (  # an implementation that does not exist
            "implementation: kernels\npetl: !name:torch.nn.Module.requires_grad_\n",
            ["implementation", "auto, plain, kernel", "'kernels'"],
        ),
    ],
)
def test_broken_user_method_file_names_the_file_and_the_fix(
    tiny_ast, tmp_path, text, words
):
    path = write(tmp_path, "mine.yaml", text)
    with pytest.raises(ValueError) as info:
        apply_method(tiny_ast, path)
    message = str(info.value)
    assert path in message
    for word in words:
        assert word in message, message
    assert untouched(tiny_ast)


@pytest.mark.parametrize(
    "patterns, words",
    [
        (["*attention"], ["match no Linear/Conv1d", "layers.*.attention.q_proj"]),
        (["*attention*"], ["not linear or convolution", "LoRA adapts linear"]),
    ],
)
def test_lora_patterns_naming_other_modules_are_refused(tiny_ast, patterns, words):
    with pytest.raises(ValueError) as info:
        apply_method(tiny_ast, "lora", {"target_layers": patterns})
    for word in words:
        assert word in str(info.value), str(info.value)
    assert untouched(tiny_ast)


def test_lora_pattern_matching_nothing_names_the_available_layers(tiny_ast):
    with pytest.raises(ValueError) as info:
        apply_method(tiny_ast, "lora", {"target_layers": ["*q_proj", "query"]})
    message = str(info.value)
    assert "'query'" in message and "target_layers" in message
    assert "layers.*.attention.q_proj" in message  # the names it could use
    assert untouched(tiny_ast)


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory):
    """A tiny Llama folder."""
    return make_tiny_llm(str(tmp_path_factory.mktemp("llm")))


@pytest.mark.parametrize(
    "layers, words",
    [
        (["q_proj"], ["['q_proj']", "match no Linear", "layers.*.self_attn.q_proj"]),
        (["*q_proj", "*attention"], ["['*attention']", "self_attn.v_proj"]),
        (["*self_attn"], ["['*self_attn']", "Linear"]),  # not a linear layer
        ("*q_proj", ["a list of module-name patterns", "'*q_proj'"]),
        ([5], ["a list of module-name patterns"]),
    ],
)
def test_llm_lora_layers_refused_naming_the_llm_layers(tiny_llm, layers, words):
    with pytest.raises(ValueError) as info:
        load_llm(tiny_llm, lora_layers=layers)
    message = str(info.value)
    assert "llm_lora_layers" in message
    for word in words:
        assert word in message, message


def test_llm_lora_layers_that_match_are_adapted(tiny_llm):
    llm = load_llm(tiny_llm, lora_layers=["*q_proj", "*v_proj"], lora_rank=2)
    assert len(llm.replace_layers) == 2 * llm.config.num_hidden_layers
    assert load_llm(tiny_llm).replace_layers == []


@pytest.mark.parametrize("factor", [0, -1, 2.0, True])
def test_downsampling_factor_refused(tiny_llm, factor):
    from transformers import AutoModelForCausalLM

    llm = AutoModelForCausalLM.from_pretrained(tiny_llm)
    with pytest.raises(ValueError, match="--downsampling_factor="):
        SpeechLLM(
            FrameEncoder(output_size=16),
            llm,
            load_bridge("dense", {"hidden_size": 16}),
            downsampling_factor=factor,
        )


@pytest.mark.parametrize(
    "settings, name",
    [
        ({"num_beams": 0}, "num_beams"),
        ({"num_beams": 1.5}, "num_beams"),
        ({"max_new_tokens": 0}, "max_new_tokens"),
        ({"task_weights": {"asr": 0.0, "esc50": 0.0}}, "task_weights"),
        ({"task_weights": {"asr": -1.0, "esc50": 2.0}}, "task_weights"),
        ({"task_weights": {"asr": "1"}}, "task_weights"),
        ({"downsampling_factor": 0}, "downsampling_factor"),
        ({"llm_lora_layers": "q_proj"}, "llm_lora_layers"),
        ({"lora_rank": 0}, "lora_rank"),
        ({"select_n_sentences": 0}, "select_n_sentences"),
        ({"max_audio_seconds": 0}, "max_audio_seconds"),
        ({"valid_decode": "True"}, "valid_decode"),
        ({"number_of_epochs": 0}, "number_of_epochs"),
        ({"batch_size": 0}, "batch_size"),
        ({"lr": -0.001}, "lr"),
        ({"num_workers": -1}, "num_workers"),
    ],
)
def test_bridge_recipe_settings_refused(settings, name):
    with pytest.raises(ValueError) as info:
        check_recipe_settings(settings, "hparams/bridge.yaml")
    message = str(info.value)
    assert "hparams/bridge.yaml" in message and f"--{name}=" in message
    check_recipe_settings(
        {
            "num_beams": 4,
            "task_weights": {"asr": 1, "esc50": 0},
            "select_n_sentences": None,
        },
        "hparams/bridge.yaml",
    )


@pytest.mark.parametrize(
    "flag, words",
    [
        ("--num_beams=0", ["num_beams", "an integer >= 1", "--num_beams="]),
        ('--llm_lora_layers=["q_proj"]', ["llm_lora_layers", "self_attn.q_proj"]),
    ],
)
def test_bridge_recipe_refuses_before_writing_anything(tmp_path, flag, words):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "train.py",
        "hparams/bridge.yaml",
        f"--output_folder={out}",
        f"--data_folder={tmp_path / 'no_data'}",
        f"--llm_source={os.path.join(SAMPLES, 'tiny_llm')}",
        f"--backbone_source={os.path.join(SAMPLES, 'tiny_whisper')}",
        "--bridge=dense",
        "--bridge_overrides={hidden_size: 16}",
        "--device=cpu",
        flag,
    ]
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([os.path.join(ROOT, "tests"), ROOT])
    )
    result = subprocess.run(
        cmd, cwd=RECIPE, capture_output=True, text=True, timeout=300, env=env
    )
    assert result.returncode != 0
    for word in words:
        assert word in result.stderr, result.stderr[-3000:]
    # refused before the experiment writes anything (the model loaders may
    # have made their empty cache folder)
    assert not [p for p in out.rglob("*") if p.is_file()]


@pytest.mark.parametrize(
    "method, settings, fix",
    [
        (
            "soft_moa",
            {"train_norms": "False"},
            '--petl_overrides="{train_norms: False}"',
        ),
        ("soft_moa", {"normalize": "yes"}, '--petl_overrides="{normalize: True}"'),
        (
            "moe_adapter",
            {"balance_loss_weight": -1},
            '--petl_overrides="{balance_loss_weight: 0.01}"',  # the file's own
        ),
        ("lora", {"rank": 0}, '--petl_overrides="{rank: 8}"'),
    ],
)
def test_the_fix_suggests_the_meant_or_the_files_own_value(method, settings, fix):
    with pytest.raises(ValueError) as info:
        load_hparams("petl", method, settings)
    assert fix in str(info.value)
