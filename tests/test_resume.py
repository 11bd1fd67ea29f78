"""Resume after a crash: a run killed twice with SIGKILL at random points and
restarted with the same command ends with the same weights, bit for bit, as a
run that was never interrupted (CPU, fixed seed, intra-epoch checkpoints).

Also, in-process: the random state (dropout) and the data loader position
are restored from an intra-epoch checkpoint; a checkpoint folder left
half-written by a killed save is ignored and set aside (never deleted).
"""

import os
import random
import signal
import subprocess
import time

import pytest
import speechbrain as sb
import torch
from conftest import PYTHON, REPO

from speechbrain_moe.brain import PETLClassifierBrain
from speechbrain_moe.checkpoints import Checkpointer

RECIPE = os.path.join(REPO, "recipes", "ESC50", "PETL")


def trained_tensors(save_folder, epoch):
    """Adapter, head and optimizer tensors of the end-of-epoch checkpoint."""
    for name in sorted(os.listdir(save_folder)):
        folder = os.path.join(save_folder, name)
        if not name.startswith("CKPT+"):
            continue
        with open(os.path.join(folder, "counter.ckpt")) as fin:
            if int(fin.read()) != epoch:
                continue
        with open(os.path.join(folder, "CKPT.yaml")) as fin:
            if "end-of-epoch: true" not in fin.read():
                continue
        return {
            part: torch.load(os.path.join(folder, f"{part}.ckpt"), weights_only=True)
            for part in ("backbone", "classifier", "optimizer")
        }
    raise AssertionError(
        f"no end-of-epoch checkpoint of epoch {epoch} in {save_folder}"
    )


def assert_equal_nested(a, b, where=""):
    """torch.equal on every tensor of two nested structures."""
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_equal_nested(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def latest_checkpoint_time(save_folder):
    """mtime of the newest complete checkpoint (0 when none)."""
    times = [0.0]
    if os.path.isdir(save_folder):
        for name in os.listdir(save_folder):
            meta = os.path.join(save_folder, name, "CKPT.yaml")
            if name.startswith("CKPT+") and os.path.isfile(meta):
                times.append(os.path.getmtime(meta))
    return max(times)


@pytest.mark.slow
def test_sigkill_and_resume_is_bit_exact(tmp_path, tiny_ast_dir):
    from synthetic import generate

    data = generate("esc50", str(tmp_path / "data"), num_classes=3, seconds=0.5)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")

    def command(out):
        return [
            PYTHON,
            os.path.join(RECIPE, "train.py"),
            os.path.join(RECIPE, "hparams", "ast.yaml"),
            f"--data_folder={data}",
            f"--backbone_source={tiny_ast_dir}",
            f"--output_folder={out}",
            "--n_classes=3",
            "--number_of_epochs=2",
            "--batch_size=2",
            "--max_frames=100",
            "--ckpt_interval_steps=1",
            "--device=cpu",
            "--noprogressbar",
        ]

    # the uninterrupted reference runs alongside the interrupted one
    reference = tmp_path / "reference"
    ref_proc = subprocess.Popen(
        command(reference), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )

    resumed = tmp_path / "resumed"
    save = str(resumed / "save")
    rng = random.Random(int(os.environ.get("RESUME_TEST_SEED", time.time_ns())))
    kills = []
    for _ in range(2):
        proc = subprocess.Popen(
            command(resumed),
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        started = time.time()
        # Wait for a checkpoint written by this process, then a random delay
        # (0-2 training steps): the kill lands anywhere, saves included.
        while latest_checkpoint_time(save) < started and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        assert proc.poll() is None, "the run ended before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        kills.append(time.time() - started)
    final = subprocess.run(command(resumed), env=env, capture_output=True, text=True)
    assert final.returncode == 0, final.stderr[-3000:]
    _, ref_err = ref_proc.communicate(timeout=300)
    assert ref_proc.returncode == 0, ref_err[-3000:]

    log = (resumed / "log.txt").read_text()
    assert log.count("Loading a checkpoint") >= 2, kills
    expected = trained_tensors(str(reference / "save"), epoch=2)
    got = trained_tensors(save, epoch=2)
    assert_equal_nested(expected, got)
    # the test results match too
    ref_log = (reference / "train_log.txt").read_text().splitlines()
    new_log = (resumed / "train_log.txt").read_text().splitlines()
    assert ref_log[-1] == new_log[-1]


# ---------------------------------------------------------------- in-process


class DropoutBackbone(torch.nn.Module):
    """A trainable toy backbone whose output depends on dropout."""

    output_size = 8

    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(16, 8)
        self.dropout = torch.nn.Dropout(0.5)

    def forward(self, wavs, wav_lens=None):
        return self.dropout(self.proj(wavs[:, :16]))


class Crash(Exception):
    """Stands for a killed process."""


def toy_run(folder, crash_at=None, epochs=2):
    """Trains the toy model; raises Crash after global step ``crash_at``."""
    torch.manual_seed(0)
    backbone = DropoutBackbone()
    classifier = torch.nn.Linear(8, 3)
    counter = sb.utils.epoch_loop.EpochCounter(epochs)
    checkpointer = Checkpointer(
        folder,
        recoverables={
            "backbone": backbone,
            "classifier": classifier,
            "counter": counter,
        },
    )
    data = {
        f"u{i}": {
            "sig": torch.randn(20, generator=torch.Generator().manual_seed(i)),
            "label_encoded": torch.tensor([i % 3]),
        }
        for i in range(10)
    }
    dataset = sb.dataio.dataset.DynamicItemDataset(data)
    dataset.set_output_keys(["id", "sig", "label_encoded"])
    seen = []

    class Brain(PETLClassifierBrain):
        """Records the batches and crashes on request."""

        def on_fit_batch_end(self, batch, outputs, loss, should_step):
            super().on_fit_batch_end(batch, outputs, loss, should_step)
            seen.append((counter.current, tuple(batch.id)))
            done = (counter.current - 1) * 5 + self.step
            if crash_at is not None and done == crash_at:
                self._save_intra_epoch_ckpt()
                raise Crash

    brain = Brain(
        {"backbone": backbone, "classifier": classifier},
        lambda p: torch.optim.AdamW(p, lr=0.05),
        hparams={"epoch_counter": counter},
        run_opts={"device": "cpu", "noprogressbar": True},
        checkpointer=checkpointer,
    )
    try:
        brain.fit(
            counter,
            dataset,
            dataset,
            train_loader_kwargs={"batch_size": 2, "shuffle": True},
            valid_loader_kwargs={"batch_size": 5},
        )
    except Crash:
        return None, seen
    return {**backbone.state_dict(), **classifier.state_dict()}, seen


@pytest.mark.parametrize("crash_at", [3, 5, 7])
def test_resume_restores_dropout_state_and_loader_position(tmp_path, crash_at):
    expected, order = toy_run(tmp_path / "a")
    assert toy_run(tmp_path / "b", crash_at=crash_at)[0] is None
    got, resumed_order = toy_run(tmp_path / "b")
    assert_equal_nested(expected, got)
    # no batch seen twice or skipped: the resumed run continues the order
    assert resumed_order == order[crash_at:]


def test_half_written_checkpoint_is_ignored_and_set_aside(tmp_path):
    model = torch.nn.Linear(2, 2)
    ckpt = Checkpointer(tmp_path, recoverables={"model": model})
    good = ckpt.save_checkpoint()
    # a save killed after SpeechBrain wrote the meta file, before the manifest
    broken = tmp_path / "CKPT+zzz-killed"
    broken.mkdir()
    (broken / "model.ckpt").write_bytes(b"truncated")
    (broken / "CKPT.yaml").write_text("end-of-epoch: true\n")
    assert [c.path for c in ckpt.list_checkpoints()] == [good.path]
    assert ckpt.recover_if_possible().path == good.path
    # never deleted: moved aside with its files
    assert not broken.exists()
    assert (tmp_path / "set_aside" / broken.name / "model.ckpt").read_bytes() == (
        b"truncated"
    )
