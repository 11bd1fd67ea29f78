"""The speech-LLM of the MoE-Adapter paper as a SpeechBrain lobe: frozen audio
encoder -> frame stacking -> bridge -> frozen decoder-only LLM (``LoRA`` on
some of its layers if wanted); ``docs/design.md``, "Speech-LLM".
"""

import torch
import torch.nn as nn
import torch.nn.functional as F
from speechbrain.lobes.downsampling import ConcatDownsampler
from speechbrain.nnet.adapters import AdaptedModel

from speechbrain_moe.adapters.lora_experts import llm_lora_adapter
from speechbrain_moe.hparams_files import load_hparams
from speechbrain_moe.lobes.base import lengths_to_mask, quiet_loading, unwrap
from speechbrain_moe.lobes.dtypes import load_dtype, log_loaded
from speechbrain_moe.petl.wrap import check_target_patterns
from speechbrain_moe.recoverables import TrainableState
from speechbrain_moe.routing import routing_context, token_mask


def relative_to_mask(lens, max_len):
    """Boolean ``[batch, max_len]`` mask (True: real) from relative lengths.

    Arguments
    ---------
    lens : torch.Tensor
        ``[batch]`` relative lengths in [0, 1] (SpeechBrain's ``wav_lens``).
    max_len : int
        Width of the mask (the padded length).

    Returns
    -------
    torch.Tensor
        ``[batch, max_len]`` boolean, True on the first
        ``round(lens * max_len)`` positions of each row.

    Example
    -------
    >>> relative_to_mask(torch.tensor([0.5, 1.0]), 4).sum(1).tolist()
    [2, 4]
    """
    return lengths_to_mask(torch.round(lens * max_len).long(), max_len)


class BridgeBuilder:
    """Builds the bridge of a bridge YAML file, and says which one it is.

    :class:`SpeechLLM` calls it with the widths it knows only once the
    encoder and the LLM are loaded, and records ``bridge_name`` and
    ``bridge_settings`` in its checkpoint description.

    Arguments
    ---------
    build : callable
        ``build(input_size, output_size) -> Module`` (the YAML's ``bridge``
        key: a ``!name:`` partial).
    bridge_name : str
        The bridge's name or YAML path, as given to :func:`load_bridge`.
    bridge_settings : dict
        Every setting of the bridge file (defaults included).

    Example
    -------
    >>> builder = BridgeBuilder(torch.nn.Linear, "linear", {})
    >>> builder(4, 2), builder.bridge_name
    (Linear(in_features=4, out_features=2, bias=True), 'linear')
    """

    def __init__(self, build, bridge_name, bridge_settings):
        self.build = build
        self.bridge_name = bridge_name
        self.bridge_settings = bridge_settings

    def __call__(self, input_size, output_size, **settings):
        """Builds the bridge.

        Arguments
        ---------
        input_size : int
            Width of the stacked encoder frames.
        output_size : int
            The LLM's embedding width.
        **settings
            Constructor arguments that override the YAML's for this build
            only (they are not recorded in ``bridge_settings``).

        Returns
        -------
        torch.nn.Module
            The bridge.
        """
        return self.build(input_size, output_size, **settings)

    def __repr__(self):
        return f"BridgeBuilder({self.bridge_name!r}, {self.bridge_settings!r})"


def load_bridge(bridge, overrides=None):
    """The bridge builder of a bridge YAML file, for :class:`SpeechLLM`.

    Arguments
    ---------
    bridge : str
        ``dense``, ``moe_adapter``, ``soft_moa`` or a bridge YAML's path (its
        ``bridge`` key builds ``bridge(input_size, output_size)``).
    overrides : dict, optional
        New values of its settings, e.g. ``{"top_k": 2}``.

    Returns
    -------
    BridgeBuilder
        ``(input_size, output_size) -> Module``, with the name
        (``bridge_name``) and settings (``bridge_settings``) it was loaded
        with.

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
    return BridgeBuilder(hparams["bridge"], bridge, settings)


def load_llm(
    source,
    cache_dir=None,
    lora_layers=(),
    lora_rank=8,
    lora_alpha=16.0,
    attn_implementation="sdpa",
    dtype="float32",
    lora_method="lora",
):
    """Loads a causal LM (transformers' weight-loading bar silenced, during
    the load only), frozen, with SpeechBrain's ``LoRA`` on its linear layers
    matching ``lora_layers``, in SpeechBrain's ``AdaptedModel``.

    Every pattern must match at least one linear layer: a pattern matching
    nothing (``["q_proj"]`` where the names are ``model.layers.0.self_attn.
    q_proj``) or a string instead of a list raises a ``ValueError`` listing
    the LLM's linear layers (as the recipe setting ``llm_lora_layers``).

    Arguments
    ---------
    source : str
        Hugging Face hub id or local folder of the LLM.
    cache_dir : str, optional
        Where downloads are cached.
    lora_layers : list of str
        fnmatch patterns of the LLM's linear-layer names (``[]``: no LoRA).
    lora_rank : int
        LoRA rank (>= 1).
    lora_alpha : float
        LoRA scale numerator (> 0): updates are scaled by alpha / rank.
    attn_implementation : str
        transformers' attention implementation.
    lora_method : str
        What adapts the ``lora_layers`` (the recipe setting
        ``llm_lora_method``): ``lora`` (SpeechBrain's ``LoRA``, the default),
        or a mixture of LoRA experts, ``dense_lora`` or ``moe_lora`` (rank
        ``lora_rank`` and scale ``lora_alpha / lora_rank`` for every expert;
        see :func:`speechbrain_moe.adapters.lora_experts.llm_lora_adapter`).
    dtype : str
        The weights' dtype (the recipe setting ``llm_dtype``): ``float32``
        (default: CPUs, and GPUs with ``--precision=bf16``), ``bfloat16``,
        ``float16`` or ``checkpoint`` (the checkpoint's own); see
        :mod:`speechbrain_moe.lobes.dtypes`. What was loaded (source, dtype,
        parameters) is logged.

    Returns
    -------
    speechbrain.nnet.adapters.AdaptedModel

    Example
    -------
    >>> import tempfile
    >>> from synthetic.llm import make_tiny_llm
    >>> folder = make_tiny_llm(tempfile.mkdtemp())
    >>> llm = load_llm(folder, lora_layers=["*q_proj"], lora_rank=2)
    >>> len(llm.replace_layers) == llm.config.num_hidden_layers
    True
    >>> load_llm(folder, lora_layers=["q_proj"])
    Traceback (most recent call last):
    ...
    ValueError: llm_lora_layers: the pattern(s) ['q_proj'] match no Linear sub-module ...
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(lora_layers, str) or not isinstance(lora_layers, (list, tuple)):
        check_target_patterns(nn.Module(), lora_layers, "llm_lora_layers")
    adapter_class, adapter_kwargs = llm_lora_adapter(lora_method, lora_rank, lora_alpha)
    torch_dtype = load_dtype(dtype, "llm_dtype")
    with quiet_loading():
        stored = AutoConfig.from_pretrained(source, cache_dir=cache_dir).dtype
        model = AutoModelForCausalLM.from_pretrained(
            source,
            cache_dir=cache_dir,
            attn_implementation=attn_implementation,
            dtype=torch_dtype,
        )
    log_loaded("LLM", source, model, stored)
    check_target_patterns(
        model,
        list(lora_layers),
        "llm_lora_layers",
        kinds=(nn.Linear,),
        where=f"LLM {source}",
    )
    return AdaptedModel(
        model,
        adapter_class,
        target_layers=list(lora_layers),
        adapter_kwargs=adapter_kwargs,
    )


def _layout(embed, prefixes, target_ids=None, target_mask=None):
    """Batches prefixes (per sample, pieces of token ids ``[n]`` or embeddings
    ``[n, d]``) left-padded, then targets right-padded."""
    width = max(sum(piece.shape[0] for piece in pieces) for pieces in prefixes)
    embeds = embed.weight.new_zeros(len(prefixes), width, embed.weight.shape[1])
    mask = torch.zeros(embeds.shape[:2], dtype=torch.bool, device=embeds.device)
    labels = torch.full_like(mask, -100, dtype=torch.long)
    for i, pieces in enumerate(prefixes):
        start = width - sum(piece.shape[0] for piece in pieces)
        mask[i, start:] = True
        for piece in pieces:
            end = start + piece.shape[0]
            if piece.dim() == 1:  # token ids
                embeds[i, start:end], labels[i, start:end] = embed(piece), piece
            else:
                embeds[i, start:end] = piece
            start = end
    loss_mask = torch.zeros_like(mask)
    if target_ids is not None:
        if target_mask is None:
            target_mask = torch.ones_like(target_ids, dtype=torch.bool)
        embeds = torch.cat([embeds, embed(target_ids * target_mask)], dim=1)
        mask = torch.cat([mask, target_mask], dim=1)
        target_labels = target_ids.masked_fill(~target_mask, -100)
        labels = torch.cat([labels, target_labels], dim=1)
        # Position t predicts token t + 1: the last prefix position predicts
        # the first target token.
        zeros = torch.zeros_like(loss_mask[:, :-1])
        loss_mask = torch.cat([zeros, target_mask, zeros[:, :1]], dim=1)
    return {
        "inputs_embeds": embeds,
        "attention_mask": mask,
        "position_ids": (mask.long().cumsum(-1) - 1).clamp(min=0),
        "labels": labels,
        "loss_mask": loss_mask,
        "prefix_length": width,
    }


class SpeechLLM(TrainableState, nn.Module):
    """Frozen encoder -> ConcatDownsampler -> bridge -> frozen causal LM.

    The audio markers are LLM-width embeddings, so the frozen vocabulary is
    never resized; checkpoints hold what trains (bridge, markers, LoRA).
    Inputs: ``wavs`` and token ids ``[batch, len]``, with relative lengths.

    The LLM input (:meth:`build_inputs`) is the prefix ``[<bos>] <audio
    start> audio <audio end> prompt``, left-padded (all prefixes end in the
    same column), then ``target <eos>``, right-padded; positions follow the
    attention mask, so padding never changes a result.

    Arguments
    ---------
    encoder : Backbone
        Audio encoder lobe; frozen, run without gradient.
    llm : torch.nn.Module
        Causal LM taking ``inputs_embeds``, frozen (or an ``AdaptedModel``).
    bridge : callable
        ``bridge(input_size, output_size)`` builds the bridge: a
        :class:`BridgeBuilder` (:func:`load_bridge`, whose name and settings
        are recorded in :meth:`describe`), or any callable (recorded by the
        built module's class name, without settings).
    downsampling_factor : int
        Frames stacked by the ConcatDownsampler (>= 1). A clip shorter than
        that many encoder frames (Whisper: under about 60 ms at 4) is padded
        to one stacked position (its missing frames zero) rather than
        stacked into nothing.
    bos_index, eos_index, pad_index : int, optional
        First token of every sequence (None: none), end-of-sequence and
        padding tokens (default: the LLM config's; pad falls back to eos).

    Example
    -------
    >>> from transformers import LlamaConfig, LlamaForCausalLM
    >>> encoder = torch.nn.Module()  # stands in for an encoder lobe: 8-d frames
    >>> encoder.output_size, encoder.encode = 8, lambda w, lens: (w.view(2, -1, 8), None)
    >>> llm = LlamaForCausalLM(LlamaConfig(hidden_size=16, intermediate_size=32,
    ...     num_hidden_layers=1, num_attention_heads=2, vocab_size=32))
    >>> bridge = load_bridge("dense", {"hidden_size": 16})
    >>> model = SpeechLLM(encoder, llm, bridge, downsampling_factor=2, bos_index=1)
    >>> wavs, lens, ids = torch.randn(2, 80), torch.ones(2), torch.tensor([[5, 6, 2]] * 2)
    >>> out = model(wavs, lens, ids, lens, ids, lens)
    >>> out["logits"].shape[:2], out["aux_loss"].shape
    (torch.Size([2, 3]), torch.Size([]))
    >>> [len(hyp) <= 3 for hyp in model.generate(wavs, lens, ids, lens, max_new_tokens=3)]
    [True, True]
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
        config = unwrap(llm).config
        self.llm_size = config.hidden_size
        eos = config.eos_token_id if eos_index is None else eos_index
        self.eos_index = eos[0] if isinstance(eos, (list, tuple)) else eos
        pad = config.pad_token_id if pad_index is None else pad_index
        self.pad_index = self.eos_index if pad is None else pad
        self.bos_index = bos_index
        if (
            isinstance(downsampling_factor, bool)
            or not isinstance(downsampling_factor, int)
            or downsampling_factor < 1
        ):
            raise ValueError(
                "SpeechLLM: downsampling_factor (encoder frames stacked per LLM "
                f"position) must be an integer >= 1, got {downsampling_factor!r}. "
                "Set downsampling_factor in the recipe YAML or pass "
                "--downsampling_factor=4 (the MoE-Adapter paper's value)."
            )
        self.downsampling_factor = downsampling_factor
        self.downsampler = ConcatDownsampler(downsampling_factor)
        self.bridge = bridge(encoder.output_size * downsampling_factor, self.llm_size)
        if isinstance(bridge, BridgeBuilder):
            self.bridge_name = bridge.bridge_name
            self.bridge_settings = bridge.bridge_settings
        else:
            self.bridge_name, self.bridge_settings = type(self.bridge).__name__, None
        std = float(self.embed_tokens.weight.detach().float().std())
        self.audio_start = nn.Parameter(torch.randn(self.llm_size) * std)
        self.audio_end = nn.Parameter(torch.randn(self.llm_size) * std)

    def describe(self):
        """The bridge and its settings (what a checkpoint must match).

        Returns
        -------
        dict
            ``model`` (``SpeechLLM``), ``bridge`` and ``bridge_settings``.
        """
        bridge = {"bridge": self.bridge_name, "bridge_settings": self.bridge_settings}
        return {"model": "SpeechLLM", **bridge}

    def train(self, mode=True):
        """Sets training mode; the frozen encoder and LLM stay in eval mode.

        Arguments
        ---------
        mode : bool
            True: training mode (of the bridge, markers and LoRA modules);
            False: evaluation mode.

        Returns
        -------
        SpeechLLM
            ``self``, as ``torch.nn.Module.train``.
        """
        super().train(mode)
        self.encoder.eval()
        self.llm.eval()
        return self

    @property
    def embed_tokens(self):
        """The LLM's (frozen) input embedding table."""
        return unwrap(self.llm).get_input_embeddings()

    def build_inputs(
        self,
        audio,
        audio_mask,
        prompt_ids,
        prompt_mask,
        target_ids=None,
        target_mask=None,
    ):
        """Lays out ``[<bos>] <audio start> audio <audio end> prompt | target``.

        Arguments
        ---------
        audio, audio_mask : torch.Tensor
            ``[batch, frames, llm_size]`` bridge outputs and their bool mask.
        prompt_ids, prompt_mask : torch.Tensor
            ``[batch, prompt_len]`` token ids and bool mask.
        target_ids, target_mask : torch.Tensor, optional
            ``[batch, target_len]`` ids ending with ``<eos>`` and bool mask.

        Returns
        -------
        dict
            ``inputs_embeds`` ``[B, S, d]``, ``prefix_length`` and ``[B, S]``
            ``attention_mask``, ``position_ids``, ``labels`` (-100 but at text
            tokens), ``loss_mask`` (True where the *next* token is a target).

        Example
        -------
        >>> from transformers import LlamaConfig, LlamaForCausalLM
        >>> encoder = torch.nn.Module()
        >>> encoder.output_size = 4
        >>> llm = LlamaForCausalLM(LlamaConfig(hidden_size=4, intermediate_size=8,
        ...     num_hidden_layers=1, num_attention_heads=1, vocab_size=10))
        >>> model = SpeechLLM(encoder, llm, torch.nn.Linear, 1, bos_index=1)
        >>> audio = torch.randn(2, 3, 4)
        >>> audio_mask = torch.tensor([[True, True, True], [True, False, False]])
        >>> ids = torch.tensor([[5, 6], [7, 0]])
        >>> prompt_mask = torch.tensor([[True, True], [True, False]])
        >>> inputs = model.build_inputs(audio, audio_mask, ids, prompt_mask)
        >>> inputs["inputs_embeds"].shape  # <bos> <start> 3 frames <end> 2 prompt ids
        torch.Size([2, 8, 4])
        >>> inputs["attention_mask"].int().tolist()  # the shorter prefix, left-padded
        [[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 1]]
        >>> inputs["position_ids"].tolist()
        [[0, 1, 2, 3, 4, 5, 6, 7], [0, 0, 0, 0, 1, 2, 3, 4]]
        """
        bos = []
        if self.bos_index is not None:
            bos = [torch.tensor([self.bos_index], device=audio.device)]
        start, end = self.audio_start[None], self.audio_end[None]
        prefixes = [
            bos + [start, audio[i, : int(n)], end, prompt_ids[i, prompt_mask[i]]]
            for i, n in enumerate(audio_mask.sum(1))
        ]
        return _layout(self.embed_tokens, prefixes, target_ids, target_mask)

    def encode_audio(self, wavs, wav_lens=None):
        """Audio -> LLM-width embeddings ``[batch, frames / k, llm_size]`` of the
        stacked frames, and their ``[batch, frames / k]`` valid-frame mask; at
        least one stacked frame (fewer than ``k`` encoder frames are padded).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms.
        wav_lens : torch.Tensor, optional
            ``[batch]`` relative lengths.

        Returns
        -------
        embeddings, mask : torch.Tensor
            ``[batch, positions, llm_size]`` and ``[batch, positions]`` (bool).
        """
        with torch.no_grad():
            hidden, mask = self.encoder.encode(wavs, wav_lens)
        if mask is None:
            mask = torch.ones_like(hidden[..., 0], dtype=torch.bool)
        hidden = hidden.detach() * mask.unsqueeze(-1).to(hidden.dtype)
        short = self.downsampling_factor - hidden.shape[1]
        if short > 0:  # fewer frames than one stack: pad (masked) to one
            hidden = F.pad(hidden, (0, 0, 0, short))
            mask = F.pad(mask, (0, short), value=False)
        stacked = self.downsampler(hidden)
        lengths = (mask.sum(1) // self.downsampling_factor).clamp(min=1)
        stacked_mask = lengths_to_mask(lengths, stacked.shape[1])
        return self.bridge(stacked, stacked_mask), stacked_mask

    def _inputs(self, wavs, wav_lens, prompt_ids, prompt_lens, *targets):
        """Audio and prompt (and target ids and mask) laid out for the LLM."""
        audio, audio_mask = self.encode_audio(wavs, wav_lens)
        prompt_mask = relative_to_mask(prompt_lens, prompt_ids.shape[1])
        return self.build_inputs(audio, audio_mask, prompt_ids, prompt_mask, *targets)

    def forward(self, wavs, wav_lens, prompt_ids, prompt_lens, target_ids, target_lens):
        """Teacher-forced pass: the ``logits`` ``[B, target_len, vocab]`` (logit
        ``j`` predicts target ``j``), ``targets`` and ``target_mask`` that
        :func:`target_nll` takes, and the bridge's ``aux_loss`` (zero for ``dense``).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms.
        wav_lens : torch.Tensor
            ``[batch]`` relative lengths of the waveforms.
        prompt_ids : torch.Tensor
            ``[batch, prompt_len]`` token ids of the prompts.
        prompt_lens : torch.Tensor
            ``[batch]`` relative lengths of the prompts.
        target_ids : torch.Tensor
            ``[batch, target_len]`` token ids of the answers, ending with
            ``<eos>``.
        target_lens : torch.Tensor
            ``[batch]`` relative lengths of the answers.

        Returns
        -------
        dict
            ``logits`` ``[batch, target_len, vocab]``, ``targets``
            (``target_ids``), ``target_mask`` ``[batch, target_len]`` (bool)
            and ``aux_loss`` (a scalar tensor).
        """
        target_mask = relative_to_mask(target_lens, target_ids.shape[1])
        # The aux losses of the bridge and of mixtures of LoRA experts on the
        # LLM (llm_lora_method), whose padded positions are not routed.
        with routing_context(self) as routing:
            inputs = self._inputs(
                wavs, wav_lens, prompt_ids, prompt_lens, target_ids, target_mask
            )
            length = target_ids.shape[1]
            with token_mask(inputs["attention_mask"].bool()):
                out = self.llm(
                    inputs_embeds=inputs["inputs_embeds"],
                    attention_mask=inputs["attention_mask"].long(),
                    position_ids=inputs["position_ids"],
                    use_cache=False,
                    logits_to_keep=length + 1,
                )
        aux = routing.aux_loss
        return {
            "logits": out.logits[:, :length],
            "targets": target_ids,
            "target_mask": target_mask,
            "aux_loss": aux.to(out.logits.dtype).reshape(()),
        }

    @torch.no_grad()
    def generate(
        self, wavs, wav_lens, prompt_ids, prompt_lens, max_new_tokens=32, num_beams=1
    ):
        """The token ids of each answer, without ``<eos>`` and padding, from
        transformers ``generate`` (KV cache; ``num_beams`` 1: greedy).

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]`` waveforms.
        wav_lens : torch.Tensor
            ``[batch]`` relative lengths of the waveforms.
        prompt_ids : torch.Tensor
            ``[batch, prompt_len]`` token ids of the prompts.
        prompt_lens : torch.Tensor
            ``[batch]`` relative lengths of the prompts.
        max_new_tokens : int
            Longest answer, in tokens.
        num_beams : int
            Beam width (1: greedy search).

        Returns
        -------
        list of list of int
            One list of token ids per clip, cut at the first ``<eos>``.
        """
        inputs = self._inputs(wavs, wav_lens, prompt_ids, prompt_lens)
        tokens = unwrap(self.llm).generate(
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
    """Mean cross-entropy over the real target tokens of the batch:
    ``logits[:, j]`` (``[batch, len, vocab]``) predicts ``targets[:, j]``
    (``[batch, len]``), counted where ``target_mask`` is True.

    Arguments
    ---------
    logits : torch.Tensor
        ``[batch, len, vocab]`` (computed in float32).
    targets : torch.Tensor
        ``[batch, len]`` token ids.
    target_mask : torch.Tensor
        ``[batch, len]`` boolean, True on the real target tokens.

    Returns
    -------
    torch.Tensor
        Scalar mean negative log-likelihood (0 when no token is real).

    Example
    -------
    >>> logits = torch.zeros(1, 2, 4)
    >>> round(float(target_nll(logits, torch.tensor([[1, 2]]), torch.ones(1, 2, dtype=torch.bool))), 4)
    1.3863
    """
    nll = F.cross_entropy(logits.float().transpose(1, 2), targets, reduction="none")
    weights = target_mask.to(nll.dtype)
    return (nll * weights).sum() / weights.sum().clamp(min=1.0)
