"""The second task of the real-weights LLM bridge: animal sounds answered as text.

``recipes/LibriSpeech/LLM_bridge`` mixes ASR with an optional classification
task given as manifests with the columns ``ID, wav, duration, class_name``
(``--cls_train_csv`` ...). This module writes those manifests from the
ESC-50-style animal-sound folder that :func:`tools.real_assets.datasets.
build_animal_sounds` builds (``meta/esc50.csv``, five folds): folds 1-3 train,
4 valid, 5 test by default. Every fold holds clips of the same ten recordings
(one per animal; crops, speeds and noise differ), so the task measures
robustness to those, not generalisation to new recordings.

Run ``python -m tools.real_assets.bridge_tasks [ASSET_DIR] [--out DIR]``
(default: ``<ASSET_DIR>/data/bridge_compact``) after ``python -m
tools.real_assets``: it writes the compact mixture of the real-weights bridge
runs (``benchmarks/bridge_real.py``), ``LibriSpeech/`` (every voice, the
first ``COMPACT_PER_VOICE`` phrases of each; links to the audio) and
``sounds/{train,valid,test}.csv`` (the first ``COMPACT_PER_CLASS`` clips of
each animal).

Authors
 * speechbrain-moe contributors 2026
"""

import argparse
import csv
import os
import sys

import soundfile as sf

from tools.real_assets.layout import RealAssets

DEFAULT_FOLDS = {"train": [1, 2, 3], "valid": [4], "test": [5]}
COLUMNS = ["ID", "wav", "duration", "class_name"]
# The compact mixture the command line writes (sized for a shared 2-core
# CPU): every voice of each split, fewer phrases per voice; fewer clips per
# animal.
COMPACT_PER_VOICE = {"train-clean-100": 8, "dev-clean": 4, "test-clean": 5}
COMPACT_PER_CLASS = {"train": 9, "valid": 2, "test": 4}


def sound_manifests(esc50_folder, out, folds=None, per_class=None):
    """Writes ``<out>/{train,valid,test}.csv`` (``ID, wav, duration,
    class_name``) from an ESC-50-layout folder.

    Arguments
    ---------
    esc50_folder : str
        Folder with ``meta/esc50.csv`` and ``audio/``.
    out : str
        Output folder (created).
    folds : dict, optional
        Split name -> list of folds (default ``DEFAULT_FOLDS``); every fold
        of the metadata must fall in at most one split.
    per_class : dict, optional
        Split name -> at most this many clips per class (the first ones of
        the metadata); default: all.

    Returns
    -------
    dict
        Split name -> manifest path.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> os.makedirs(os.path.join(root, "meta")); os.makedirs(os.path.join(root, "audio"))
    >>> rows = [("1-000-A-0.wav", 1, "dog"), ("4-001-A-1.wav", 4, "cat"),
    ...         ("5-002-A-0.wav", 5, "dog")]
    >>> with open(os.path.join(root, "meta", "esc50.csv"), "w") as f:
    ...     _ = f.write("filename,fold,target,category\\n")
    ...     for name, fold, cat in rows:
    ...         _ = f.write(f"{name},{fold},0,{cat}\\n")
    ...         sf.write(os.path.join(root, "audio", name), np.zeros(8000), 16000)
    >>> paths = sound_manifests(root, os.path.join(root, "manifests"))
    >>> sorted(paths)
    ['test', 'train', 'valid']
    >>> with open(paths["valid"]) as f:
    ...     row = next(csv.DictReader(f))
    >>> row["ID"], row["class_name"], row["duration"]
    ('4-001-A-1', 'cat', '0.5')
    """
    folds = DEFAULT_FOLDS if folds is None else folds
    seen = [f for fs in folds.values() for f in fs]
    if len(seen) != len(set(seen)):
        raise ValueError(
            f"folds {folds}: a fold is in two splits; give each fold to one split."
        )
    meta = os.path.join(esc50_folder, "meta", "esc50.csv")
    if not os.path.isfile(meta):
        raise FileNotFoundError(
            f"{meta} does not exist: build the animal sounds first with "
            "`python -m tools.real_assets --only animal_sounds`."
        )
    with open(meta, newline="") as fin:
        rows = list(csv.DictReader(fin))
    os.makedirs(out, exist_ok=True)
    paths = {}
    for split, split_folds in folds.items():
        path = os.path.join(out, f"{split}.csv")
        limit = (per_class or {}).get(split)
        kept = {}
        with open(path, "w", newline="") as fout:
            writer = csv.writer(fout)
            writer.writerow(COLUMNS)
            for row in rows:
                if int(row["fold"]) not in split_folds:
                    continue
                if limit is not None and kept.get(row["category"], 0) >= limit:
                    continue
                kept[row["category"]] = kept.get(row["category"], 0) + 1
                wav = os.path.join(esc50_folder, "audio", row["filename"])
                duration = round(sf.info(wav).duration, 3)
                name = os.path.splitext(row["filename"])[0]
                writer.writerow([name, wav, duration, row["category"]])
        paths[split] = path
    return paths


def librispeech_subset(source, out, per_voice):
    """A LibriSpeech-layout copy of ``source`` (links to its audio) keeping the
    first ``per_voice[split]`` utterances of every speaker of each split:
    every voice stays, only the number of phrases per voice shrinks.

    Arguments
    ---------
    source : str
        LibriSpeech-layout folder (``<split>/<spk>/<chap>/*.flac`` and
        ``<spk>-<chap>.trans.txt``).
    out : str
        Output folder (rebuilt).
    per_voice : dict
        Split name -> utterances kept per speaker (None: all).

    Returns
    -------
    dict
        Split name -> number of utterances kept.

    Example
    -------
    >>> import tempfile, numpy as np
    >>> root = tempfile.mkdtemp()
    >>> chapter = os.path.join(root, "src", "dev-clean", "7", "70")
    >>> os.makedirs(chapter)
    >>> lines = []
    >>> for i in range(3):
    ...     sf.write(os.path.join(chapter, f"7-70-000{i}.flac"), np.zeros(800), 16000)
    ...     lines.append(f"7-70-000{i} HELLO {i}")
    >>> _ = open(os.path.join(chapter, "7-70.trans.txt"), "w").write("\\n".join(lines))
    >>> librispeech_subset(os.path.join(root, "src"), os.path.join(root, "out"),
    ...                    {"dev-clean": 2})
    {'dev-clean': 2}
    >>> sorted(os.listdir(os.path.join(root, "out", "dev-clean", "7", "70")))
    ['7-70-0000.flac', '7-70-0001.flac', '7-70.trans.txt']
    """
    import shutil

    shutil.rmtree(out, ignore_errors=True)
    counts = {}
    for split, keep in per_voice.items():
        counts[split] = 0
        split_folder = os.path.join(source, split)
        if not os.path.isdir(split_folder):
            raise FileNotFoundError(
                f"{split_folder} does not exist: build the spoken phrases first with "
                "`python -m tools.real_assets --only librispeech`."
            )
        for speaker in sorted(os.listdir(split_folder)):
            speaker_folder = os.path.join(split_folder, speaker)
            if not os.path.isdir(speaker_folder):
                continue
            for chapter in sorted(os.listdir(speaker_folder)):
                src = os.path.join(speaker_folder, chapter)
                trans = os.path.join(src, f"{speaker}-{chapter}.trans.txt")
                with open(trans) as fin:
                    lines = [line for line in fin.read().splitlines() if line.strip()]
                lines = lines if keep is None else lines[:keep]
                dst = os.path.join(out, split, speaker, chapter)
                os.makedirs(dst)
                for line in lines:
                    utt = line.split()[0]
                    os.symlink(
                        os.path.abspath(os.path.join(src, f"{utt}.flac")),
                        os.path.join(dst, f"{utt}.flac"),
                    )
                with open(os.path.join(dst, os.path.basename(trans)), "w") as fout:
                    fout.write("\n".join(lines) + "\n")
                counts[split] += len(lines)
    return counts


def main(argv=None):
    """Command-line entry point.

    Arguments
    ---------
    argv : list of str, optional
        Arguments (default: ``sys.argv[1:]``).

    Returns
    -------
    int
        Exit status.
    """
    parser = argparse.ArgumentParser(
        prog="python -m tools.real_assets.bridge_tasks",
        description=__doc__.split("\n\n")[0],
    )
    parser.add_argument("root", nargs="?", default=None, help="asset folder")
    parser.add_argument("--out", default=None, help="output folder")
    args = parser.parse_args(argv)
    assets = RealAssets(args.root)
    out = args.out or assets.path("data", "bridge_compact")
    counts = librispeech_subset(
        assets.librispeech, os.path.join(out, "LibriSpeech"), COMPACT_PER_VOICE
    )
    for split, count in counts.items():
        print(f"LibriSpeech {split}: {count} utterances")
    sounds = sound_manifests(
        assets.animal_sounds,
        os.path.join(out, "sounds"),
        per_class=COMPACT_PER_CLASS,
    )
    for split, path in sounds.items():
        print(f"sounds {split}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
