"""wav2vec2-family encoders (WavLM, HuBERT, wav2vec 2.0) as a SpeechBrain lobe.

The lobe loads any Hugging Face model of the family through ``AutoModel``
(``WavLMModel``, ``HubertModel``, ``Wav2Vec2Model``; a ``...ForCTC`` checkpoint
gives its base model), normalises the waveforms as the checkpoint's
``Wav2Vec2FeatureExtractor`` does (zero mean, unit variance over each clip's
valid samples, when its config says ``do_normalize``), passes the sample-level
attention mask when the feature-extractor config asks for it
(``return_attention_mask``), and masks the frames past each clip's length
(``_get_feat_extract_output_lengths``) for pooling and routing.

Which LayerNorm feeds which block differs between the two layer layouts:

* post-LN (``do_stable_layer_norm=False``: WavLM/HuBERT/wav2vec2 *base*):
  ``h = LN(x + attention(x))``; ``y = final_LN(h + feed_forward(h))``. The
  attention reads the raw hidden states, i.e. the output of the *previous*
  layer's ``final_layer_norm`` (for layer 0: ``encoder.layer_norm``, applied
  after the positional convolution), so that is the ``attention_norm``
  named; the feed-forward reads the layer's own ``layer_norm``.
* pre-LN (``do_stable_layer_norm=True``: the *large* models):
  ``h = x + attention(layer_norm(x))``; ``y = h + feed_forward(final_LN(h))``.

WavLM's gated relative-position attention does not compute attention through
Hugging Face's attention interface (prefix tuning refuses it), and it reads
``q_proj.weight`` etc. directly through ``F.multi_head_attention_forward``,
which would bypass (or break on) LoRA wrappers; the lobe therefore switches
each WavLM attention block to :class:`ModularWavLMAttention`, the same
computation calling its projections as modules.

Authors
 * speechbrain-moe contributors 2026
"""

import logging

import torch
import torch.nn.functional as F
from transformers.models.wavlm.modeling_wavlm import WavLMAttention

from speechbrain_moe.lobes.base import Backbone, lengths_to_mask
from speechbrain_moe.lobes.whisper import unwrap
from speechbrain_moe.routing import token_mask
from speechbrain_moe.targets import PetlTargets

logger = logging.getLogger(__name__)


class ModularWavLMAttention(WavLMAttention):
    """``WavLMAttention`` whose projections are called as modules.

    Hugging Face's version hands ``q_proj.weight`` (and the k, v, out
    weights) to ``F.multi_head_attention_forward``; wrapping a projection
    (LoRA) then fails. This one computes the same attention (gated relative
    position bias, key padding mask, attention dropout) with the projections
    called as modules and ``F.scaled_dot_product_attention``. The lobe swaps
    the class of existing blocks, so the pretrained weights stay in place.

    Example
    -------
    >>> attn = WavLMAttention(embed_dim=8, num_heads=2, num_buckets=8, max_distance=16)
    >>> x = torch.randn(2, 5, 8)
    >>> ref = attn(x)[0]
    >>> attn.__class__ = ModularWavLMAttention
    >>> torch.allclose(attn(x)[0], ref, atol=1e-6)
    True
    """

    def torch_multi_head_self_attention(
        self, hidden_states, attention_mask, gated_position_bias
    ):
        """Self-attention with additive position bias and key padding mask.

        Arguments
        ---------
        hidden_states : torch.Tensor
            ``[batch, time, embed_dim]``.
        attention_mask : torch.Tensor or None
            ``[batch, time]``, 1 for real frames.
        gated_position_bias : torch.Tensor
            ``[batch * heads, time, time]``.

        Returns
        -------
        tuple
            ``(output [batch, time, embed_dim], None)``.
        """
        batch, time, _ = hidden_states.shape

        def heads(x):
            """[batch, time, d] -> [batch, heads, time, head_dim]."""
            return x.view(batch, time, self.num_heads, self.head_dim).transpose(1, 2)

        query = heads(self.q_proj(hidden_states))
        key = heads(self.k_proj(hidden_states))
        value = heads(self.v_proj(hidden_states))
        bias = gated_position_bias.view(batch, self.num_heads, time, time).to(
            query.dtype
        )
        if attention_mask is not None:
            padding = attention_mask.ne(1)[:, None, None, :]
            bias = bias.masked_fill(padding, float("-inf"))
        out = F.scaled_dot_product_attention(
            query,
            key,
            value,
            attn_mask=bias,
            dropout_p=self.dropout if self.training else 0.0,
        )
        out = out.transpose(1, 2).reshape(batch, time, self.embed_dim)
        return self.out_proj(out), None


class SSLEncoder(Backbone):
    """A wav2vec2-family encoder (WavLM, HuBERT, wav2vec 2.0) behind waveforms
    + relative lengths.

    Arguments
    ---------
    source : str
        Hub id or local folder of the checkpoint (loaded with ``AutoModel``);
        its ``preprocessor_config.json`` says whether to normalise the
        waveform and whether to pass an attention mask.
    save_path : str, optional
        Cache folder for hub downloads.
    pooling : str
        ``mean`` over valid frames (``cls`` takes the first frame).
    normalize : bool, optional
        Zero-mean/unit-variance normalisation of each clip (default: the
        feature-extractor config's ``do_normalize``; True without one).
    use_attention_mask : bool, optional
        Pass the sample-level attention mask to the model (default: the
        feature-extractor config's ``return_attention_mask``; without one,
        True for models with ``feat_extract_norm="layer"``, as Hugging Face
        advises).
    apply_spec_augment : bool
        Keep the model's own time/feature masking in training mode (off by
        default; its unused mask embedding is then dropped, so that every
        parameter of a fully fine-tuned model gets a gradient under DDP).
    layerdrop : float
        LayerDrop probability in training (0 by default: a dropped layer
        leaves its adapters without gradient, which DDP without
        ``find_unused_parameters`` rejects).
    sample_rate : int
        Sample rate of the input waveforms (must match the checkpoint's).

    Example
    -------
    >>> import tempfile
    >>> from speechbrain_moe.synthetic.models import make_tiny_wavlm
    >>> encoder = WavLM(make_tiny_wavlm(tempfile.mkdtemp()))
    >>> wavs = torch.randn(2, 16000)
    >>> hidden, mask = encoder.encode(wavs, torch.tensor([1.0, 0.5]))
    >>> hidden.shape, mask.sum(1).tolist()
    (torch.Size([2, 49, 32]), [49, 24])
    >>> encoder(wavs).shape
    torch.Size([2, 32])
    >>> encoder.petl_targets.attention_norm
    ['encoder.layer_norm', 'encoder.layers.0.final_layer_norm']
    """

    def __init__(
        self,
        source,
        save_path=None,
        pooling="mean",
        normalize=None,
        use_attention_mask=None,
        apply_spec_augment=False,
        layerdrop=0.0,
        sample_rate=16000,
    ):
        super().__init__(pooling=pooling)
        from transformers import AutoConfig, AutoFeatureExtractor, AutoModel

        config = AutoConfig.from_pretrained(source, cache_dir=save_path)
        config.layerdrop = layerdrop
        config.apply_spec_augment = apply_spec_augment
        self.model = AutoModel.from_pretrained(
            source, config=config, cache_dir=save_path
        )
        encoder = getattr(self.model, "encoder", None)
        if not hasattr(self.model, "_get_feat_extract_output_lengths") or not hasattr(
            encoder, "layers"
        ):
            raise ValueError(
                f"{source} ({type(self.model).__name__}) is not a wav2vec2-family "
                "encoder (WavLM, HuBERT, wav2vec2). Use the AST or Whisper lobe for "
                "other backbones."
            )
        if not apply_spec_augment and hasattr(self.model, "masked_spec_embed"):
            del self.model.masked_spec_embed
        try:
            extractor = AutoFeatureExtractor.from_pretrained(
                source, cache_dir=save_path
            )
        except (OSError, ValueError):
            logger.warning(
                "No feature-extractor config found for %s; normalising the "
                "waveform and guessing the attention mask from the model config.",
                source,
            )
            extractor = None
        if normalize is None:
            normalize = getattr(extractor, "do_normalize", True)
        if use_attention_mask is None:
            use_attention_mask = getattr(
                extractor,
                "return_attention_mask",
                getattr(config, "feat_extract_norm", "group") == "layer",
            )
        expected_rate = getattr(extractor, "sampling_rate", 16000)
        if sample_rate != expected_rate:
            raise ValueError(
                f"{source} expects {expected_rate} Hz audio, got "
                f"sample_rate={sample_rate}. Resample in the data pipeline (the "
                f"recipes do) and set sample_rate: {expected_rate}."
            )
        self.normalize = bool(normalize)
        self.use_attention_mask = bool(use_attention_mask)
        for module in self.model.modules():
            if type(module) is WavLMAttention:
                module.__class__ = ModularWavLMAttention
        attention_interface = not any(
            isinstance(m, WavLMAttention) for m in self.model.modules()
        )
        self.output_size = config.hidden_size
        layers = [f"encoder.layers.{i}" for i in range(len(encoder.layers))]
        if getattr(config, "do_stable_layer_norm", False):
            attention_norm = [f"{name}.layer_norm" for name in layers]
            ffn_norm = [f"{name}.final_layer_norm" for name in layers]
        else:
            attention_norm = ["encoder.layer_norm"] + [
                f"{name}.final_layer_norm" for name in layers[:-1]
            ]
            ffn_norm = [f"{name}.layer_norm" for name in layers]
        self.petl_targets = PetlTargets(
            hidden_size=config.hidden_size,
            layers=layers,
            attention=[f"{name}.attention" for name in layers],
            attention_norm=attention_norm,
            ffn=[f"{name}.feed_forward" for name in layers],
            ffn_norm=ffn_norm,
            lora=[
                f"{name}.attention.{p}" for name in layers for p in ("q_proj", "v_proj")
            ],
            num_prefix_tokens=0,
            grid_height=1,
            attention_interface=attention_interface,
        )

    def prepare(self, wavs, wav_lens=None):
        """Waveforms as the feature extractor prepares them, and their lengths.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        wavs : torch.Tensor
            ``[batch, samples]``, zero past each clip's length, normalised
            over the valid samples when ``normalize`` is on.
        lengths : torch.Tensor
            ``[batch]`` valid samples.
        """
        samples = wavs.shape[1]
        if wav_lens is None:
            lengths = torch.full((wavs.shape[0],), samples, device=wavs.device)
        else:
            lengths = (wav_lens.to(wavs.device) * samples).round().long()
        lengths = lengths.clamp(min=1, max=samples)
        valid = lengths_to_mask(lengths, samples)
        wavs = wavs.float() * valid
        if self.normalize:
            count = lengths.unsqueeze(1).float()
            mean = wavs.sum(1, keepdim=True) / count
            var = (((wavs - mean) * valid) ** 2).sum(1, keepdim=True) / count
            wavs = (wavs - mean) / torch.sqrt(var + 1e-7) * valid
        return wavs, lengths

    def encode(self, wavs, wav_lens=None):
        """Transformer frames and their valid-frame mask.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor, optional
            Relative lengths in (0, 1].

        Returns
        -------
        hidden : torch.Tensor
            ``[batch, frames, d]``.
        mask : torch.Tensor
            ``[batch, frames]``, True for frames of real audio.
        """
        wavs, lengths = self.prepare(wavs, wav_lens)
        model = unwrap(self.model)
        frames = int(model._get_feat_extract_output_lengths(wavs.shape[1]))
        valid = model._get_feat_extract_output_lengths(lengths).long()
        mask = lengths_to_mask(valid.clamp(min=1, max=frames), frames)
        kwargs = {}
        if self.use_attention_mask:
            kwargs["attention_mask"] = lengths_to_mask(lengths, wavs.shape[1]).long()
        with token_mask(self.model, mask):
            hidden = self.model(input_values=wavs, **kwargs).last_hidden_state
        return hidden, mask


WavLM = SSLEncoder
"""Alias of :class:`SSLEncoder` (it loads WavLM, HuBERT and wav2vec2 alike)."""
