"""Unit tests of the speech-LLM bridge (speechbrain_moe.lobes.speech_llm)."""

import pytest
import torch
from speech_llm_helpers import FrameEncoder, greedy_without_cache, sequence_nll
from speechbrain.nnet.adapters import AdaptedModel, LoRA
from transformers import AutoModelForCausalLM

from speechbrain_moe.lobes.speech_llm import (
    SpeechLLM,
    load_bridge,
    relative_to_mask,
    target_nll,
)
from synthetic.llm import make_tiny_llm

BRIDGES = ("dense", "moe_adapter", "soft_moa")
SMALL = {
    "dense": {"hidden_size": 32},
    "moe_adapter": {
        "fused_size": 32,
        "num_experts": 4,
        "top_k": 2,
        "expert_hidden": 16,
        "num_shared_experts": 1,
        "aggregation_hidden": 48,
    },
    "soft_moa": {"num_experts": 3, "bottleneck": 8},
}


@pytest.fixture(scope="module")
def llm_folder(tmp_path_factory):
    return make_tiny_llm(str(tmp_path_factory.mktemp("tiny_llm")))


def make_model(llm_folder, bridge="moe_adapter", seed=0, lora_rank=0):
    torch.manual_seed(seed)
    llm = AutoModelForCausalLM.from_pretrained(llm_folder)
    if lora_rank:
        llm = AdaptedModel(
            llm, LoRA, target_layers=["*_proj"], adapter_kwargs={"rank": lora_rank}
        )
    model = SpeechLLM(
        FrameEncoder(output_size=16),
        llm,
        load_bridge(bridge, SMALL[bridge]),
        downsampling_factor=2,
        bos_index=1,
    )
    return model.eval()


@pytest.mark.parametrize("bridge", BRIDGES)
def test_encode_audio_valid_frames(llm_folder, bridge):
    model = make_model(llm_folder, bridge)
    wavs = torch.randn(2, 3200)
    emb, mask = model.encode_audio(wavs, torch.tensor([1.0, 0.5]))
    # 21 fbank frames (19 inside the audio) -> 10 stacked (9 valid);
    # half the audio -> 9 valid frames -> 4 stacked
    assert emb.shape == (2, 10, 64)
    assert mask.sum(1).tolist() == [9, 4]
    # padded frames change nothing for the valid ones
    emb_alone, _ = model.encode_audio(wavs[1:, :1600], torch.ones(1))
    assert torch.allclose(emb_alone[0, :4], emb[1, :4], atol=1e-5)


def test_layout_and_loss_masking(llm_folder):
    model = make_model(llm_folder, "moe_adapter")
    audio = torch.randn(2, 4, 64)
    audio_mask = torch.tensor([[True] * 4, [True] * 2 + [False] * 2])
    prompt = torch.tensor([[5, 6, 7], [5, 6, 0]])
    prompt_mask = torch.tensor([[True] * 3, [True, True, False]])
    target = torch.tensor([[8, 9, 2], [10, 2, 0]])
    target_mask = torch.tensor([[True] * 3, [True, True, False]])
    inp = model.build_inputs(
        audio, audio_mask, prompt, prompt_mask, target, target_mask
    )
    # prefix = bos + start + audio + end + prompt; left padded
    assert inp["prefix_length"] == 1 + 1 + 4 + 1 + 3
    assert inp["attention_mask"].sum(1).tolist() == [13, 9]
    assert inp["attention_mask"][1, :3].tolist() == [False] * 3
    assert inp["position_ids"][1, 3].item() == 0
    # the loss only counts positions predicting target tokens
    assert inp["loss_mask"].sum(1).tolist() == [3, 2]
    logits = model.llm(
        inputs_embeds=inp["inputs_embeds"],
        attention_mask=inp["attention_mask"].long(),
        position_ids=inp["position_ids"],
    ).logits
    loss = sequence_nll(logits, inp["labels"], inp["loss_mask"])
    labels = inp["labels"].clone()
    prefix = inp["prefix_length"]
    labels[:, :prefix] = torch.randint(0, 200, (2, prefix))  # prompt + audio labels
    labels[1, -1] = 77  # the padded target position
    assert torch.equal(loss, sequence_nll(logits, labels, inp["loss_mask"]))
    labels[0, prefix] = 11  # a real target token does matter
    assert not torch.equal(loss, sequence_nll(logits, labels, inp["loss_mask"]))
    # forward() aligns logits with targets and gives the same loss
    out_logits = logits[:, prefix - 1 : prefix - 1 + 3]
    assert torch.allclose(target_nll(out_logits, target, target_mask), loss, atol=1e-6)


def test_forward_loss_independent_of_padding(llm_folder):
    model = make_model(llm_folder, "soft_moa")
    wavs = torch.randn(2, 3200)
    prompt = torch.tensor([[5, 6, 7], [5, 6, 7]])
    target = torch.tensor([[8, 9, 2], [10, 2, 0]])
    out = model(
        wavs,
        torch.tensor([1.0, 0.5]),
        prompt,
        torch.ones(2),
        target,
        torch.tensor([1.0, 2 / 3]),
    )
    alone = model(
        wavs[1:, :1600],
        torch.ones(1),
        prompt[1:],
        torch.ones(1),
        target[1:, :2],
        torch.ones(1),
    )
    assert torch.allclose(out["logits"][1, :2], alone["logits"][0], atol=1e-4)


def test_gradients_reach_bridge_only(llm_folder):
    model = make_model(llm_folder, "moe_adapter").train()
    wavs = torch.randn(2, 3200)
    out = model(
        wavs,
        torch.ones(2),
        torch.tensor([[5, 6]] * 2),
        torch.ones(2),
        torch.tensor([[8, 2]] * 2),
        torch.ones(2),
    )
    (
        target_nll(out["logits"], out["targets"], out["target_mask"]) + out["aux_loss"]
    ).backward()
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("bridge.", "audio_")) for n in trainable)
    assert all(
        p.grad is not None for n, p in model.named_parameters() if p.requires_grad
    )
    assert not model.llm.training and not model.encoder.training
    assert set(model.trainable_state_dict()) >= trainable


def test_lora_adds_trainable_llm_parameters(llm_folder):
    model = make_model(llm_folder, "dense", lora_rank=2)
    names = [
        n
        for n, p in model.named_parameters()
        if p.requires_grad and n.startswith("llm.")
    ]
    assert names
    hyps = model.generate(
        torch.randn(1, 1600),
        torch.ones(1),
        torch.tensor([[5, 6]]),
        torch.ones(1),
        max_new_tokens=3,
    )
    assert len(hyps) == 1


@pytest.mark.parametrize("bridge", BRIDGES)
def test_decoding_cache_and_padding(llm_folder, bridge):
    model = make_model(llm_folder, bridge, seed=3)
    wavs = torch.randn(3, 3200)
    wav_lens = torch.tensor([1.0, 0.5, 0.75])
    prompt = torch.tensor([[5, 6, 7], [5, 6, 0], [9, 0, 0]])
    prompt_lens = torch.tensor([1.0, 2 / 3, 1 / 3])
    kwargs = dict(max_new_tokens=6)
    cached = model.generate(wavs, wav_lens, prompt, prompt_lens, **kwargs)
    audio, audio_mask = model.encode_audio(wavs, wav_lens)
    prompt_mask = relative_to_mask(prompt_lens, prompt.shape[1])
    inputs = model.build_inputs(audio, audio_mask, prompt, prompt_mask)
    uncached = [
        model._strip(row) for row in greedy_without_cache(model, inputs, 6).tolist()
    ]
    assert cached == uncached
    assert all(len(h) > 0 for h in cached)
    beam1 = model.generate(wavs, wav_lens, prompt, prompt_lens, num_beams=1, **kwargs)
    assert beam1 == cached
    beams = model.generate(wavs, wav_lens, prompt, prompt_lens, num_beams=3, **kwargs)
    assert len(beams) == 3
    for i in range(3):
        n = int(round(float(wav_lens[i]) * 3200))
        p = int(round(float(prompt_lens[i]) * 3))
        alone = model.generate(
            wavs[i : i + 1, :n],
            torch.ones(1),
            prompt[i : i + 1, :p],
            torch.ones(1),
            **kwargs,
        )
        assert alone[0] == cached[i]
        alone_beam = model.generate(
            wavs[i : i + 1, :n],
            torch.ones(1),
            prompt[i : i + 1, :p],
            torch.ones(1),
            num_beams=3,
            **kwargs,
        )
        assert alone_beam[0] == beams[i]


def test_checkpoint_roundtrip(llm_folder, tmp_path):
    model = make_model(llm_folder, "moe_adapter")
    path = tmp_path / "speech_llm.ckpt"
    model.save_trainable(path)
    saved = torch.load(path, weights_only=True)
    assert not any(k.startswith(("llm.", "encoder.")) for k in saved)
    other = make_model(llm_folder, "moe_adapter", seed=1)
    other.load_trainable(path)
    for k, v in model.trainable_state_dict().items():
        assert torch.equal(v, other.trainable_state_dict()[k])
    with pytest.raises(RuntimeError, match="bridge"):
        make_model(llm_folder, "dense").load_trainable(path)
