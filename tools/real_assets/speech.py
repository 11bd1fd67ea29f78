"""Synthetic voices (espeak-ng) and audio helpers (sox, numpy).

A *voice* is an espeak-ng accent (``en-us``, ``en-gb-scotland``, ...) with a
voice variant (``+f3``, ``+m7``, ``+klatt2``, ...), a speaking rate (``-s``,
words per minute) and a pitch (``-p``, 0-99). espeak-ng writes 22.05 kHz WAV;
sox resamples it to 16 kHz mono 16-bit; numpy adds optional white noise at a
given signal-to-noise ratio.

Authors
 * speechbrain-moe contributors 2026
"""

import io
import random
import subprocess
from dataclasses import dataclass

import numpy as np
import soundfile as sf

SAMPLE_RATE = 16000
# espeak-ng's English accents (the mbrola voices need extra packages: left out).
ACCENTS = [
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
]
# Voice variants that sound like a speaker (whispers, croaks and effects left out).
VARIANTS = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8",
    "f1", "f2", "f3", "f4", "f5",
    "klatt", "klatt2", "klatt3", "klatt4", "klatt6",
    "adam", "Alex", "Alicia", "Andrea", "Andy", "Annie", "antonio", "aunty",
    "belinda", "benjamin", "boris", "caleb", "david", "Denis", "Diogo", "ed",
    "edward", "Gene", "gustave", "Henrique", "Hugo", "iven", "iven2", "iven3",
    "Jacky", "john", "Lee", "linda", "marcelo", "Marco", "Mario", "max",
    "Michael", "michel", "miguel", "Mike", "norbert", "pablo", "paul", "pedro",
    "quincy", "rob", "robert", "sandro", "shelby", "steph", "steph2", "travis",
    "victor", "zac", "anika", "grandma", "grandpa",
]  # fmt: skip


@dataclass(frozen=True)
class Voice:
    """One synthetic speaker.

    Arguments
    ---------
    accent : str
        espeak-ng voice (``en-us``, ...).
    variant : str
        espeak-ng variant (``f3``, ...).
    rate : int
        Words per minute (``-s``).
    pitch : int
        Pitch 0-99 (``-p``).

    Example
    -------
    >>> Voice("en-us", "f3", 160, 50).espeak_args()
    ['-v', 'en-us+f3', '-s', '160', '-p', '50']
    >>> Voice("en-us", "f3", 160, 50).name
    'en-us+f3-s160-p50'
    """

    accent: str
    variant: str
    rate: int
    pitch: int

    def espeak_args(self):
        """espeak-ng's voice, rate and pitch options.

        Returns
        -------
        list of str
        """
        return [
            "-v",
            f"{self.accent}+{self.variant}",
            "-s",
            str(self.rate),
            "-p",
            str(self.pitch),
        ]

    @property
    def name(self):
        """A readable identifier, e.g. ``en-gb+m3-s150-p40``."""
        return f"{self.accent}+{self.variant}-s{self.rate}-p{self.pitch}"


def split_variants(splits, seed=0, variants=None):
    """Assigns espeak-ng variants to splits, so that no timbre is shared.

    Arguments
    ---------
    splits : dict
        Split name -> number of variants it gets (in order; the first split
        takes what is left when the counts exceed the pool).
    seed : int
        Shuffling seed.
    variants : list of str, optional
        The pool (default: ``VARIANTS``).

    Returns
    -------
    dict
        Split -> list of variant names (disjoint).

    Example
    -------
    >>> parts = split_variants({"train": 10, "test": 3})
    >>> len(parts["train"]), len(parts["test"]), set(parts["train"]) & set(parts["test"])
    (10, 3, set())
    """
    pool = list(variants or VARIANTS)
    random.Random(seed).shuffle(pool)
    if sum(splits.values()) > len(pool):
        raise ValueError(
            f"{sum(splits.values())} voice variants requested ({splits}) but only "
            f"{len(pool)} exist; lower the voice counts."
        )
    out, start = {}, 0
    for split, count in splits.items():
        out[split] = pool[start : start + count]
        start += count
    return out


def make_voices(variants, count, seed=0, rate=(130, 190), pitch=(25, 75), accents=None):
    """``count`` distinct voices drawn from the given variants.

    Every variant is used at least once before any is reused (with another
    accent, rate and pitch).

    Arguments
    ---------
    variants : list of str
        Variant pool of one split.
    count : int
        Number of voices.
    seed : int
        Random seed.
    rate : tuple of int
        Speaking-rate range (words per minute).
    pitch : tuple of int
        Pitch range (0-99).
    accents : list of str, optional
        Accent pool (default: ``ACCENTS``).

    Returns
    -------
    list of Voice

    Example
    -------
    >>> voices = make_voices(["f1", "m2"], 3)
    >>> len(voices), sorted({v.variant for v in voices[:2]})
    (3, ['f1', 'm2'])
    """
    rng = random.Random(seed)
    accents = list(accents or ACCENTS)
    voices, seen = [], set()
    while len(voices) < count:
        variant = variants[len(voices) % len(variants)]
        voice = Voice(
            rng.choice(accents),
            variant,
            rng.randint(*rate),
            rng.randint(*pitch),
        )
        if voice not in seen:
            seen.add(voice)
            voices.append(voice)
    return voices


def synthesise(text, voice, sample_rate=SAMPLE_RATE):
    """Speech of ``text`` in ``voice`` at ``sample_rate`` (mono float32).

    Arguments
    ---------
    text : str
        What to say.
    voice : Voice
        Who says it.
    sample_rate : int
        Output rate (sox resamples espeak-ng's 22.05 kHz).

    Returns
    -------
    numpy.ndarray
        Samples in [-1, 1].

    Example
    -------
    >>> audio = synthesise("yes", Voice("en-us", "m3", 160, 50))  # doctest: +SKIP
    >>> 0.2 < len(audio) / 16000 < 1.0  # doctest: +SKIP
    True
    """
    speech = subprocess.run(
        ["espeak-ng", *voice.espeak_args(), "--stdout", text],
        capture_output=True,
        check=True,
    ).stdout
    return resample(speech, sample_rate, input_type="wav")


def resample(data, sample_rate=SAMPLE_RATE, input_type="wav"):
    """Decodes audio bytes with sox into mono float32 at ``sample_rate``.

    Without dither (``-D``), so that the same input always gives the same
    samples (sox dithers with random noise by default).

    Arguments
    ---------
    data : bytes
        The encoded audio.
    sample_rate : int
        Output rate.
    input_type : str
        sox type of the input (``wav``, ``mp3``, ...).

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> buf = io.BytesIO()
    >>> sf.write(buf, np.zeros(8000, np.float32), 8000, format="WAV")
    >>> resample(buf.getvalue(), 16000).shape  # doctest: +SKIP
    (16000,)
    """
    out = subprocess.run(
        ["sox", "-D", "-t", input_type, "-", "-t", "wav", "-r", str(sample_rate),
         "-c", "1", "-b", "16", "-"],
        input=data,
        capture_output=True,
        check=True,
    ).stdout  # fmt: skip
    audio, _ = sf.read(io.BytesIO(out), dtype="float32")
    return audio


def add_noise(audio, snr_db, rng):
    """``audio`` plus white noise at ``snr_db`` dB signal-to-noise ratio.

    Arguments
    ---------
    audio : numpy.ndarray
        Clean signal.
    snr_db : float or None
        Ratio in dB; ``None`` returns ``audio`` unchanged.
    rng : numpy.random.Generator
        Noise source.

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> rng = np.random.default_rng(0)
    >>> x = 0.1 * np.sin(np.arange(16000) / 5).astype(np.float32)
    >>> noisy = add_noise(x, 10.0, rng)
    >>> round(float(10 * np.log10((x**2).mean() / ((noisy - x) ** 2).mean())))
    10
    """
    if snr_db is None:
        return audio
    power = float(np.mean(audio**2)) or 1e-8
    noise = rng.standard_normal(len(audio)).astype(np.float32)
    noise *= np.sqrt(power / 10 ** (snr_db / 10) / np.mean(noise**2))
    return np.clip(audio + noise, -1.0, 1.0).astype(np.float32)


def fit_length(audio, samples, rng):
    """Pads ``audio`` with silence to ``samples`` at a random offset.

    Longer audio is kept whole.

    Arguments
    ---------
    audio : numpy.ndarray
        Signal.
    samples : int
        Target length.
    rng : numpy.random.Generator
        Offset source.

    Returns
    -------
    numpy.ndarray

    Example
    -------
    >>> float(fit_length(np.ones(3, np.float32), 5, np.random.default_rng(0)).sum())
    3.0
    """
    if len(audio) >= samples:
        return audio
    start = int(rng.integers(0, samples - len(audio) + 1))
    out = np.zeros(samples, np.float32)
    out[start : start + len(audio)] = audio
    return out
