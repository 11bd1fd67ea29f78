"""Worker of ``tests/test_multinode.py`` (run by ``torchrun`` on each of two
"nodes", in the node's own working directory): our ``Checkpointer`` alone,
on a tiny model, with storage that differs per node.

Three saves with rotation (keep the best and the latest), a checkpoint that
only the main process's node holds (as a node that lags would see it), then
a recovery where the other node's copy of the best checkpoint is damaged.
Each process writes what it saw to ``result<RANK>.json`` in its working
directory.
"""

import json
import shutil
import sys

import torch
from speechbrain.utils.epoch_loop import EpochCounter

from speechbrain_moe.checkpoints import MANIFEST, Checkpointer


def names(checkpointer):
    """This process's complete checkpoints (its own node's storage)."""
    return sorted(c.path.name for c in checkpointer.list_checkpoints())


def main():
    """Saves, rotates, recovers; records each step's listing."""
    torch.distributed.init_process_group("gloo")
    rank = torch.distributed.get_rank()
    model, counter = torch.nn.Linear(2, 2), EpochCounter(10)
    checkpointer = Checkpointer("save", {"model": model, "counter": counter})
    seen = {"rank": rank, "listed": []}
    for epoch, accuracy in zip((1, 2, 3), (0.9, 0.5, 0.7)):
        counter.current = epoch
        with torch.no_grad():
            model.weight.fill_(epoch)
        if epoch == 3 and rank == 0:
            # A complete checkpoint on the main process's node only, the
            # worst: upstream would delete it there (one broadcast more on
            # this rank than on the other, which waits in a barrier).
            first = sorted(checkpointer.checkpoints_dir.glob("CKPT+*"))[0]
            shutil.copytree(first, checkpointer.checkpoints_dir / "CKPT+lagging")
        checkpointer.save_and_keep_only(
            meta={"accuracy": accuracy, "epoch": epoch}, max_keys=["accuracy"]
        )
        seen["listed"].append(names(checkpointer))
    torch.distributed.barrier()
    # The other node's copy of the best checkpoint (epoch 1) is damaged.
    best = checkpointer.find_checkpoint(max_key="accuracy", ckpt_predicate=None)
    if rank == 1:
        with open(best.path / "model.ckpt", "r+b") as fout:
            fout.truncate(10)
    torch.distributed.barrier()
    with torch.no_grad():
        model.weight.zero_()
    loaded = checkpointer.recover_if_possible(max_key="accuracy")
    seen["loaded"] = loaded.path.name
    seen["loaded_epoch"] = counter.current
    seen["weight"] = model.weight.flatten().tolist()
    seen["set_aside"] = sorted(
        p.name for p in (checkpointer.checkpoints_dir / "set_aside").glob("*")
    )
    seen["after"] = names(checkpointer)
    seen["manifests"] = sorted(
        p.parent.name for p in checkpointer.checkpoints_dir.glob(f"CKPT+*/{MANIFEST}")
    )
    with open(f"result{rank}.json", "w", encoding="utf-8") as fout:
        json.dump(seen, fout)
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    sys.exit(main())
