"""Every row of ``tests/recipes/*.csv`` runs as SpeechBrain's recipe-test
runner (``tests/utils/recipe_tests.py`` of its repository) runs it: from the
repository root, ``python <Script_file> <Hparam_file> <test_debug_flags>
--device=cpu --output_folder=<folder>`` through the shell, then the files of
``test_debug_checks`` (``file_exists=[...]``) must exist in the output
folder. The data and models are the committed ``tests/samples/``; nothing is
downloaded.

The console output of every run (stdout and stderr, unbuffered, in the order
they were written) is checked too: the data preparation shows its progress
and what it kept, no warning that every run used to print for nothing
appears, and no log line lands on a progress-bar line.
"""

import os
import re
import subprocess
import sys

import pytest
from conftest import REPO
from test_upstream_checks import ROW_IDS, ROWS

SAMPLES = os.path.join(REPO, "tests", "samples")
# Warnings every run used to print although nothing was wrong.
NOISE = (
    "torchvision is not available",
    "CategoricalEncoder.expect_len was never called",
    "Load called, but CategoricalEncoder is not empty",
)
BAR = re.compile(r"\d+%\|")


def run_row(row, output_folder):
    """Runs one CSV row from the repository root; returns (rc, console)."""
    script = row["Script_file"].strip()
    cmd = (
        f"{sys.executable} {script} {row['Hparam_file'].strip()} "
        f"{row['test_debug_flags'].strip()} --device=cpu "
        f"--output_folder={output_folder}"
    )
    paths = [os.path.join(REPO, os.path.dirname(script)), REPO]
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(paths + [os.environ.get("PYTHONPATH", "")]),
        PYTHONUNBUFFERED="1",
        HF_HUB_OFFLINE="1",
        OMP_NUM_THREADS="1",
    )
    proc = subprocess.run(
        cmd,
        shell=True,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=600,
    )
    return proc.returncode, proc.stdout


def expected_files(check):
    """The paths of a ``file_exists=[...]`` check."""
    match = re.search(r"file_exists=\[(.*?)\]", check)
    assert match, f"no file_exists=[...] in {check!r}"
    return [f.strip() for f in match.group(1).split(",") if f.strip()]


def console_problems(console):
    """Noise warnings, and log text written onto a progress-bar line."""
    problems = [line for line in console.splitlines() if any(n in line for n in NOISE)]
    for segment in re.split(r"[\r\n]", console):
        bar = BAR.search(segment)
        # a tqdm line ends with its "[elapsed<left, rate]" (or "| n/N")
        if bar and not re.search(r"(\]|\d+/\d+)\s*$", segment):
            problems.append(f"text after a progress bar: {segment!r}")
    return problems


def test_console_check_detects_problems():
    clean = " 50%|#####     | 1/2 [00:01<00:01, 1.0it/s]\rmodule - fine\n"
    assert console_problems(clean) == []
    assert console_problems("torchvision is not available - cannot save\n")
    landed = " 50%|#####     | 1/2 [00:01<00:01, 1.0it/s]module - WARNING x\n"
    assert console_problems(landed)


def test_samples_are_small_and_complete():
    total = sum(
        os.path.getsize(os.path.join(d, f))
        for d, _, files in os.walk(SAMPLES)
        for f in files
    )
    assert total < 800 * 1024, f"tests/samples holds {total / 1024:.0f} KB"
    for name in ("esc50", "us8k", "gsc", "fsc", "librispeech"):
        assert os.path.isdir(os.path.join(SAMPLES, name)), name
    for name in ("tiny_ast", "tiny_whisper", "tiny_wavlm", "tiny_llm"):
        assert os.path.isfile(os.path.join(SAMPLES, name, "config.json")), name
    used = " ".join(row["test_debug_flags"] for _, row in ROWS)
    for name in os.listdir(SAMPLES):
        assert f"tests/samples/{name}" in used, f"tests/samples/{name} is unused"


@pytest.mark.slow
@pytest.mark.parametrize("name, row", ROWS, ids=ROW_IDS)
def test_recipe_row(name, row, tmp_path):
    out = tmp_path / "out"
    rc, console = run_row(row, out)
    assert rc == 0, f"{name}: {row['Hparam_file']} failed:\n{console[-6000:]}"
    missing = [
        f for f in expected_files(row["test_debug_checks"]) if not (out / f).exists()
    ]
    assert missing == [], f"{name}: {row['Hparam_file']} left no {missing}"
    assert console_problems(console) == []
    assert "checking audio: 100%|" in console  # the preparation's progress bar
    assert re.search(r"kept \d+ (audio files|utterances), skipped \d+", console)
