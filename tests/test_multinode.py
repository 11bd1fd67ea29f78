"""Two "nodes" on this machine: two ``torchrun --nnodes=2 --nproc_per_node=1
--node_rank=R --rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:PORT`` launches
(loopback only, a free port), one process each.

Separate filesystems with the same paths, as on a cluster where every node
has its own disk: each launch runs in its own mount namespace (``unshare
-Urm``, no privileges needed) where one folder, ``<tmp>/node``, shows that
node's own folder (``node0/`` or ``node1/``, bind-mounted). Each node folder
holds its own copy of the data (``data/esc50``) and of the backbone
(``models/tiny_ast``); both launches get the *same* command line, run in
``<tmp>/node`` (``--data_folder=data/esc50 --backbone_source=models/tiny_ast``,
output folder ``results/<method>``). So the recipe sees what it sees on a real
cluster: the same absolute paths on every node, other storage behind them;
nothing one node writes is visible to the other. Without mount namespaces
(``unshare`` missing or not permitted) the tests are skipped, saying so.

Checked: data preparation and the inference-folder export run once per node;
every node holds the same complete checkpoints (listed, rotated and deleted
alike, on both); two epochs, then a second launch resumes from the
checkpoint; both nodes end with the same trained weights and the same
checkpoint tensors. Every launch has a deadline: a hang (one rank in a
broadcast, the other in a barrier) ends with both process groups killed.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from conftest import PYTHON, REPO

RECIPE = os.path.join(REPO, "recipes", "ESC50", "PETL")
ENV = dict(os.environ, OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo")
TIMEOUT = 900  # seconds per launch (both nodes), then both are killed
GRACE = 60  # seconds the other node gets to exit once one has failed


def free_port():
    """A TCP port free on the loopback interface (for the rendezvous)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(node_rank, port):
    """``torchrun`` for node ``node_rank`` of two, one process, loopback."""
    return [
        PYTHON,
        "-m",
        "torch.distributed.run",
        "--nnodes=2",
        "--nproc_per_node=1",
        f"--node_rank={node_rank}",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint=127.0.0.1:{port}",
        f"--rdzv_id=multinode-{port}",
        "--local_addr=127.0.0.1",
        "--max_restarts=0",
    ]


# Inside a private mount namespace: show node folder $1 at $2, run the rest there.
IN_NODE = 'mount --bind "$1" "$2" && cd "$2" && shift 2 && exec "$@"'


def in_node(root, mountpoint):
    """The command prefix that runs a command with ``mountpoint`` showing
    ``root`` (its own mount namespace), in ``mountpoint``."""
    return ["unshare", "-Urm", "sh", "-c", IN_NODE, "sh", str(root), str(mountpoint)]


def require_mount_namespaces(tmp_path):
    """Skips the test where ``unshare -Urm`` cannot bind-mount a folder."""
    source, target = tmp_path / "probe_source", tmp_path / "probe_target"
    source.mkdir()
    target.mkdir()
    (source / "seen").touch()
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux) to give each node its own storage")
    probe = subprocess.run(
        in_node(source, target) + ["test", "-f", "seen"],
        capture_output=True,
        timeout=60,
    )
    if probe.returncode != 0:
        pytest.skip(
            "mount namespaces are not permitted here (unshare -Urm failed: "
            f"{probe.stderr.decode(errors='replace').strip()}); each node needs "
            "its own storage behind the same path"
        )


def stop(proc):
    """Kills a launch's whole process group (torchrun and its worker)."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait()


def launch(roots, script_args, timeout=TIMEOUT):
    """Starts one launch per node root with the same command line, each in
    ``<tmp>/node`` showing its root; returns each node's console output.
    Fails (after killing every process group) if a node fails or the
    deadline passes."""
    port = free_port()
    mountpoint = roots[0].parent / "node"
    mountpoint.mkdir(exist_ok=True)
    procs, logs = [], []
    for node_rank, root in enumerate(roots):
        log = open(root / f"launch{len(list(root.glob('launch*.txt')))}.txt", "w+")
        logs.append(log)
        procs.append(
            subprocess.Popen(
                in_node(root, mountpoint) + torchrun(node_rank, port) + script_args,
                env=ENV,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        )
    deadline = time.monotonic() + timeout
    failed_at = None
    try:
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            if failed_at is None and any(p.poll() not in (None, 0) for p in procs):
                failed_at = now
            if now > deadline or (failed_at is not None and now > failed_at + GRACE):
                break
            time.sleep(1)
    finally:
        for proc in procs:
            stop(proc)
    outputs = []
    for log in logs:
        log.seek(0)
        outputs.append(log.read())
        log.close()
    codes = [p.returncode for p in procs]
    report = "\n".join(
        f"===== node {r} (exit {c}) =====\n{out[-5000:]}"
        for r, (c, out) in enumerate(zip(codes, outputs))
    )
    assert codes == [0, 0], f"hung or failed (deadline {timeout} s):\n{report}"
    return outputs


def node_roots(tmp_path, sources):
    """``node0/`` and ``node1/``, each with its own copy of ``sources``
    (relative path -> folder to copy)."""
    roots = []
    for node in range(2):
        root = tmp_path / f"node{node}"
        root.mkdir()
        for relative, source in sources.items():
            shutil.copytree(source, root / relative)
        roots.append(root)
    return roots


def recipe_args(*args):
    """The ESC-50 recipe (soft MoA) through ``tests/recipe_runner.py``, with
    relative paths only, so each node resolves them in its own folder."""
    return [
        os.path.join(REPO, "tests", "recipe_runner.py"),
        RECIPE,
        os.path.join(RECIPE, "hparams", "ast.yaml"),
        "results",
        "soft_moa",
        "--data_folder=data/esc50",
        "--backbone_source=models/tiny_ast",
        "--max_frames=100",
        "--batch_size=2",
        "--test_batch_size=4",
        "--petl_overrides={num_experts: 4}",
        "--device=cpu",
        "--distributed_backend=gloo",
        "--noprogressbar",
        *args,
    ]


def checkpoint_folders(root):
    """Names of the ``CKPT+`` folders in a node's checkpoint folder."""
    return sorted(p.name for p in (root / "results/soft_moa/save").glob("CKPT+*"))


def assert_same_checkpoints(roots):
    """Both nodes hold the same complete checkpoints with equal tensors."""
    from speechbrain_moe.checkpoints import _problem

    names = [checkpoint_folders(root) for root in roots]
    assert names[0] == names[1] and names[0], names
    for name in names[0]:
        folders = [root / "results/soft_moa/save" / name for root in roots]
        for folder in folders:
            assert _problem(folder, verify_checksums=True) is None, folder
        files = [sorted(p.name for p in f.glob("*.ckpt")) for f in folders]
        assert files[0] == files[1], files
        for file in files[0]:
            first, second = (read_saved(f / file) for f in folders)
            assert_equal(first, second, f"{name}/{file}")


def read_saved(path):
    """A checkpoint file's tensors (``torch.save``'s zip format), or its
    bytes (the epoch counter, Brain and data loader states are text)."""
    data = path.read_bytes()
    if data.startswith(b"PK"):
        return torch.load(path, weights_only=True)
    return data


def assert_equal(first, second, where):
    """Nested tensors / containers equal, exactly."""
    if isinstance(first, torch.Tensor):
        assert torch.equal(first, second), f"{where} differs"
    elif isinstance(first, dict):
        assert first.keys() == second.keys(), where
        for key in first:
            assert_equal(first[key], second[key], f"{where}:{key}")
    elif isinstance(first, (list, tuple)):
        assert len(first) == len(second), where
        for i, (a, b) in enumerate(zip(first, second)):
            assert_equal(a, b, f"{where}[{i}]")
    else:
        assert first == second, where


def trained_weights(roots):
    """Each rank's trained tensors (``weights_rank<R>.pt``, written by the
    runner), wherever that rank ran."""
    found = {}
    for root in roots:
        for path in (root / "results/soft_moa").glob("weights_rank*.pt"):
            found[path.name] = torch.load(path, weights_only=True)
    assert sorted(found) == ["weights_rank0.pt", "weights_rank1.pt"], sorted(found)
    return found["weights_rank0.pt"], found["weights_rank1.pt"]


@pytest.mark.slow
def test_checkpointer_two_nodes(tmp_path):
    """Our Checkpointer alone (``tests/multinode_checkpoints.py``): three
    saves rotate alike on both nodes, a checkpoint only one node holds is
    neither deleted nor loaded (no hang), and a copy damaged on one node is
    set aside on both, which then load the same intact checkpoint."""
    require_mount_namespaces(tmp_path)
    roots = node_roots(tmp_path, {})
    worker = os.path.join(REPO, "tests", "multinode_checkpoints.py")
    launch(roots, [worker], timeout=300)
    seen = [json.loads(next(r.glob("result*.json")).read_text()) for r in roots]
    main, other = sorted(seen, key=lambda s: s["rank"])  # rendezvous decides
    # saves 1, 2, 3 (accuracy 0.9, 0.5, 0.7), keeping the best and the
    # latest: the third deletes the second, on both nodes
    assert [len(names) for names in other["listed"]] == [1, 2, 2], other
    assert other["listed"][:2] == main["listed"][:2]
    assert main["listed"][2] == sorted(other["listed"][2] + ["CKPT+lagging"])
    assert other["listed"][1][1] not in other["listed"][2], "not rotated"
    # the best (epoch 1) was damaged on one node: set aside on both; both
    # loaded epoch 3 with the same weights
    best = other["listed"][0][0]
    assert main["set_aside"] == other["set_aside"] == [best]
    assert main["loaded"] == other["loaded"] == other["listed"][2][-1] != best
    assert main["loaded_epoch"] == other["loaded_epoch"] == 3
    assert main["weight"] == other["weight"] == [3.0] * 4
    assert other["manifests"] == other["after"] == [main["loaded"]]


@pytest.mark.slow
def test_two_nodes_separate_storage(tmp_path, tiny_ast_dir, synthetic_dataset):
    require_mount_namespaces(tmp_path)
    roots = node_roots(
        tmp_path,
        {"data/esc50": synthetic_dataset("esc50"), "models/tiny_ast": tiny_ast_dir},
    )
    outputs = launch(roots, recipe_args("--number_of_epochs=2"))
    for root, output in zip(roots, outputs):
        run = root / "results/soft_moa"
        # preparation and export ran on each node, into its own storage
        for name in ("train.csv", "valid.csv", "test.csv", "inference.yaml"):
            assert (run / name).is_file(), f"{run / name} missing"
        assert (run / "save" / "label_encoder.txt").is_file()
        assert "=== soft_moa: ok" in output
    # once per node, not once per process (only the main process logs)
    assert "".join(outputs).count("Wrote results/soft_moa/train.csv") == 1
    logs = [
        r / "results/soft_moa/train_log.txt"
        for r in roots
        if (r / "results/soft_moa/train_log.txt").is_file()
    ]
    assert len(logs) == 1, "the train log is written by the main process only"
    first_log = logs[0].read_text()
    assert first_log.count("epoch: ") == 2 and "test accuracy" in first_log
    assert_same_checkpoints(roots)
    weights = trained_weights(roots)
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key
    assert any(k.startswith("backbone.") for k in weights[0])
    after_first = checkpoint_folders(roots[0])
    assert 1 <= len(after_first) <= 2, after_first  # best and latest

    # A second launch (one epoch more) resumes from the checkpoint on each
    # node; a third end-of-epoch checkpoint makes the rotation delete one.
    outputs = launch(roots, recipe_args("--number_of_epochs=3"))
    # (only the main process logs; the other node resumed too, else it would
    # train three epochs, not one, and the collectives would not match)
    assert "Loading a checkpoint from results/soft_moa/save/CKPT+" in "".join(outputs)
    deleted = sum(output.count("Deleted checkpoint in") for output in outputs)
    assert deleted >= 1, "no checkpoint rotated"
    logs = "".join(
        (r / "results/soft_moa/train_log.txt").read_text()
        for r in roots
        if (r / "results/soft_moa/train_log.txt").is_file()
    )
    assert "epoch: 3" in logs and logs.count("epoch: ") == 3, logs
    assert_same_checkpoints(roots)
    after_second = checkpoint_folders(roots[0])
    assert 1 <= len(after_second) <= 2, after_second
    assert set(after_second) != set(after_first), "nothing was saved on resume"
    weights = trained_weights(roots)
    for key in weights[0]:
        assert torch.equal(weights[0][key], weights[1][key]), key


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-x", "-q"]))
