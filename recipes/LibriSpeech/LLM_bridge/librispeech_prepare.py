"""Data preparation for LibriSpeech (official layout) -> CSV manifests.

Layout: ``<data_folder>/<split>/<speaker>/<chapter>/<spk>-<chap>-<utt>.flac``
with one ``<spk>-<chap>.trans.txt`` per chapter. One CSV per split is written
to ``save_folder`` with the columns ``ID, duration, wav, spk_id, wrd``.

Preparation is skipped only when all CSVs exist for the same options
(``data_folder``, ``splits``, ``select_n_sentences``) and the same
transcripts (size and modification time of every ``*.trans.txt``), as
recorded in ``<save_folder>/prepare_options.json``: a smoke run
(``select_n_sentences: 100``) followed by a full run rebuilds the CSVs, and
the log says what changed.

Every utterance left out is counted and named in the log: a transcript line
without words (or without an id), an audio file that is missing, unreadable,
empty or shorter than ``speechbrain_moe.manifests.MIN_SECONDS`` (25 ms), an
audio file without a transcript line. Each split shows a progress bar while
its audio is checked.

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import json
import logging
import os

import soundfile as sf
from tqdm import tqdm

from speechbrain_moe.manifests import (
    MIN_SECONDS,
    OPTIONS_FILE,
    already_prepared,
    input_signature,
)

logger = logging.getLogger(__name__)
HEADER = ["ID", "duration", "wav", "spk_id", "wrd"]


def prepare_librispeech(
    data_folder, save_folder, splits, select_n_sentences=None, skip_prep=False
):
    """Writes ``<save_folder>/<split>.csv`` for every split.

    Arguments
    ---------
    data_folder : str
        Folder holding the split folders (``.../LibriSpeech``).
    save_folder : str
        Where the CSVs go.
    splits : list of str
        Split names, e.g. ``["train-clean-100", "dev-clean", "test-clean"]``.
    select_n_sentences : int, optional
        Keep only the first n utterances of each split (sorted by ID).
    skip_prep : bool
        Do nothing.

    Returns
    -------
    dict
        Split -> CSV path.

    Example
    -------
    >>> import tempfile
    >>> from synthetic.librispeech import make_librispeech
    >>> root = make_librispeech(tempfile.mkdtemp(), splits={"dev-clean": 2})
    >>> out = tempfile.mkdtemp()
    >>> csvs = prepare_librispeech(root, out, ["dev-clean"])
    >>> open(csvs["dev-clean"]).readline().strip()
    'ID,duration,wav,spk_id,wrd'
    """
    csvs = {split: os.path.join(save_folder, f"{split}.csv") for split in splits}
    if skip_prep:
        return csvs
    if select_n_sentences is not None and (
        isinstance(select_n_sentences, bool)
        or not isinstance(select_n_sentences, int)
        or select_n_sentences < 1
    ):
        raise ValueError(
            "select_n_sentences must be null (every utterance) or an integer >= 1, "
            f"got {select_n_sentences!r}. Pass --select_n_sentences=100 (a smoke "
            "run) or leave it null."
        )
    if not os.path.isdir(data_folder):
        raise FileNotFoundError(
            f"LibriSpeech data_folder {data_folder!r} does not exist. Set "
            "--data_folder to the folder holding train-clean-100/, dev-clean/, ... "
            "(download from https://www.openslr.org/12)."
        )
    for split in splits:
        split_folder = os.path.join(data_folder, split)
        if not os.path.isdir(split_folder):
            raise FileNotFoundError(
                f"Split folder {split_folder!r} is missing. Download and extract "
                f"{split} into {data_folder!r}, or remove it from the split lists."
            )
    options = {
        "data_folder": os.path.abspath(data_folder),
        "splits": list(splits),
        "select_n_sentences": select_n_sentences,
        "inputs": input_signature(
            sorted(
                os.path.join(root, name)
                for split in splits
                for root, _, files in os.walk(os.path.join(data_folder, split))
                for name in files
                if name.endswith(".trans.txt")
            )
        ),
    }
    done, why = already_prepared(save_folder, list(csvs.values()), options)
    if done:
        logger.info(
            "LibriSpeech manifests exist in %s for the same options and "
            "transcripts: skipping preparation.",
            save_folder,
        )
        return csvs
    if os.path.isfile(os.path.join(save_folder, OPTIONS_FILE)):
        logger.info("LibriSpeech manifests in %s rebuilt: %s.", save_folder, why)
    os.makedirs(save_folder, exist_ok=True)
    for split, path in csvs.items():
        split_folder = os.path.join(data_folder, split)
        rows = _split_rows(split_folder, f"LibriSpeech {split}")
        if select_n_sentences:
            rows = rows[:select_n_sentences]
        tmp = path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(HEADER)
            writer.writerows(rows)
        os.replace(tmp, path)
        logger.info("Wrote %s (%d utterances).", path, len(rows))
    with open(os.path.join(save_folder, OPTIONS_FILE), "w") as fout:
        json.dump(options, fout, indent=1, sort_keys=True)
    return csvs


def _split_rows(split_folder, label, min_seconds=MIN_SECONDS):
    """Reads every transcript of a split and checks its audio; every line or
    file left out is counted and named in one warning."""
    texts, skipped, audio, mentioned = {}, [], set(), set()
    for root, _, files in sorted(os.walk(split_folder)):
        audio.update(
            os.path.join(root, n[: -len(".flac")]) for n in files if n.endswith(".flac")
        )
        for name in sorted(files):
            if not name.endswith(".trans.txt"):
                continue
            trans = os.path.join(root, name)
            with open(trans, encoding="utf-8-sig") as f:
                for number, line in enumerate(f, start=1):
                    parts = line.strip().split(" ", 1)
                    if not line.strip():
                        continue  # a blank line holds no utterance
                    mentioned.add(os.path.join(root, parts[0]))
                    if len(parts) < 2 or not parts[1].strip():
                        skipped.append(f"  {trans}:{number}: no words for {parts[0]}")
                        continue
                    if parts[0] in texts:
                        skipped.append(f"  {trans}:{number}: {parts[0]} listed twice")
                        continue
                    texts[parts[0]] = (root, parts[1].strip())
    unlisted = sorted(audio - mentioned)
    skipped += [f"  {stem}.flac: no transcript line" for stem in unlisted]
    rows = []
    for utt_id in tqdm(sorted(texts), desc=f"{label}: checking audio", unit="file"):
        root, words = texts[utt_id]
        wav = os.path.join(root, utt_id + ".flac")
        problem = None
        try:
            info = sf.info(wav)
            duration = info.frames / info.samplerate
            if info.frames == 0:
                problem = "empty (no audio samples)"
            elif duration < min_seconds:
                problem = (
                    f"too short ({duration * 1000:.1f} ms; the minimum is "
                    f"{min_seconds} s)"
                )
        except Exception as err:  # noqa: BLE001 - any unreadable file is skipped
            problem = (
                "missing"
                if not os.path.isfile(wav)
                else f"unreadable ({type(err).__name__}: {err})"
            )
        if problem:
            skipped.append(f"  {wav}: {problem}")
            continue
        rows.append([utt_id, f"{duration:.3f}", wav, utt_id.split("-")[0], words])
    logger.info("%s: kept %d utterances, skipped %d.", label, len(rows), len(skipped))
    if skipped:
        logger.warning(
            "%s preparation skipped %d utterance(s) or line(s):\n%s",
            label,
            len(skipped),
            "\n".join(skipped),
        )
    return rows
