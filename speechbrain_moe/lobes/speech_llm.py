"""Audio encoder -> frame stacking -> bridge -> decoder-only LLM.

The speech-LLM of the MoE-Adapter paper, as a SpeechBrain lobe:

* a frozen audio encoder lobe (any :class:`speechbrain_moe.lobes.base.Backbone`,
  Whisper by default in the recipe); only its valid frames are used;
* SpeechBrain's :class:`speechbrain.lobes.downsampling.ConcatDownsampler`
  stacks ``k`` consecutive frames (``[B, T, d] -> [B, T/k, k d]``);
* a bridge (:mod:`speechbrain_moe.adapters.bridges`), picked by name with
  :func:`load_bridge` from the YAML files shipped in
  ``speechbrain_moe/hparams/bridges/`` (``dense``: the MLP projector of
  SpeechBrain's own speech-LLM recipe; ``moe_adapter``: fuse linear -> sparse
  top-k mixture with shared experts -> aggregation + LayerNorm; ``soft_moa``)
  or by the path of a user's own bridge YAML;
* a frozen causal LM (built in the recipe's YAML, with SpeechBrain's
  ``AdaptedModel`` + ``LoRA`` when some of its layers should adapt) reading
  ``[<bos>] <audio start> audio <audio end> prompt`` and predicting
  ``target <eos>``. The audio start/end markers are trainable embeddings of the
  LLM width, so the frozen vocabulary is never resized.

Batches are laid out with the prefix (audio + prompt) *left*-padded and the
target right-padded, so that every prefix ends in the same column; positions
follow the attention mask (``cumsum - 1``). Training and decoding therefore
see identical positions, and padding never changes a sample's result.

Authors
 * speechbrain-moe contributors 2026
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.lobes.downsampling import ConcatDownsampler
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.hparams_files import load_hparams
from speechbrain_moe.lobes.base import lengths_to_mask
from speechbrain_moe.recoverables import TrainableState
from speechbrain_moe.routing import collect_aux_loss


def relative_to_mask(lens, max_len):
    """Boolean padding mask from SpeechBrain relative lengths.

    Arguments
    ---------
    lens : torch.Tensor
        ``[batch]`` relative lengths in (0, 1].
    max_len : int
        Width of the mask.

    Returns
    -------
    torch.Tensor
        ``[batch, max_len]``, True for real positions.

    Example
    -------
    >>> relative_to_mask(torch.tensor([0.5, 1.0]), 4)
    tensor([[ True,  True, False, False],
            [ True,  True,  True,  True]])
    """
    return lengths_to_mask(torch.round(lens * max_len).long(), max_len)


def load_bridge(bridge, overrides=None):
    """The bridge builder of a bridge YAML file, for :class:`SpeechLLM`.

    Arguments
    ---------
    bridge : str
        ``dense``, ``moe_adapter``, ``soft_moa`` (files shipped in the
        package) or the path of a bridge YAML file (its ``bridge`` key builds
        ``bridge(input_size, output_size)``).
    overrides : dict, optional
        New values for some of its settings, e.g. ``{"top_k": 2}``.

    Returns
    -------
    functools.partial
        ``(input_size, output_size) -> torch.nn.Module``, with the name and
        settings recorded as ``bridge_name`` and ``bridge_settings``.

    Example
    -------
    >>> builder = load_bridge("moe_adapter", {"fused_size": 16, "expert_hidden": 8,
    ...                                       "aggregation_hidden": 32})
    >>> builder(20, 8)(torch.randn(1, 3, 20)).shape
    torch.Size([1, 3, 8])
    >>> builder.bridge_settings["top_k"], builder.bridge_settings["num_shared_experts"]
    (4, 1)
    """
    hparams, settings = load_hparams("bridges", bridge, overrides)
    builder = hparams["bridge"]
    builder.bridge_name = bridge
    builder.bridge_settings = settings
    return builder


class SpeechLLM(TrainableState, nn.Module):
    """Frozen encoder -> ConcatDownsampler -> bridge -> frozen causal LM.

    Checkpoints hold only what trains (bridge, audio markers, LoRA) plus the
    bridge's buffers; the encoder and LLM come from their sources again.

    Arguments
    ---------
    encoder : Backbone
        Audio encoder lobe with ``encode(wavs, wav_lens) -> (hidden, mask)``
        and ``output_size``. Frozen and run without gradient.
    llm : torch.nn.Module
        Causal LM accepting ``inputs_embeds`` (transformers), frozen here; or
        SpeechBrain's ``AdaptedModel`` around one (e.g. LoRA on some of its
        layers), which decides itself what trains.
    bridge : callable
        ``bridge(input_size, output_size)`` builds the bridge, e.g.
        ``load_bridge("moe_adapter")``.
    downsampling_factor : int
        Frames stacked by the ConcatDownsampler.
    bos_index : int, optional
        Token put first in every sequence (None: none).
    eos_index : int, optional
        End-of-sequence token (default: the LLM config's).
    pad_index : int, optional
        Padding token of decoded outputs (default: the LLM config's or eos).

    Example
    -------
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> class Frames(torch.nn.Module):  # stands in for an encoder lobe
    ...     output_size = 8
    ...     def encode(self, wavs, wav_lens=None):
    ...         frames = wavs.unfold(1, 160, 160)[..., :8]
    ...         return frames, torch.ones(frames.shape[:2], dtype=torch.bool)
    >>> llm = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=32))
    >>> bridge = load_bridge("dense", {"hidden_size": 16})
    >>> model = SpeechLLM(Frames(), llm, bridge, downsampling_factor=2, bos_index=1)
    >>> wavs = torch.randn(2, 1600)
    >>> out = model(wavs, torch.ones(2), torch.tensor([[5, 6, 7]]).repeat(2, 1),
    ...             torch.ones(2), torch.tensor([[8, 9, 2]]).repeat(2, 1), torch.ones(2))
    >>> out["logits"].shape[:2], out["aux_loss"].shape
    (torch.Size([2, 3]), torch.Size([]))
    >>> hyps = model.generate(wavs, torch.ones(2), torch.tensor([[5, 6]]).repeat(2, 1),
    ...                       torch.ones(2), max_new_tokens=3)
    >>> len(hyps), len(hyps[0]) <= 3
    (2, True)
    """

    def __init__(
        self,
        encoder,
        llm,
        bridge,
        downsampling_factor=4,
        bos_index=None,
        eos_index=None,
        pad_index=None,
    ):
        super().__init__()
        self.encoder = encoder.requires_grad_(False)
        if not isinstance(llm, AdaptedModel):
            llm.requires_grad_(False)
        self.llm = llm
        config = self.causal_lm.config
        self.llm_size = config.hidden_size
        self.eos_index = config.eos_token_id if eos_index is None else eos_index
        if isinstance(self.eos_index, (list, tuple)):
            self.eos_index = self.eos_index[0]
        if pad_index is None:
            pad_index = config.pad_token_id
        self.pad_index = self.eos_index if pad_index is None else pad_index
        self.bos_index = bos_index
        self.downsampling_factor = downsampling_factor
        self.downsampler = ConcatDownsampler(downsampling_factor)
        self.bridge = bridge(encoder.output_size * downsampling_factor, self.llm_size)
        self.bridge_name = getattr(bridge, "bridge_name", type(self.bridge).__name__)
        self.bridge_settings = getattr(bridge, "bridge_settings", None)
        std = float(self.embed_tokens.weight.detach().float().std())
        self.audio_start = nn.Parameter(torch.randn(self.llm_size) * std)
        self.audio_end = nn.Parameter(torch.randn(self.llm_size) * std)

    def describe(self):
        """The bridge and its settings (what a checkpoint must match).

        Returns
        -------
        dict
        """
        return {
            "model": "SpeechLLM",
            "bridge": self.bridge_name,
            "bridge_settings": self.bridge_settings,
        }

    @property
    def causal_lm(self):
        """The transformers model (inside LoRA's ``AdaptedModel`` if any)."""
        return getattr(self.llm, "adapted_model", self.llm)

    @property
    def embed_tokens(self):
        """The LLM's (frozen) input embedding table."""
        return self.causal_lm.get_input_embeddings()

    def train(self, mode=True):
        """Sets training mode; the frozen encoder and LLM stay in eval mode.

        Arguments
        ---------
        mode : bool
            Training mode of the trainable parts.

        Returns
        -------
        SpeechLLM
        """
        super().train(mode)
        self.encoder.eval()
        self.llm.eval()
        return self

    def encode_audio(self, wavs, wav_lens=None):
        """Audio -> LLM-width embeddings of the valid stacked frames.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        embeddings : torch.Tensor
            ``[batch, frames / k, llm_size]``.
        mask : torch.Tensor
            ``[batch, frames / k]``, True for frames made of real audio.
        """
        with torch.no_grad():
            hidden, mask = self.encoder.encode(wavs, wav_lens)
        if mask is None:
            mask = torch.ones(hidden.shape[:2], dtype=torch.bool, device=hidden.device)
        hidden = hidden.detach() * mask.unsqueeze(-1).to(hidden.dtype)
        stacked = self.downsampler(hidden)
        lengths = (mask.sum(1) // self.downsampling_factor).clamp(min=1)
        stacked_mask = lengths_to_mask(lengths, stacked.shape[1])
        embeddings = self.bridge(stacked, stacked_mask)
        return embeddings, stacked_mask

    def build_inputs(
        self,
        audio,
        audio_mask,
        prompt_ids,
        prompt_mask,
        target_ids=None,
        target_mask=None,
    ):
        """Lays out ``[<bos>] <as> audio <ae> prompt | target`` for the LLM.

        Arguments
        ---------
        audio : torch.Tensor
            ``[batch, frames, llm_size]`` bridge outputs.
        audio_mask : torch.Tensor
            ``[batch, frames]`` bool.
        prompt_ids : torch.Tensor
            ``[batch, prompt_len]`` token ids.
        prompt_mask : torch.Tensor
            ``[batch, prompt_len]`` bool.
        target_ids : torch.Tensor, optional
            ``[batch, target_len]`` token ids ending with ``<eos>``.
        target_mask : torch.Tensor, optional
            ``[batch, target_len]`` bool.

        Returns
        -------
        dict
            ``inputs_embeds`` ``[B, S, D]``, ``attention_mask`` ``[B, S]``,
            ``position_ids`` ``[B, S]``, ``labels`` ``[B, S]`` (token id at
            every text position, -100 at audio and padding), ``loss_mask``
            ``[B, S]`` (True only where the *next* token is a target to be
            predicted), ``prefix_length`` (int).
        """
        batch = audio.shape[0]
        device = audio.device
        embed = self.embed_tokens
        dtype = embed.weight.dtype
        prompt_emb = embed(prompt_ids)
        rows, row_labels = [], []
        for i in range(batch):
            pieces, labels = [], []
            if self.bos_index is not None:
                bos = torch.tensor([self.bos_index], device=device)
                pieces.append(embed(bos))
                labels.append(bos)
            n_audio = int(audio_mask[i].sum())
            pieces += [
                self.audio_start.to(dtype).unsqueeze(0),
                audio[i, :n_audio].to(dtype),
                self.audio_end.to(dtype).unsqueeze(0),
                prompt_emb[i, prompt_mask[i]],
            ]
            labels += [
                torch.full((n_audio + 2,), -100, device=device, dtype=torch.long),
                prompt_ids[i, prompt_mask[i]],
            ]
            rows.append(torch.cat(pieces))
            row_labels.append(torch.cat(labels))
        prefix = max(r.shape[0] for r in rows)
        embeds = audio.new_zeros(batch, prefix, self.llm_size, dtype=dtype)
        mask = torch.zeros(batch, prefix, dtype=torch.bool, device=device)
        labels = torch.full((batch, prefix), -100, dtype=torch.long, device=device)
        for i, (row, lab) in enumerate(zip(rows, row_labels)):
            embeds[i, prefix - row.shape[0] :] = row
            mask[i, prefix - row.shape[0] :] = True
            labels[i, prefix - row.shape[0] :] = lab
        loss_mask = torch.zeros_like(mask)
        if target_ids is not None:
            if target_mask is None:
                target_mask = torch.ones_like(target_ids, dtype=torch.bool)
            target_labels = target_ids.masked_fill(~target_mask, -100)
            embeds = torch.cat([embeds, embed(target_ids * target_mask)], dim=1)
            mask = torch.cat([mask, target_mask], dim=1)
            labels = torch.cat([labels, target_labels], dim=1)
            # position t predicts token t + 1: the last prefix position
            # predicts the first target token.
            zeros = torch.zeros(batch, prefix - 1, dtype=torch.bool, device=device)
            loss_mask = torch.cat([zeros, target_mask, zeros[:, :1]], dim=1)
        position_ids = (mask.long().cumsum(-1) - 1).clamp(min=0)
        return {
            "inputs_embeds": embeds,
            "attention_mask": mask,
            "position_ids": position_ids,
            "labels": labels,
            "loss_mask": loss_mask,
            "prefix_length": prefix,
        }

    def forward(self, wavs, wav_lens, prompt_ids, prompt_lens, target_ids, target_lens):
        """Teacher-forced pass; returns what :func:`target_nll` needs.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor
            Relative lengths of ``wavs``.
        prompt_ids : torch.Tensor
            ``[batch, prompt_len]`` prompt token ids.
        prompt_lens : torch.Tensor
            Relative lengths of the prompts.
        target_ids : torch.Tensor
            ``[batch, target_len]`` target ids ending with ``<eos>``.
        target_lens : torch.Tensor
            Relative lengths of the targets.

        Returns
        -------
        dict
            ``logits`` ``[B, target_len, vocab]`` (logit ``j`` predicts target
            token ``j``), ``targets``, ``target_mask`` and ``aux_loss`` (scalar,
            the bridge's balance + z losses; zero for ``dense``).
        """
        audio, audio_mask = self.encode_audio(wavs, wav_lens)
        prompt_mask = relative_to_mask(prompt_lens, prompt_ids.shape[1])
        target_mask = relative_to_mask(target_lens, target_ids.shape[1])
        inputs = self.build_inputs(
            audio, audio_mask, prompt_ids, prompt_mask, target_ids, target_mask
        )
        length = target_ids.shape[1]
        out = self.llm(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"].long(),
            position_ids=inputs["position_ids"],
            use_cache=False,
            logits_to_keep=length + 1,
        )
        aux = collect_aux_loss(self.bridge)
        return {
            "logits": out.logits[:, :length],
            "targets": target_ids,
            "target_mask": target_mask,
            "aux_loss": aux.to(out.logits.dtype).reshape(()),
        }

    @torch.no_grad()
    def generate(
        self,
        wavs,
        wav_lens,
        prompt_ids,
        prompt_lens,
        max_new_tokens=32,
        num_beams=1,
    ):
        """Decodes the answer to the prompt, greedy or beam search.

        This is transformers ``generate`` on ``inputs_embeds`` (KV cache,
        positions from the attention mask).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor
            Relative lengths of ``wavs``.
        prompt_ids : torch.Tensor
            ``[batch, prompt_len]`` prompt token ids.
        prompt_lens : torch.Tensor
            Relative lengths of the prompts.
        max_new_tokens : int
            Most generated tokens.
        num_beams : int
            Beam size (1: greedy).

        Returns
        -------
        list of list of int
            Token ids of each answer, without ``<eos>`` and padding.
        """
        audio, audio_mask = self.encode_audio(wavs, wav_lens)
        prompt_mask = relative_to_mask(prompt_lens, prompt_ids.shape[1])
        inputs = self.build_inputs(audio, audio_mask, prompt_ids, prompt_mask)
        collect_aux_loss(self.bridge)
        tokens = self.causal_lm.generate(
            inputs_embeds=inputs["inputs_embeds"],
            attention_mask=inputs["attention_mask"].long(),
            max_new_tokens=max_new_tokens,
            num_beams=num_beams,
            do_sample=False,
            eos_token_id=self.eos_index,
            pad_token_id=self.pad_index,
            bos_token_id=self.bos_index,
            use_cache=True,
        )
        return [self._strip(row) for row in tokens.tolist()]

    def _strip(self, row):
        """Cuts a generated row at the first ``<eos>``."""
        if self.eos_index in row:
            row = row[: row.index(self.eos_index)]
        return row


def target_nll(logits, targets, target_mask):
    """Mean cross-entropy over the real target tokens of the batch.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, len, vocab]``; ``logits[:, j]`` predicts ``targets[:, j]``.
    targets : torch.Tensor
        ``[batch, len]`` token ids.
    target_mask : torch.Tensor
        ``[batch, len]`` bool, True for tokens that count.

    Returns
    -------
    torch.Tensor
        Scalar.

    Example
    -------
    >>> logits = torch.zeros(1, 2, 4)
    >>> round(float(target_nll(logits, torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool))), 4)
    1.3863
    """
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    weights = target_mask.to(nll.dtype)
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)
