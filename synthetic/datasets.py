"""Tiny classification data sets in the official layouts of ESC-50,
UrbanSound8K, Speech Commands v2 and Fluent Speech Commands.

Every clip of class ``c`` is a tone at a class-specific frequency (with its
second harmonic, a random phase, ±3 % frequency jitter, a random gain) plus
white noise, so that a model can learn the classes from a few examples while
nothing is trivially identical.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import os
import uuid

import numpy as np
import soundfile as sf

ESC50_CLASSES = ["dog", "rooster", "pig", "cow", "frog", "cat", "hen", "insects"]
US8K_CLASSES = [
    "air_conditioner",
    "car_horn",
    "children_playing",
    "dog_bark",
    "drilling",
    "engine_idling",
]
GSC_WORDS = ["yes", "no", "up", "down", "left", "right"]
FSC_INTENTS = [
    ("activate", "lights", "kitchen"),
    ("deactivate", "lights", "none"),
    ("increase", "volume", "none"),
    ("change language", "Chinese", "none"),
    ("bring", "newspaper", "none"),
    ("decrease", "heat", "bedroom"),
]


def class_tone(label, num_classes, sample_rate, seconds, rng):
    """One clip of class ``label``: a jittered tone + harmonic + noise.

    Arguments
    ---------
    label : int
        Class index.
    num_classes : int
        Number of classes (spreads the frequencies over 300 Hz - 4 kHz).
    sample_rate : int
        Sample rate.
    seconds : float
        Duration.
    rng : numpy.random.Generator
        Random source.

    Returns
    -------
    numpy.ndarray
        ``[samples]`` float32 in [-1, 1].

    Example
    -------
    >>> clip = class_tone(1, 4, 16000, 0.5, np.random.default_rng(0))
    >>> clip.shape, clip.dtype, bool(np.abs(clip).max() <= 1)
    ((8000,), dtype('float32'), True)
    """
    freqs = np.geomspace(300.0, 4000.0, max(num_classes, 2))
    freq = freqs[label] * rng.uniform(0.97, 1.03)
    t = np.arange(int(round(seconds * sample_rate))) / sample_rate
    phase = rng.uniform(0, 2 * np.pi)
    tone = np.sin(2 * np.pi * freq * t + phase) + 0.5 * np.sin(4 * np.pi * freq * t)
    gain = rng.uniform(0.2, 0.5)
    clip = gain * tone / 1.5 + rng.normal(0.0, 0.05, size=t.shape)
    return np.clip(clip, -1.0, 1.0).astype(np.float32)


def _check_classes(num_classes, available, kind):
    """Raises a clear error for an unsupported number of classes."""
    if not 2 <= num_classes <= len(available):
        raise ValueError(
            f"{kind}: num_classes must be between 2 and {len(available)}, got {num_classes}."
        )


def make_esc50(
    out_dir,
    seed=0,
    num_classes=5,
    clips_per_class_per_fold=2,
    seconds=1.0,
    sample_rate=44100,
):
    """Mini ESC-50: ``meta/esc50.csv`` + ``audio/*.wav`` (44.1 kHz), 5 folds.

    Arguments
    ---------
    num_classes : int
        Classes (the first ESC-50 categories).
    clips_per_class_per_fold : int
        Clips of each class in each fold.
    seconds : float
        Clip duration (the real corpus has 5 s).
    sample_rate : int
        Sample rate (the real corpus: 44100).

    Example
    -------
    >>> import tempfile
    >>> folder = make_esc50(tempfile.mkdtemp(), num_classes=2,
    ...                     clips_per_class_per_fold=1, seconds=0.1)
    >>> len(os.listdir(os.path.join(folder, "audio")))
    10
    """
    _check_classes(num_classes, ESC50_CLASSES, "esc50")
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(out_dir, "meta"), exist_ok=True)
    os.makedirs(os.path.join(out_dir, "audio"), exist_ok=True)
    rows = []
    src = 100000
    for fold in range(1, 6):
        for target in range(num_classes):
            for take in range(clips_per_class_per_fold):
                src += 1
                name = f"{fold}-{src}-{'ABCDEFGH'[take % 8]}-{target}.wav"
                clip = class_tone(target, num_classes, sample_rate, seconds, rng)
                sf.write(os.path.join(out_dir, "audio", name), clip, sample_rate)
                rows.append(
                    [
                        name,
                        fold,
                        target,
                        ESC50_CLASSES[target],
                        "True",
                        src,
                        "ABCDEFGH"[take % 8],
                    ]
                )
    with open(os.path.join(out_dir, "meta", "esc50.csv"), "w", newline="") as fout:
        writer = csv.writer(fout)
        writer.writerow(
            ["filename", "fold", "target", "category", "esc10", "src_file", "take"]
        )
        writer.writerows(rows)
    return out_dir


def make_us8k(out_dir, seed=0, num_classes=4, clips_per_class_per_fold=1, seconds=1.0):
    """Mini UrbanSound8K: ``metadata/UrbanSound8K.csv`` + ``audio/fold1..10``.

    Sample rates alternate between 22.05 and 44.1 kHz (the real corpus mixes
    rates too), so the recipe's resampling is exercised.

    Arguments
    ---------
    num_classes : int
        Classes (the first UrbanSound8K classes).
    clips_per_class_per_fold : int
        Clips of each class in each fold.
    seconds : float
        Clip duration.

    Example
    -------
    >>> import tempfile
    >>> folder = make_us8k(tempfile.mkdtemp(), num_classes=2, seconds=0.1)
    >>> sorted(os.listdir(os.path.join(folder, "audio")))[:3]
    ['fold1', 'fold10', 'fold2']
    """
    _check_classes(num_classes, US8K_CLASSES, "us8k")
    rng = np.random.default_rng(seed)
    rows = []
    fs_id = 1000
    for fold in range(1, 11):
        folder = os.path.join(out_dir, "audio", f"fold{fold}")
        os.makedirs(folder, exist_ok=True)
        for class_id in range(num_classes):
            for k in range(clips_per_class_per_fold):
                fs_id += 1
                rate = 22050 if (fs_id % 2) else 44100
                name = f"{fs_id}-{class_id}-0-{k}.wav"
                clip = class_tone(class_id, num_classes, rate, seconds, rng)
                sf.write(os.path.join(folder, name), clip, rate)
                rows.append(
                    [
                        name,
                        fs_id,
                        0.0,
                        seconds,
                        1,
                        fold,
                        class_id,
                        US8K_CLASSES[class_id],
                    ]
                )
    os.makedirs(os.path.join(out_dir, "metadata"), exist_ok=True)
    with open(
        os.path.join(out_dir, "metadata", "UrbanSound8K.csv"), "w", newline=""
    ) as fout:
        writer = csv.writer(fout)
        writer.writerow(
            [
                "slice_file_name",
                "fsID",
                "start",
                "end",
                "salience",
                "fold",
                "classID",
                "class",
            ]
        )
        writer.writerows(rows)
    return out_dir


def make_gsc(out_dir, seed=0, num_classes=4, clips_per_word=8, seconds=1.0):
    """Mini Speech Commands v2: one folder per word, ``validation_list.txt``,
    ``testing_list.txt`` (1/4 of each word's clips each) and a
    ``_background_noise_`` folder (not a class).

    Arguments
    ---------
    num_classes : int
        Words.
    clips_per_word : int
        Clips per word (at least 4).
    seconds : float
        Clip duration (the real corpus: 1 s at 16 kHz).

    Example
    -------
    >>> import tempfile
    >>> folder = make_gsc(tempfile.mkdtemp(), num_classes=2, clips_per_word=4, seconds=0.1)
    >>> sorted(os.listdir(folder))
    ['_background_noise_', 'no', 'testing_list.txt', 'validation_list.txt', 'yes']
    """
    _check_classes(num_classes, GSC_WORDS, "gsc")
    if clips_per_word < 4:
        raise ValueError(
            f"gsc: clips_per_word must be at least 4, got {clips_per_word}."
        )
    rng = np.random.default_rng(seed)
    valid, test = [], []
    quarter = clips_per_word // 4
    for label, word in enumerate(GSC_WORDS[:num_classes]):
        os.makedirs(os.path.join(out_dir, word), exist_ok=True)
        for k in range(clips_per_word):
            name = f"{word}/{k:08x}_nohash_0.wav"
            clip = class_tone(label, num_classes, 16000, seconds, rng)
            sf.write(os.path.join(out_dir, name), clip, 16000)
            if k < quarter:
                valid.append(name)
            elif k < 2 * quarter:
                test.append(name)
    noise = os.path.join(out_dir, "_background_noise_")
    os.makedirs(noise, exist_ok=True)
    sf.write(
        os.path.join(noise, "white_noise.wav"),
        rng.normal(0, 0.1, 16000).astype(np.float32),
        16000,
    )
    for name, items in (("validation_list.txt", valid), ("testing_list.txt", test)):
        with open(os.path.join(out_dir, name), "w") as fout:
            fout.write("\n".join(items) + "\n")
    return out_dir


def make_fsc(out_dir, seed=0, num_classes=4, clips_per_intent=(6, 2, 2), seconds=1.0):
    """Mini Fluent Speech Commands: ``data/{train,valid,test}_data.csv`` and
    ``wavs/speakers/<speaker>/<uuid>.wav`` (16 kHz).

    Arguments
    ---------
    num_classes : int
        Intents (action, object, location triples).
    clips_per_intent : tuple of int
        Clips of each intent in train, valid and test.
    seconds : float
        Clip duration.

    Example
    -------
    >>> import tempfile
    >>> folder = make_fsc(tempfile.mkdtemp(), num_classes=2, seconds=0.1)
    >>> sorted(os.listdir(os.path.join(folder, "data")))
    ['test_data.csv', 'train_data.csv', 'valid_data.csv']
    """
    _check_classes(num_classes, FSC_INTENTS, "fsc")
    rng = np.random.default_rng(seed)
    index = 0
    for split, count in zip(("train", "valid", "test"), clips_per_intent):
        speaker = f"{split}Spk{seed}"
        folder = os.path.join(out_dir, "wavs", "speakers", speaker)
        os.makedirs(folder, exist_ok=True)
        rows = []
        for label, (action, obj, location) in enumerate(FSC_INTENTS[:num_classes]):
            for _ in range(count):
                name = str(uuid.UUID(int=int(rng.integers(0, 2**63)) * 2 + 1))
                path = f"wavs/speakers/{speaker}/{name}.wav"
                clip = class_tone(label, num_classes, 16000, seconds, rng)
                sf.write(os.path.join(out_dir, path), clip, 16000)
                text = f"{action} the {obj}" + (
                    "" if location == "none" else f" in the {location}"
                )
                rows.append([index, path, speaker, text, action, obj, location])
                index += 1
        os.makedirs(os.path.join(out_dir, "data"), exist_ok=True)
        with open(
            os.path.join(out_dir, "data", f"{split}_data.csv"), "w", newline=""
        ) as fout:
            writer = csv.writer(fout)
            writer.writerow(
                [
                    "",
                    "path",
                    "speakerId",
                    "transcription",
                    "action",
                    "object",
                    "location",
                ]
            )
            writer.writerows(rows)
    return out_dir
