"""``tiny-llm``: a tiny random Llama causal LM and its tokenizer, saved with
``save_pretrained`` so that ``AutoTokenizer`` / ``AutoModelForCausalLM`` load
them offline from the folder.

The tokenizer is a small BPE model trained offline (``tokenizers``) on a
built-in corpus (the synthetic LibriSpeech words, the ESC-50 class names and
the recipe prompts) with every printable ASCII character in its alphabet, so
it encodes any English text and the built-in data in few tokens.

Authors
 * speechbrain-moe contributors 2026
"""

import os
import string

from synthetic.librispeech import WORDS

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<unk>")
EXTRA_CORPUS = (
    "Transcribe the audio.",
    "What sound is this?",
    "dog rooster pig cow frog cat hen insects sheep crow rain sea_waves "
    "crackling_fire crickets chirping_birds water_drops wind pouring_water "
    "toilet_flush thunderstorm crying_baby sneezing clapping breathing coughing "
    "footsteps laughing brushing_teeth snoring drinking_sipping door_wood_knock "
    "mouse_click keyboard_typing door_wood_creaks can_opening washing_machine "
    "vacuum_cleaner clock_alarm clock_tick glass_breaking helicopter chainsaw "
    "siren car_horn engine train church_bells airplane fireworks hand_saw",
)


def build_tokenizer(vocab_size=256):
    """Trains the tiny BPE tokenizer offline.

    Arguments
    ---------
    vocab_size : int
        Target vocabulary size (special tokens included).

    Returns
    -------
    transformers.PreTrainedTokenizerFast

    Example
    -------
    >>> tok = build_tokenizer()
    >>> ids = tok("RED CAT").input_ids
    >>> tok.decode(ids)
    'RED CAT'
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace()
    tokenizer.decoder = decoders.Metaspace()
    alphabet = [c for c in string.printable if c not in "\t\n\r\x0b\x0c"]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=alphabet + ["\u2581"],
        show_progress=False,
    )
    corpus = [" ".join(WORDS)] * 20 + list(EXTRA_CORPUS) * 5
    tokenizer.train_from_iterator(corpus, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="<pad>",
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
    )


def make_tiny_llm(out_dir, seed=0, hidden_size=64, num_layers=2, initializer_range=0.2):
    """Writes a tiny random ``LlamaForCausalLM`` and its tokenizer.

    Arguments
    ---------
    hidden_size : int
        Model width.
    num_layers : int
        Number of decoder layers.
    initializer_range : float
        Standard deviation of the random weights (larger than Llama's 0.02,
        so that the frozen random model's logits depend on its input).

    Example
    -------
    >>> import tempfile
    >>> from transformers import AutoModelForCausalLM, AutoTokenizer
    >>> folder = make_tiny_llm(tempfile.mkdtemp())
    >>> AutoModelForCausalLM.from_pretrained(folder).config.hidden_size
    64
    >>> AutoTokenizer.from_pretrained(folder).eos_token
    '</s>'
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    os.makedirs(out_dir, exist_ok=True)
    tokenizer = build_tokenizer()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        initializer_range=initializer_range,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
