"""Audio encoder -> frame stacking -> bridge -> decoder-only LLM.

The speech-LLM of the MoE-Adapter paper, as a SpeechBrain lobe:

* a frozen audio encoder lobe (any :class:`speechbrain_moe.lobes.base.Backbone`,
  Whisper by default in the recipe); only its valid frames are used;
* SpeechBrain's :class:`speechbrain.lobes.downsampling.ConcatDownsampler`
  stacks ``k`` consecutive frames (``[B, T, d] -> [B, T/k, k d]``);
* a bridge chosen by name (:data:`BRIDGES`): ``dense`` (the MLP projector of
  SpeechBrain's own speech-LLM recipe), ``moe_adapter`` (fuse linear -> sparse
  top-k :class:`~speechbrain_moe.adapters.SparseMoE` -> aggregation/output
  projection + LayerNorm) or ``soft_moa``;
* a frozen causal LM (transformers ``AutoModelForCausalLM``, optionally with
  SpeechBrain LoRA on its linears) reading
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
from speechbrain.utils import checkpoints

from speechbrain_moe.adapters.bridges import (
    DenseProjector,
    MoEAdapterBridge,
    SoftMoABridge,
)
from speechbrain_moe.lobes.base import lengths_to_mask
from speechbrain_moe.routing import collect_aux_loss

BRIDGES = ("dense", "moe_adapter", "soft_moa")


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


def build_bridge(bridge, input_size, output_size, **options):
    """Builds the bridge named ``bridge``.

    Arguments
    ---------
    bridge : str
        One of :data:`BRIDGES`.
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    **options
        Keyword arguments of the bridge class; options of other bridges are
        ignored, so one YAML dict can hold the settings of all of them,
        prefixed ``dense_``, ``moe_`` or ``soft_`` (e.g. ``moe_top_k``).

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> b = build_bridge("dense", 20, 8, dense_hidden_size=4, moe_top_k=2)
    >>> b.net[0].out_features
    4
    """
    classes = {
        "dense": (DenseProjector, "dense_"),
        "moe_adapter": (MoEAdapterBridge, "moe_"),
        "soft_moa": (SoftMoABridge, "soft_"),
    }
    if bridge not in classes:
        raise ValueError(
            f"Unknown bridge {bridge!r}; choose one of {BRIDGES} (YAML key `bridge`)."
        )
    cls, prefix = classes[bridge]
    known = {p for p in ("dense_", "moe_", "soft_")}
    kwargs = {}
    for key, value in options.items():
        if key.startswith(prefix):
            kwargs[key[len(prefix) :]] = value
        elif not any(key.startswith(p) for p in known):
            kwargs[key] = value
    return cls(input_size, output_size, **kwargs)


def load_causal_lm(source, save_path=None, dtype=None, attn_implementation="sdpa"):
    """Loads a causal LM from a hub id or a local folder.

    Arguments
    ---------
    source : str
        Hub id or local folder (``save_pretrained`` layout).
    save_path : str, optional
        Cache folder for hub downloads.
    dtype : torch.dtype, optional
        Weight dtype (default: as stored).
    attn_implementation : str
        transformers attention implementation.

    Returns
    -------
    transformers.PreTrainedModel

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.synthetic.llm import make_tiny_llm
    >>> lm = load_causal_lm(make_tiny_llm(tempfile.mkdtemp()))
    >>> type(lm).__name__
    'LlamaForCausalLM'
    """
    from transformers import AutoModelForCausalLM

    kwargs = {"attn_implementation": attn_implementation}
    if dtype is not None:
        kwargs["dtype"] = dtype
    if save_path is not None:
        kwargs["cache_dir"] = save_path
    return AutoModelForCausalLM.from_pretrained(source, **kwargs)


def load_tokenizer(source, save_path=None):
    """Loads the tokenizer of ``source`` (hub id or local folder).

    Arguments
    ---------
    source : str
        Hub id or local folder.
    save_path : str, optional
        Cache folder for hub downloads.

    Returns
    -------
    transformers.PreTrainedTokenizerBase
        With a pad token (the eos token when the tokenizer has none).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.synthetic.llm import make_tiny_llm
    >>> load_tokenizer(make_tiny_llm(tempfile.mkdtemp())).pad_token
    '<pad>'
    """
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source, cache_dir=save_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


@checkpoints.register_checkpoint_hooks
class SpeechLLM(nn.Module):
    """Frozen encoder -> ConcatDownsampler -> bridge -> frozen causal LM.

    Checkpoints hold only what trains (bridge, audio markers, LoRA) plus the
    bridge's buffers; the encoder and LLM come from their sources again.

    Arguments
    ---------
    encoder : Backbone
        Audio encoder lobe with ``encode(wavs, wav_lens) -> (hidden, mask)``
        and ``output_size``. Frozen and run without gradient.
    llm : transformers.PreTrainedModel
        Causal LM accepting ``inputs_embeds``. Frozen.
    bridge : str
        One of :data:`BRIDGES`.
    downsampling_factor : int
        Frames stacked by the ConcatDownsampler.
    bridge_options : dict, optional
        Options of :func:`build_bridge`.
    bos_index : int, optional
        Token put first in every sequence (None: none).
    eos_index : int, optional
        End-of-sequence token (default: the LLM config's).
    pad_index : int, optional
        Padding token of decoded outputs (default: the LLM config's or eos).
    lora_rank : int
        Rank of SpeechBrain LoRA on every linear of the LLM (0: no LoRA).
    lora_alpha : float
        LoRA scaling.

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.synthetic.llm import make_tiny_llm
    >>> llm = load_causal_lm(make_tiny_llm(tempfile.mkdtemp()))
    >>> model = SpeechLLM(FrameEncoder(output_size=16), llm, "moe_adapter",
    ...     downsampling_factor=2, bridge_options=dict(moe_fused_size=32,
    ...     moe_num_experts=4, moe_top_k=2, moe_expert_hidden=16), bos_index=1)
    >>> wavs = torch.randn(2, 1600)
    >>> out = model(wavs, torch.tensor([1.0, 0.5]), torch.tensor([[5, 6, 7]]).repeat(2, 1),
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
        bridge="moe_adapter",
        downsampling_factor=4,
        bridge_options=None,
        bos_index=None,
        eos_index=None,
        pad_index=None,
        lora_rank=0,
        lora_alpha=1.0,
    ):
        super().__init__()
        self.encoder = encoder
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        for p in llm.parameters():
            p.requires_grad_(False)
        if lora_rank:
            from speechbrain.nnet.adapters import AdaptedModel, LoRA

            llm = AdaptedModel(
                llm,
                adapter_class=LoRA,
                all_linear=True,
                adapter_kwargs={"rank": lora_rank, "alpha": lora_alpha},
            )
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
        self.bridge_name = bridge
        self.bridge = build_bridge(
            bridge,
            encoder.output_size * downsampling_factor,
            self.llm_size,
            **(bridge_options or {}),
        )
        std = float(self.embed_tokens.weight.detach().float().std())
        self.audio_start = nn.Parameter(torch.randn(self.llm_size) * std)
        self.audio_end = nn.Parameter(torch.randn(self.llm_size) * std)

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

    def trainable_state_dict(self):
        """Trainable parameters plus the bridge's persistent buffers.

        Returns
        -------
        dict
        """
        state = self.state_dict(keep_vars=True)
        keep = {name for name, p in self.named_parameters() if p.requires_grad}
        keep |= {name for name in state if name.startswith("bridge.")}
        return {name: state[name].detach().clone() for name in state if name in keep}

    @checkpoints.mark_as_saver
    def _save(self, path):
        """Saves the trainable part only."""
        torch.save(self.trainable_state_dict(), path)

    @checkpoints.mark_as_loader
    def _load(self, path, end_of_epoch=False):
        """Loads a checkpoint written by :meth:`_save`, checking its keys."""
        del end_of_epoch
        saved = torch.load(path, map_location="cpu", weights_only=True)
        expected = set(self.trainable_state_dict())
        if set(saved) != expected:
            raise RuntimeError(
                f"Checkpoint {path} does not fit this SpeechLLM (bridge="
                f"{self.bridge_name!r}): missing {sorted(expected - set(saved))[:5]}, "
                f"unexpected {sorted(set(saved) - expected)[:5]}. Use the bridge, "
                "bridge options and lora_rank it was trained with."
            )
        self.load_state_dict(saved, strict=False)

    @checkpoints.mark_as_transfer
    def _transfer(self, path):
        """Loads the trainable part for a pretrainer."""
        self._load(path)


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
