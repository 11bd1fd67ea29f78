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

from speechbrain_moe.adapters import SoftMoA, SparseMoE
from speechbrain_moe.lobes.base import Backbone, lengths_to_mask
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


class DenseProjector(nn.Module):
    """The dense baseline bridge: ``Linear -> activation -> Linear``.

    This is the projector of SpeechBrain's speech-LLM recipe (a two-block
    ``VanillaNN`` of the LLM width over stacked frames) with a free hidden
    size, so that it can be matched in size to the MoE-Adapter.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    hidden_size : int, optional
        Hidden width (default ``output_size``).
    activation : type
        Activation class.

    Example
    -------
    >>> proj = DenseProjector(20, 8, hidden_size=16)
    >>> proj(torch.randn(2, 3, 20)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(self, input_size, output_size, hidden_size=None, activation=nn.ReLU):
        super().__init__()
        hidden_size = output_size if hidden_size is None else hidden_size
        self.net = nn.Sequential(
            nn.Linear(input_size, hidden_size),
            activation(),
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, x, mask=None):
        """Projects every frame.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]``.
        mask : torch.Tensor, optional
            Unused (frame-wise module).

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        del mask
        return self.net(x)


class MoEAdapterBridge(nn.Module):
    """The paper's MoE-Adapter bridge.

    ``fuse`` (Linear to ``fused_size``) -> :class:`SparseMoE` (LayerNorm input,
    ``num_experts`` SiLU experts ``fused -> expert_hidden -> output_size``,
    ``top_k`` per token, optional shared experts, balance and z losses in
    ``aux_loss``) -> aggregation (``Linear -> SiLU -> Linear`` of width
    ``aggregation_hidden``, or one Linear when it is None) -> LayerNorm.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    fused_size : int
        Width after the fuse layer.
    num_experts : int
        Routed experts.
    top_k : int
        Experts per token.
    expert_hidden : int
        Hidden size of each expert.
    num_shared_experts : int
        Always-on experts.
    aggregation_hidden : int, optional
        Hidden size of the aggregation MLP (None: a single Linear).
    balance_loss_weight : float
        Weight of the Switch balance loss.
    z_loss_weight : float
        Weight of the router z-loss.
    routing : str
        Routing of :class:`SparseMoE`.
    bias_balancing : bool
        Auxiliary-loss-free bias balancing.

    Example
    -------
    >>> bridge = MoEAdapterBridge(20, 8, fused_size=12, num_experts=4, top_k=2,
    ...                           expert_hidden=6, aggregation_hidden=16)
    >>> y = bridge(torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool))
    >>> y.shape, bridge.moe.aux_loss.shape
    (torch.Size([2, 3, 8]), torch.Size([]))
    """

    def __init__(
        self,
        input_size,
        output_size,
        fused_size=2560,
        num_experts=8,
        top_k=4,
        expert_hidden=1280,
        num_shared_experts=0,
        aggregation_hidden=None,
        balance_loss_weight=0.01,
        z_loss_weight=0.001,
        routing="topk_softmax",
        bias_balancing=False,
    ):
        super().__init__()
        self.fuse = nn.Linear(input_size, fused_size)
        self.moe = SparseMoE(
            fused_size,
            num_experts=num_experts,
            top_k=top_k,
            hidden_size=expert_hidden,
            output_size=output_size,
            num_shared_experts=num_shared_experts,
            routing=routing,
            balance_loss_weight=balance_loss_weight,
            z_loss_weight=z_loss_weight,
            bias_balancing=bias_balancing,
            zero_init_output=False,
        )
        if aggregation_hidden:
            self.aggregate = nn.Sequential(
                nn.Linear(output_size, aggregation_hidden),
                nn.SiLU(),
                nn.Linear(aggregation_hidden, output_size),
            )
        else:
            self.aggregate = nn.Linear(output_size, output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x, mask=None):
        """Routes the stacked frames and projects them to the LLM width.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]``.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real frames (padding is not routed).

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        return self.norm(self.aggregate(self.moe(self.fuse(x), mask)))


class SoftMoABridge(nn.Module):
    """Soft-MoA bridge: fuse Linear -> residual Soft-MoA -> Linear -> LayerNorm.

    Arguments
    ---------
    input_size : int
        Size of the stacked encoder frames.
    output_size : int
        LLM embedding width.
    fused_size : int, optional
        Width of the mixture (default ``output_size``).
    num_experts : int
        Number of experts.
    bottleneck : int
        Hidden size of each expert.
    slots_per_expert : int
        Slots per expert.

    Example
    -------
    >>> bridge = SoftMoABridge(20, 8, num_experts=3, bottleneck=4)
    >>> bridge(torch.randn(2, 3, 20), torch.ones(2, 3, dtype=torch.bool)).shape
    torch.Size([2, 3, 8])
    """

    def __init__(
        self,
        input_size,
        output_size,
        fused_size=None,
        num_experts=8,
        bottleneck=64,
        slots_per_expert=1,
    ):
        super().__init__()
        fused_size = output_size if fused_size is None else fused_size
        self.fuse = nn.Linear(input_size, fused_size)
        self.moa = SoftMoA(
            fused_size,
            num_experts=num_experts,
            bottleneck=bottleneck,
            slots_per_expert=slots_per_expert,
            output_size=fused_size,
        )
        self.out_proj = nn.Linear(fused_size, output_size)
        self.norm = nn.LayerNorm(output_size)

    def forward(self, x, mask=None):
        """Mixes the stacked frames through the soft slots.

        Arguments
        ---------
        x : torch.Tensor
            ``[batch, time, input_size]``.
        mask : torch.Tensor, optional
            ``[batch, time]``, True for real frames.

        Returns
        -------
        torch.Tensor
            ``[batch, time, output_size]``.
        """
        fused = self.fuse(x)
        return self.norm(self.out_proj(fused + self.moa(fused, mask)))


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
        use_cache=True,
    ):
        """Decodes the answer to the prompt, greedy or beam search.

        With ``use_cache=True`` this is transformers ``generate`` on
        ``inputs_embeds`` (KV cache, positions from the attention mask);
        ``use_cache=False`` (greedy only) recomputes the whole sequence at
        every step, as a reference.

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
        use_cache : bool
            Use the KV cache.

        Returns
        -------
        list of list of int
            Token ids of each answer, without ``<eos>`` and padding.
        """
        audio, audio_mask = self.encode_audio(wavs, wav_lens)
        prompt_mask = relative_to_mask(prompt_lens, prompt_ids.shape[1])
        inputs = self.build_inputs(audio, audio_mask, prompt_ids, prompt_mask)
        collect_aux_loss(self.bridge)
        if use_cache:
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
        else:
            if num_beams != 1:
                raise ValueError(
                    "use_cache=False is a greedy reference; set num_beams=1."
                )
            tokens = self._greedy_without_cache(inputs, max_new_tokens)
        return [self._strip(row) for row in tokens.tolist()]

    def _greedy_without_cache(self, inputs, max_new_tokens):
        """Greedy decoding recomputing the full sequence at each step."""
        embeds, mask = inputs["inputs_embeds"], inputs["attention_mask"]
        batch = embeds.shape[0]
        done = torch.zeros(batch, dtype=torch.bool, device=embeds.device)
        out = []
        for _ in range(max_new_tokens):
            positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
            logits = self.llm(
                inputs_embeds=embeds,
                attention_mask=mask.long(),
                position_ids=positions,
                use_cache=False,
                logits_to_keep=1,
            ).logits[:, -1]
            token = logits.argmax(-1).masked_fill(done, self.pad_index)
            out.append(token)
            done = done | (token == self.eos_index)
            if bool(done.all()):
                break
            embeds = torch.cat([embeds, self.embed_tokens(token).unsqueeze(1)], dim=1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
        return torch.stack(out, dim=1)

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


def sequence_nll(logits, labels, loss_mask):
    """Next-token loss over a full layout from :meth:`SpeechLLM.build_inputs`.

    Position ``t`` predicts ``labels[t + 1]`` and counts only where
    ``loss_mask[t]`` is True, so the labels of audio and prompt positions
    never matter.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, seq, vocab]``.
    labels : torch.Tensor
        ``[batch, seq]``.
    loss_mask : torch.Tensor
        ``[batch, seq]`` bool.

    Returns
    -------
    torch.Tensor
        Scalar.

    Example
    -------
    >>> logits = torch.zeros(1, 3, 4)
    >>> mask = torch.tensor([[False, True, False]])
    >>> round(float(sequence_nll(logits, torch.tensor([[0, 1, 2]]), mask)), 4)
    1.3863
    """
    next_labels = labels[:, 1:].clamp(min=0)
    return target_nll(logits[:, :-1], next_labels, loss_mask[:, :-1])


class FrameEncoder(Backbone):
    """A tiny frozen-style encoder: log-mel fbank -> Linear -> GELU, frame-wise.

    Frame-wise (no context across frames), so padding never changes a valid
    frame. Useful for tests and CPU demos of the bridge; real recipes use a
    pretrained lobe (Whisper, AST, ...).

    Arguments
    ---------
    output_size : int
        Width of the frames.
    n_mels : int
        Mel bins.
    sample_rate : int
        Sampling rate of the input.
    hop_length : float
        Frame shift in ms.

    Example
    -------
    >>> enc = FrameEncoder(output_size=8)
    >>> h, m = enc.encode(torch.randn(2, 1600), torch.tensor([1.0, 0.5]))
    >>> h.shape, m.sum(1).tolist()
    (torch.Size([2, 11, 8]), [9, 4])
    """

    def __init__(self, output_size=32, n_mels=40, sample_rate=16000, hop_length=10.0):
        super().__init__()
        from speechbrain.lobes.features import Fbank

        self.fbank = Fbank(
            n_mels=n_mels, sample_rate=sample_rate, hop_length=hop_length
        )
        self.hop = int(sample_rate * hop_length / 1000)
        self.win = int(sample_rate * 25 / 1000)
        self.proj = nn.Linear(n_mels, output_size)
        self.act = nn.GELU()
        self.output_size = output_size

    def encode(self, wavs, wav_lens=None):
        """Frame-wise features and the mask of frames inside the real audio.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, output_size]``.
        mask : torch.Tensor
            ``[batch, frames]`` bool.
        """
        feats = self.fbank(wavs)
        frames = feats.shape[1]
        if wav_lens is None:
            wav_lens = torch.ones(wavs.shape[0], device=wavs.device)
        samples = torch.round(wav_lens * wavs.shape[1])
        # frames whose whole analysis window lies inside the real audio
        inside = torch.floor((samples - self.win // 2) / self.hop) + 1
        lengths = inside.long().clamp(min=1, max=frames)
        return self.act(self.proj(feats / 10.0)), lengths_to_mask(lengths, frames)


ENCODERS = {
    "whisper": "speechbrain_moe.lobes.whisper.Whisper",
    "ast": "speechbrain_moe.lobes.ast.AST",
    "wavlm": "speechbrain_moe.lobes.wavlm.SSLEncoder",
    "frame": "speechbrain_moe.lobes.speech_llm.FrameEncoder",
}


def build_encoder(encoder_type, source=None, save_path=None, **options):
    """Builds the audio encoder lobe named ``encoder_type``.

    Arguments
    ---------
    encoder_type : str
        ``whisper``, ``ast``, ``wavlm``, ``frame`` (:class:`FrameEncoder`, no pretrained
        weights) or the dotted path of any :class:`Backbone` class taking
        ``source`` and ``save_path``.
    source : str, optional
        Hub id or local folder of the pretrained encoder.
    save_path : str, optional
        Cache folder.
    **options
        Further constructor arguments.

    Returns
    -------
    Backbone

    Example
    -------
    >>> build_encoder("frame", output_size=8).output_size
    8
    """
    import importlib

    path = ENCODERS.get(encoder_type, encoder_type)
    if "." not in path:
        raise ValueError(
            f"Unknown encoder_type {encoder_type!r}; choose one of {sorted(ENCODERS)} "
            "or give the dotted path of a Backbone class."
        )
    module_name, cls_name = path.rsplit(".", 1)
    cls = getattr(importlib.import_module(module_name), cls_name)
    if path == ENCODERS["frame"]:
        return cls(**options)
    return cls(source=source, save_path=save_path, **options)


def _count(module):
    """Number of parameters of ``module``."""
    return sum(p.numel() for p in module.parameters())


def bridge_parameter_report(
    encoder_size=1280,
    downsampling_factor=4,
    llm_size=2048,
    fused_size=2560,
    num_experts=8,
    top_k=4,
    expert_hidden=1280,
    aggregation_hidden=10240,
    num_shared_experts=0,
    verbose=True,
):
    """Total and active parameters of the MoE-Adapter bridge vs a dense projector.

    Modules are built on the ``meta`` device (no memory, no time). The dense
    projector (``Linear -> ReLU -> Linear``, as in SpeechBrain's speech-LLM
    recipe) gets the hidden width that makes its total size equal to the
    MoE-Adapter's; all its parameters are active for every token.

    For the paper shape (1280 x 4 = 5120 -> fuse 2560 -> 8 experts
    2560 -> 1280 -> 2048, top-4 -> aggregation 2048 -> 10240 -> 2048 ->
    LayerNorm) this counts 102.3M total / 78.7M active, against the paper's
    94.4M / 70.8M. The *difference* total - active is the same in both
    (23.6M = 4 idle experts x 5.90M, which pins each expert to
    2560 x 1280 + 1280 x 2048 weights); the 7.9M offset, equal in total and
    active, is exactly the size of our 5120 -> 2560 fuse layer (13.1M) minus
    a 2560 x 2048 matrix (5.24M): the paper's figures are reproduced to 0.1 %
    by the experts (47.2M) + aggregation MLP (41.9M) + one 2560 x 2048 linear,
    i.e. its count does not include a 5120 -> 2560 fuse layer at the stated
    size (or it fuses to a smaller width). Biases and LayerNorms add <0.1M.

    Arguments
    ---------
    encoder_size : int
        Encoder width.
    downsampling_factor : int
        Frames stacked.
    llm_size : int
        LLM embedding width.
    fused_size : int
        Width after the fuse layer.
    num_experts : int
        Routed experts.
    top_k : int
        Experts per token.
    expert_hidden : int
        Hidden size of each expert.
    aggregation_hidden : int
        Hidden size of the aggregation MLP.
    num_shared_experts : int
        Shared experts.
    verbose : bool
        Print the table.

    Returns
    -------
    dict
        ``moe_total``, ``moe_active``, ``dense_total``, ``dense_active``,
        ``dense_hidden`` and a per-component breakdown ``components``.

    Example
    -------
    >>> r = bridge_parameter_report(verbose=False)
    >>> round(r["moe_total"] / 1e6, 1), round(r["moe_active"] / 1e6, 1)
    (102.3, 78.7)
    >>> abs(r["dense_total"] - r["moe_total"]) / r["moe_total"] < 1e-3
    True
    """
    input_size = encoder_size * downsampling_factor
    with torch.device("meta"):
        bridge = MoEAdapterBridge(
            input_size,
            llm_size,
            fused_size=fused_size,
            num_experts=num_experts,
            top_k=top_k,
            expert_hidden=expert_hidden,
            num_shared_experts=num_shared_experts,
            aggregation_hidden=aggregation_hidden,
        )
        total = _count(bridge)
        per_expert = _count(bridge.moe.experts) // num_experts
        active = total - (num_experts - top_k) * per_expert
        hidden = max(1, round((total - llm_size) / (input_size + 1 + llm_size + 1)))
        dense = DenseProjector(input_size, llm_size, hidden_size=hidden)
        dense_total = _count(dense)
    components = {
        "fuse": _count(bridge.fuse),
        "router+norm": _count(bridge.moe.router) + _count(bridge.moe.norm),
        "routed_experts": _count(bridge.moe.experts),
        "shared_experts": _count(bridge.moe.shared)
        if bridge.moe.shared is not None
        else 0,
        "aggregation": _count(bridge.aggregate),
        "out_norm": _count(bridge.norm),
    }
    report = {
        "moe_total": total,
        "moe_active": active,
        "dense_total": dense_total,
        "dense_active": dense_total,
        "dense_hidden": hidden,
        "per_expert": per_expert,
        "components": components,
    }
    if verbose:
        print(format_parameter_report(report))
    return report


def format_parameter_report(report):
    """Renders :func:`bridge_parameter_report` as a small table.

    Arguments
    ---------
    report : dict
        Output of :func:`bridge_parameter_report`.

    Returns
    -------
    str

    Example
    -------
    >>> text = format_parameter_report(bridge_parameter_report(verbose=False))
    >>> text.splitlines()[1].split()
    ['moe_adapter', '102.31M', '78.70M']
    """

    def m(n):
        """Millions, right-aligned."""
        return f"{n / 1e6:8.2f}M"

    lines = [
        f"{'bridge':<28}{'total':>10}{'active':>10}",
        f"{'moe_adapter':<28}{m(report['moe_total']):>10}{m(report['moe_active']):>10}",
        f"{'dense (hidden ' + str(report['dense_hidden']) + ')':<28}"
        f"{m(report['dense_total']):>10}{m(report['dense_active']):>10}",
        f"{'paper moe_adapter':<28}{'94.4M':>10}{'70.8M':>10}",
        "components: "
        + ", ".join(f"{k} {v / 1e6:.2f}M" for k, v in report["components"].items()),
        f"per expert: {report['per_expert'] / 1e6:.2f}M",
    ]
    return "\n".join(lines)


def _main():  # pragma: no cover - command-line entry
    """Prints the parameter report of the paper-shaped bridge."""
    bridge_parameter_report()


if __name__ == "__main__":  # pragma: no cover
    _main()
