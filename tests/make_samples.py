"""Writes ``tests/samples/``: the tiny data sets and models the recipe rows of
``tests/recipes/*.csv`` run on (committed; regenerate with
``python tests/make_samples.py``).

Every folder comes from the package's synthetic generators
(``synthetic``) in the official layout of its corpus, with
the fewest, shortest clips the recipes accept (two classes, 0.1-0.25 s) and
the smallest models the lobes accept, so that all of it stays a few hundred KB.
"""

import os
import shutil
import sys

import numpy as np
import soundfile as sf

HERE = os.path.dirname(os.path.abspath(__file__))
SAMPLES = os.path.join(HERE, "samples")
DATA = {
    "esc50": dict(
        num_classes=2, clips_per_class_per_fold=1, seconds=0.25, sample_rate=8000
    ),
    "us8k": dict(num_classes=2, clips_per_class_per_fold=1, seconds=0.05),
    "gsc": dict(num_classes=2, clips_per_word=4, seconds=0.1),
    "fsc": dict(num_classes=2, clips_per_intent=(1, 1, 1), seconds=0.1),
    "librispeech": dict(
        splits={"train-clean-100": 2, "dev-clean": 1, "test-clean": 1},
        speakers=1,
        min_words=1,
        max_words=2,
    ),
}
MODELS = {
    "tiny_ast": ("make_tiny_ast", dict(hidden_size=16, num_hidden_layers=1)),
    "tiny_whisper": (
        "make_tiny_whisper",
        dict(d_model=16, encoder_layers=1, decoder_layers=1, vocab_size=64),
    ),
    "tiny_wavlm": (
        "make_tiny_wavlm",
        dict(hidden_size=16, num_hidden_layers=1, conv_dim=(8,) * 7),
    ),
}


def shorten(path, seconds):
    """Cuts an audio file to ``seconds`` (in place)."""
    audio, rate = sf.read(path)
    sf.write(path, audio[: int(seconds * rate)], rate)


def main(out=SAMPLES):
    """Regenerates every sample folder under ``out``."""
    from synthetic import generate, models
    from synthetic.llm import make_tiny_llm

    for name, options in DATA.items():
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        generate(name, os.path.join(out, name), **options)
    shorten(os.path.join(out, "gsc", "_background_noise_", "white_noise.wav"), 0.1)
    for name, (maker, options) in MODELS.items():
        shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        getattr(models, maker)(os.path.join(out, name), **options)
    shutil.rmtree(os.path.join(out, "tiny_llm"), ignore_errors=True)
    make_tiny_llm(os.path.join(out, "tiny_llm"), hidden_size=32, num_layers=1)
    total = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(out)
        for f in files
    )
    print(f"{out}: {total / 1024:.0f} KB")
    return total


if __name__ == "__main__":
    np.seterr(all="ignore")
    main(*sys.argv[1:])
