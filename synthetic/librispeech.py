"""Tiny LibriSpeech-layout corpus: ``<split>/<speaker>/<chapter>/*.flac`` plus
``<speaker>-<chapter>.trans.txt``, with words that a small model can learn.

Every word of :data:`WORDS` is rendered as its own sound pattern (two tones
with a word-specific pitch contour), so a transcript is recoverable from the
audio and an ASR model can overfit a handful of utterances.

Authors
 * speechbrain-moe contributors 2026
"""

import os

import numpy as np
import soundfile as sf

WORDS = ("RED", "BLUE", "GREEN", "CAT", "DOG", "SUN", "MOON", "TREE")
SAMPLE_RATE = 16000
WORD_SECONDS = 0.24
GAP_SECONDS = 0.06
DEFAULT_SPLITS = {"train-clean-100": 12, "dev-clean": 4, "test-clean": 4}


def word_sound(word, rng=None, sample_rate=SAMPLE_RATE):
    """The waveform of one vocabulary word.

    Arguments
    ---------
    word : str
        One of :data:`WORDS`.
    rng : numpy.random.Generator, optional
        Adds a little noise and amplitude jitter when given.
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    numpy.ndarray
        float32 samples.

    Example
    -------
    >>> word_sound("CAT").shape
    (3840,)
    """
    index = WORDS.index(word)
    n = int(WORD_SECONDS * sample_rate)
    t = np.arange(n) / sample_rate
    low = 250.0 + 110.0 * index
    high = 3200.0 - 260.0 * index
    half = n // 2
    wave = np.concatenate(
        [np.sin(2 * np.pi * low * t[:half]), np.sin(2 * np.pi * high * t[half:])]
    )
    wave = wave + 0.5 * np.sin(2 * np.pi * (low * 2.0) * t)
    envelope = np.hanning(n)
    gain = 0.3
    if rng is not None:
        gain *= rng.uniform(0.8, 1.2)
        wave = wave + 0.05 * rng.standard_normal(n)
    return (gain * envelope * wave).astype(np.float32)


def utterance(words, rng=None, sample_rate=SAMPLE_RATE):
    """Concatenates the sounds of ``words`` with short silences.

    Arguments
    ---------
    words : list of str
        Vocabulary words.
    rng : numpy.random.Generator, optional
        Noise source (see :func:`word_sound`).
    sample_rate : int
        Sampling rate in Hz.

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> utterance(["RED", "DOG"]).shape
    (10560,)
    """
    gap = np.zeros(int(GAP_SECONDS * sample_rate), dtype=np.float32)
    pieces = []
    for word in words:
        pieces += [gap, word_sound(word, rng, sample_rate)]
    pieces.append(gap)
    return np.concatenate(pieces)


def make_librispeech(
    out_dir, seed=0, splits=None, speakers=2, min_words=2, max_words=3
):
    """Writes a tiny LibriSpeech-layout corpus.

    Arguments
    ---------
    out_dir : str
        Target folder (it plays the role of ``LibriSpeech/``).
    seed : int
        Random seed.
    splits : dict, optional
        Split name -> number of utterances (default :data:`DEFAULT_SPLITS`).
    speakers : int
        Speakers per split (one chapter each).
    min_words : int
        Fewest words per utterance.
    max_words : int
        Most words per utterance.

    Example
    -------
    >>> import tempfile
    >>> root = make_librispeech(tempfile.mkdtemp(), splits={"dev-clean": 2})
    >>> sorted(os.listdir(os.path.join(root, "dev-clean")))
    ['1000', '1001']
    """
    rng = np.random.default_rng(seed)
    splits = DEFAULT_SPLITS if splits is None else splits
    for split_index, (split, count) in enumerate(sorted(splits.items())):
        by_chapter = {}
        for i in range(count):
            speaker = 1000 + split_index * 100 + i % speakers
            chapter = 10 * speaker + 1
            n_words = int(rng.integers(min_words, max_words + 1))
            words = [
                WORDS[int(j)] for j in rng.choice(len(WORDS), n_words, replace=False)
            ]
            by_chapter.setdefault((speaker, chapter), []).append(words)
        for (speaker, chapter), utts in by_chapter.items():
            folder = os.path.join(out_dir, split, str(speaker), str(chapter))
            os.makedirs(folder, exist_ok=True)
            lines = []
            for k, words in enumerate(utts):
                utt_id = f"{speaker}-{chapter}-{k:04d}"
                sf.write(
                    os.path.join(folder, utt_id + ".flac"),
                    utterance(words, rng),
                    SAMPLE_RATE,
                )
                lines.append(f"{utt_id} {' '.join(words)}")
            with open(os.path.join(folder, f"{speaker}-{chapter}.trans.txt"), "w") as f:
                f.write("\n".join(lines) + "\n")
    return out_dir
