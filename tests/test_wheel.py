"""The package as a user gets it: a wheel built from the repository, installed
with no checkout around it. A copied recipe folder trains ``soft_moa`` and
``moe_adapter`` from the method files shipped in the wheel, and its output
folder loads with the inference class."""

import glob
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The wheel, installed alone into a folder (dependencies come from the
    test's environment, the package itself only from the wheel)."""
    root = tmp_path_factory.mktemp("wheel")
    # A copy of the sources, as a clean clone has them (no build/ leftovers).
    source = root / "source"
    skip = (".git", ".venv", "build", "*.egg-info", "__pycache__", "demo_output")
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(*skip))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation"]
        + ["-q", "-w", str(root / "dist"), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = (root / "dist").glob("speechbrain_moe-*.whl")
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps"]
        + ["--target", str(site), str(wheel)],
        check=True,
        capture_output=True,
    )
    return {"root": root, "wheel": wheel, "site": site}


def test_wheel_ships_the_method_and_bridge_files(installed):
    names = set(zipfile.ZipFile(installed["wheel"]).namelist())
    packaged = [
        os.path.relpath(path, REPO)
        for path in glob.glob(
            os.path.join(REPO, "speechbrain_moe", "hparams", "*", "*.yaml")
        )
    ]
    # every method file of the checkout, the LoRA mixtures included
    for method in ("soft_moa", "dense_moa", "moe_adapter", "dense_lora", "moe_lora"):
        assert f"speechbrain_moe/hparams/petl/{method}.yaml" in packaged
    assert "speechbrain_moe/hparams/bridges/moe_adapter.yaml" in packaged
    assert sorted(set(packaged) - names) == []
    assert not any(n.startswith(("benchmarks/", "tests/", "tools/")) for n in names)
    assert not any("synthetic" in n for n in names)


@pytest.mark.slow
def test_copied_recipe_trains_and_loads_from_the_wheel(
    installed, tmp_path, tiny_ast_dir, synthetic_dataset
):
    recipe = tmp_path / "my_recipe"
    shutil.copytree(os.path.join(REPO, "recipes", "ESC50", "PETL"), recipe)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env.update(PYTHONPATH=str(installed["site"]), OMP_NUM_THREADS="1")
    where = [
        sys.executable,
        "-c",
        "import speechbrain_moe; print(speechbrain_moe.__file__)",
    ]
    found = subprocess.run(where, env=env, cwd=tmp_path, capture_output=True, text=True)
    assert found.stdout.startswith(str(installed["site"])), found.stdout + found.stderr
    for method in ("soft_moa", "moe_adapter"):
        out = tmp_path / method
        proc = subprocess.run(
            [
                sys.executable,
                "train.py",
                "hparams/ast.yaml",
                f"--data_folder={synthetic_dataset('esc50')}",
                f"--backbone_source={tiny_ast_dir}",
                f"--output_folder={out}",
                f"--petl_method={method}",
                "--petl_overrides={num_experts: 4}",
                "--max_frames=100",
                "--number_of_epochs=1",
                "--batch_size=4",
                "--device=cpu",
                "--noprogressbar",
            ],
            env=env,
            cwd=recipe,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
        load = (
            "from speechbrain_moe.inference import PETLAudioClassifier\n"
            "import csv, sys\n"
            f"model = PETLAudioClassifier.from_hparams(source={str(out)!r})\n"
            f"row = next(csv.DictReader(open({str(out / 'test.csv')!r})))\n"
            "print('LABEL', model.classify_file(row['wav'])[3][0])\n"
            "print('FROM', sys.modules['speechbrain_moe'].__file__)\n"
        )
        proc = subprocess.run(
            [sys.executable, "-c", load],
            env=env,
            cwd=tmp_path,
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        assert "LABEL " in proc.stdout
        assert f"FROM {installed['site']}" in proc.stdout
