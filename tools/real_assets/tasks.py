"""Harder speech tasks for the real-weights demo and accuracy suite.

Both are written in the Speech Commands v2 layout (one folder per class,
``<speaker>_nohash_<k>.wav``, ``validation_list.txt``, ``testing_list.txt``),
so ``recipes/Google-speech-commands/PETL`` trains on them unchanged:

- :func:`build_spoken_letters` (speech *content*): the 26 letter names
  (the E-set b c d e g p t v z differ in one consonant) said by espeak-ng
  voices, in white noise at a random SNR. Voices are split by espeak-ng
  variant (timbre), so every test voice is new; the builder checks that no
  speaker of the validation or test lists speaks in training. The real
  Asterisk speaker's recordings of the letters can be added to a split.
- :func:`build_voice_id` (speaker / *voice*): which of N espeak-ng variants
  (timbres) says a word, with the accent, rate and pitch drawn anew for every
  clip, and test words that are never said in training or validation.

Authors
 * speechbrain-moe contributors 2026
"""

import hashlib
import json
import os
import random
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from tools.real_assets.speech import (
    ACCENTS,
    SAMPLE_RATE,
    VARIANTS,
    Voice,
    add_noise,
    fit_length,
    make_voices,
    resample,
    split_variants,
    synthesise,
)

LETTERS = list("abcdefghijklmnopqrstuvwxyz")
E_SET = list("bcdegptvz")
# Voice-ID vocabulary: 60 everyday words; the split puts disjoint words in
# train / valid / test.
VOICE_ID_WORDS = (
    "apple river garden window yellow table seven morning music doctor "
    "number paper orange summer winter button pocket silver market letter "
    "coffee bottle rabbit monkey pencil camera rocket butter candle jacket "
    "turtle guitar planet ticket dinner forest engine island kitten ladder "
    "lemon magnet needle ocean parrot pepper puzzle robot salad shadow "
    "spider tiger tomato tunnel velvet wagon wizard zebra basket blanket"
).split()

LETTERS_DEFAULTS = {
    "letters": LETTERS,
    "voices": {"train": 24, "valid": 4, "test": 8},
    "repeats": 1,
    "snr_db": [0.0, 15.0],
    "pad_seconds": None,
    "real_speaker_split": None,
    "seed": 0,
}
VOICE_ID_DEFAULTS = {
    "speakers": 12,
    "words": {"train": 24, "valid": 6, "test": 12},
    "snr_db": [10.0, 30.0],
    "seed": 0,
}
WORKERS = max(1, min(4, os.cpu_count() or 1))


def speaker_id(name):
    """An 8-hex-digit speaker id for a voice name (as in Speech Commands).

    Arguments
    ---------
    name : str
        Voice name.

    Returns
    -------
    str

    Example
    -------
    >>> speaker_id("en-us+f3-s160-p50")
    '2e74c7c1'
    """
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def _draw_snr(snr_db, rng):
    """``None``, a fixed SNR, or one drawn uniformly from ``[low, high]``."""
    if snr_db is None or isinstance(snr_db, (int, float)):
        return snr_db
    return float(rng.uniform(*snr_db))


def _clip_job(path, text, voice, snr_db, seed, pad_to, source=None):
    """A callable writing one clip (synthesised, or decoded from ``source``)."""

    def run():
        rng = np.random.default_rng(seed)
        if source is None:
            audio = synthesise(text, voice)
        else:
            with open(source, "rb") as fin:
                audio = resample(fin.read(), SAMPLE_RATE, input_type="wav")
        if pad_to:
            audio = fit_length(audio, pad_to, rng)
        audio = add_noise(audio, _draw_snr(snr_db, rng), rng)
        sf.write(path, audio, SAMPLE_RATE, subtype="PCM_16")

    return run


def _run_jobs(jobs):
    with ThreadPoolExecutor(WORKERS) as pool:
        list(pool.map(lambda job: job(), jobs))


def _write_lists(out, lists):
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        with open(os.path.join(out, name), "w") as fout:
            fout.write("".join(f"{rel}\n" for rel in sorted(lists[split])))


def check_unseen_speakers(lists):
    """Raises ``ValueError`` when a validation or test speaker also speaks in training.

    Arguments
    ---------
    lists : dict
        Split -> relative paths ``<class>/<speaker>_nohash_<k>.wav``.

    Example
    -------
    >>> check_unseen_speakers({"train": ["a/s1_nohash_0.wav"],
    ...                        "valid": [], "test": ["a/s2_nohash_0.wav"]})
    >>> check_unseen_speakers({"train": ["a/s1_nohash_0.wav"],
    ...                        "valid": [], "test": ["b/s1_nohash_0.wav"]})
    Traceback (most recent call last):
    ...
    ValueError: speakers ['s1'] of the test split also speak in training: the split leaks voices; give every split its own voices (split_variants).
    """
    speakers = {
        split: {os.path.basename(rel).split("_nohash_")[0] for rel in rels}
        for split, rels in lists.items()
    }
    for split in ("valid", "test"):
        shared = sorted(speakers[split] & speakers["train"])
        if shared:
            raise ValueError(
                f"speakers {shared} of the {split} split also speak in training: "
                "the split leaks voices; give every split its own voices "
                "(split_variants)."
            )


def asterisk_letters(sounds_root):
    """Real recordings of the letter names by the Asterisk speaker.

    Arguments
    ---------
    sounds_root : str
        One Asterisk voice folder (holding ``letters/``).

    Returns
    -------
    dict
        Letter -> WAV path (only those that exist).

    Example
    -------
    >>> asterisk_letters("/nonexistent")
    {}
    """
    out = {}
    for letter in LETTERS:
        path = os.path.join(sounds_root, "letters", f"{letter}.wav")
        if os.path.isfile(path):
            out[letter] = path
    return out


def build_spoken_letters(out, params, asterisk_root=None):
    """Spoken letter names by unseen espeak-ng voices, in noise (GSC layout).

    Arguments
    ---------
    out : str
        Output folder.
    params : dict
        ``letters`` (class folders; espeak-ng says a single letter by its
        name), ``voices`` (split -> count; variants disjoint across splits),
        ``repeats`` (clips per voice and letter), ``snr_db`` (``None``, a
        number, or ``[low, high]`` drawn per clip), ``pad_seconds`` (pad
        shorter clips with silence at a random offset; ``None`` keeps each
        clip's own length), ``real_speaker_split`` (where the Asterisk
        recordings go; ``None`` leaves them out), ``seed``.
    asterisk_root : str, optional
        The Asterisk English voice folder (for ``real_speaker_split``).

    Returns
    -------
    dict
        Summary: clips per split, voices and speaker ids per split.

    Example
    -------
    >>> import tempfile
    >>> p = dict(LETTERS_DEFAULTS, letters=["b", "d"],
    ...          voices={"train": 2, "valid": 1, "test": 1})
    >>> build_spoken_letters(tempfile.mkdtemp(), p)["clips"]  # doctest: +SKIP
    {'train': 4, 'valid': 2, 'test': 2}
    """
    parts = split_variants(dict(params["voices"]), seed=params["seed"])
    voices = {
        split: make_voices(parts[split], count, seed=params["seed"] + i)
        for i, (split, count) in enumerate(params["voices"].items())
    }
    rng = np.random.default_rng(params["seed"])
    pad = int(params["pad_seconds"] * SAMPLE_RATE) if params["pad_seconds"] else None
    lists = {"train": [], "valid": [], "test": []}
    jobs = []
    for letter in params["letters"]:
        os.makedirs(os.path.join(out, letter), exist_ok=True)
    for split, split_voices in voices.items():
        for voice in split_voices:
            speaker = speaker_id(voice.name)
            for letter in params["letters"]:
                for k in range(params["repeats"]):
                    rel = f"{letter}/{speaker}_nohash_{k}.wav"
                    lists[split].append(rel)
                    seed = int(rng.integers(2**31))
                    path = os.path.join(out, rel)
                    jobs.append(
                        _clip_job(path, letter, voice, params["snr_db"], seed, pad)
                    )
    real_split = params["real_speaker_split"]
    real = asterisk_letters(asterisk_root) if (asterisk_root and real_split) else {}
    for letter in params["letters"]:
        if letter in real:
            rel = f"{letter}/asterisk_nohash_0.wav"
            lists[real_split].append(rel)
            seed = int(rng.integers(2**31))
            path = os.path.join(out, rel)
            jobs.append(
                _clip_job(path, letter, None, params["snr_db"], seed, pad, real[letter])
            )
    check_unseen_speakers(lists)
    _run_jobs(jobs)
    _write_lists(out, lists)
    summary = {
        "task": "spoken letters",
        "clips": {split: len(rels) for split, rels in lists.items()},
        "voices": {s: [v.name for v in vs] for s, vs in voices.items()},
        "speaker_ids": {
            s: [speaker_id(v.name) for v in vs] for s, vs in voices.items()
        },
        "real_speaker": {"split": real_split, "letters": sorted(real)},
    }
    with open(os.path.join(out, "voices.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    return summary


def build_voice_id(out, params):
    """Which espeak-ng voice variant says a word (GSC layout, one folder per voice).

    Every clip draws its accent, speaking rate and pitch anew, so only the
    variant's timbre identifies the class; the words are split into
    disjoint train / valid / test sets (the file prefix is the word, so the
    builder's unseen-"speaker" check means unseen words here).

    Arguments
    ---------
    out : str
        Output folder.
    params : dict
        ``speakers`` (number of variants = classes), ``words`` (split ->
        number of words), ``snr_db`` (``None``, a number or ``[low, high]``),
        ``seed``.

    Returns
    -------
    dict
        Summary: clips per split, the variants, the words per split.

    Example
    -------
    >>> import tempfile
    >>> p = dict(VOICE_ID_DEFAULTS, speakers=2, words={"train": 2, "valid": 1, "test": 1})
    >>> build_voice_id(tempfile.mkdtemp(), p)["clips"]  # doctest: +SKIP
    {'train': 4, 'valid': 2, 'test': 2}
    """
    pyrng = random.Random(params["seed"])
    variants = pyrng.sample(VARIANTS, params["speakers"])
    words = list(VOICE_ID_WORDS)
    pyrng.shuffle(words)
    if sum(params["words"].values()) > len(words):
        raise ValueError(
            f"{sum(params['words'].values())} words requested ({params['words']}) "
            f"but the vocabulary has {len(words)}; lower the word counts."
        )
    split_words, start = {}, 0
    for split, count in params["words"].items():
        split_words[split] = words[start : start + count]
        start += count
    rng = np.random.default_rng(params["seed"])
    lists = {"train": [], "valid": [], "test": []}
    jobs = []
    for variant in variants:
        os.makedirs(os.path.join(out, variant), exist_ok=True)
        for split, chosen in split_words.items():
            for word in chosen:
                voice = Voice(
                    pyrng.choice(ACCENTS),
                    variant,
                    pyrng.randint(130, 190),
                    pyrng.randint(25, 75),
                )
                rel = f"{variant}/{word}_nohash_0.wav"
                lists[split].append(rel)
                seed = int(rng.integers(2**31))
                path = os.path.join(out, rel)
                jobs.append(_clip_job(path, word, voice, params["snr_db"], seed, None))
    check_unseen_speakers(lists)  # the prefix is the word: unseen words
    _run_jobs(jobs)
    _write_lists(out, lists)
    summary = {
        "task": "voice identification",
        "clips": {split: len(rels) for split, rels in lists.items()},
        "variants": variants,
        "words": split_words,
    }
    with open(os.path.join(out, "voices.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    return summary
