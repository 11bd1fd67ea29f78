"""Worker of ``tests/test_ddp.py::test_close_process_group_joins_gloo``, run
by ``torchrun --nproc_per_node=2``: a SpeechBrain ``Brain`` trained for one
epoch under DDP (gloo), then :func:`speechbrain_moe.close_process_group`.

Writes ``result<RANK>.json`` in its working directory: how many gloo worker
threads are left after the group was closed (left running, they are what can
abort the process at interpreter exit), and the type of the module left in
``brain.modules``.
``python ddp_close_worker.py keep`` keeps a second reference to the DDP
wrapper, which must keep the group (and its threads) alive, and be reported.
"""

import json
import os
import sys

import speechbrain as sb
import torch

from speechbrain_moe import close_process_group


def gloo_threads():
    """This process's gloo worker threads (native threads, invisible to
    ``threading``), which gloo names ``pt_gloo_runloop``."""
    names = []
    for task in os.listdir("/proc/self/task"):
        with open(f"/proc/self/task/{task}/comm", encoding="utf-8") as fin:
            names.append(fin.read().strip())
    return sum(name.startswith("pt_gloo") for name in names)


class Regression(sb.Brain):
    """Least squares on random batches."""

    def compute_forward(self, batch, stage):
        """The model's prediction."""
        return self.modules.model(batch[0])

    def compute_objectives(self, predictions, batch, stage):
        """The squared error."""
        return torch.nn.functional.mse_loss(predictions, batch[1])


def main(keep):
    """Trains, closes, records what was left."""
    sb.utils.distributed.ddp_init_group({"distributed_backend": "gloo"})
    data = [(torch.randn(4), torch.randn(1)) for _ in range(8)]
    brain = Regression(
        modules={"model": torch.nn.Linear(4, 1)},
        opt_class=lambda params: torch.optim.SGD(params, lr=0.1),
        hparams={},
        run_opts={
            "device": "cpu",
            "distributed_backend": "gloo",
            "noprogressbar": True,
        },
    )
    brain.fit(range(1), data, train_loader_kwargs={"batch_size": 2})
    wrapper = brain.modules["model"] if keep else None
    closed = close_process_group(brain)
    result = {
        "closed": closed,
        "gloo_threads": gloo_threads(),
        "module": type(brain.modules["model"]).__name__,
        "kept": type(wrapper).__name__,
    }
    with open(f"result{os.environ['RANK']}.json", "w", encoding="utf-8") as fout:
        json.dump(result, fout)


if __name__ == "__main__":
    main(keep=sys.argv[1:] == ["keep"])
