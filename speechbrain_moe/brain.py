"""The ``Brain`` of the classification recipes (``recipes/*/PETL``).

``backbone(wavs, wav_lens) -> classifier -> log-softmax``; the objective is
the NLL plus the auxiliary losses of the model's routers (logged separately
as ``aux_loss``). Only SpeechBrain's public hooks are used: the optimizer
gets all parameters (frozen ones have no gradient and are skipped), a
non-finite loss is handled by SpeechBrain's ``nonfinite_patience`` and
``skip_nonfinite_grads`` run options, checkpoints by
:class:`speechbrain_moe.checkpoints.Checkpointer`; TensorBoard through
SpeechBrain's ``TensorboardLogger`` (:func:`open_tensorboard`).

Authors
 * speechbrain-moe contributors 2026
"""

import atexit
import importlib
import logging

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ClassificationStats

from speechbrain_moe import routing
from speechbrain_moe.adapters.moe import update_selection_biases
from speechbrain_moe.recoverables import RandomState
from speechbrain_moe.routing import collect_aux_loss, pop_load_stats, track_load
from speechbrain_moe.summary import count_parameters, format_parameters

logger = get_logger(__name__)


def _quiet_import(name):
    """Imports ``name`` with its logger off (SpeechBrain's ``train_logger``
    warns at import that torchvision, needed by an image saver unused here,
    is missing)."""
    quiet = logging.getLogger(name)
    quiet.disabled = True
    try:
        return importlib.import_module(name)
    finally:
        quiet.disabled = False


sb_train_logger = _quiet_import("speechbrain.utils.train_logger")


def open_tensorboard(folder):
    """SpeechBrain's ``TensorboardLogger`` writing to ``folder``.

    Arguments
    ---------
    folder : str
        Where the event files go.

    Returns
    -------
    speechbrain.utils.train_logger.TensorboardLogger
    """
    try:
        tensorboard = sb_train_logger.TensorboardLogger(folder)
    except ImportError as err:
        raise ImportError(
            "use_tensorboard=True needs the tensorboard package: pip install "
            "tensorboard (or speechbrain-moe[tensorboard]), or drop "
            "--use_tensorboard."
        ) from err
    if tensorboard.writer is not None:  # the last events are written at exit
        atexit.register(tensorboard.writer.close)
    return tensorboard


def expert_loads(modules):
    """Share of the routing weight each expert received since the counters
    were last cleared, per router (summed over DDP ranks: call on every rank).

    Arguments
    ---------
    modules : torch.nn.Module
        Modules whose routers have ``track_load`` on.

    Returns
    -------
    dict
        Router name -> ``[experts]`` shares (routers that saw no token left out).

    Example
    -------
    >>> from speechbrain_moe.adapters import DenseMoA
    >>> model = torch.nn.Sequential(DenseMoA(8, num_experts=3))
    >>> _ = track_load(model); _ = model(torch.randn(2, 5, 8))
    >>> [(k, round(float(s.sum()), 4)) for k, s in expert_loads(model).items()]
    [('0', 1.0)]
    """
    loads = {}
    for name, module in routing.routed_modules(modules):
        load = module.load_sum.detach().double().clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)
        if float(load.sum()) > 0:
            loads[name] = load / load.sum()
    return loads


def log_expert_loads(tensorboard, loads, stage, step):
    """Writes one histogram per router (x: expert index, height: its share).

    Arguments
    ---------
    tensorboard : speechbrain.utils.train_logger.TensorboardLogger or None
        The logger (nothing is written without one, or off the main process).
    loads : dict
        From :func:`expert_loads`.
    stage : str
        ``train``, ``valid`` or ``test`` (part of the tag).
    step : int
        Global step of the histograms (the epoch).
    """
    writer = getattr(tensorboard, "writer", None)
    if writer is None:
        return
    for name, share in loads.items():
        experts = torch.arange(share.numel(), dtype=share.dtype)
        writer.add_histogram_raw(
            f"expert_load_{stage}/{name}",
            min=-0.5,
            max=share.numel() - 0.5,
            num=1.0,
            sum=float((experts * share).sum()),
            sum_squares=float((experts**2 * share).sum()),
            bucket_limits=(experts + 0.5).tolist(),
            bucket_counts=share.tolist(),
            global_step=step,
        )


def unwrap(module):
    """The module inside a DDP / DataParallel wrapper (or the module itself).

    Arguments
    ---------
    module : torch.nn.Module
        Possibly wrapped module.

    Returns
    -------
    torch.nn.Module

    Example
    -------
    >>> m = torch.nn.Linear(2, 2)
    >>> unwrap(m) is m
    True
    """
    return getattr(module, "module", module)


class PETLClassifierBrain(sb.Brain):
    """Audio classification with a PETL-adapted backbone.

    Expects ``modules`` with ``backbone`` (a backbone lobe) and ``classifier``
    (``[batch, d] -> [batch, classes]`` logits), batches with ``sig`` and
    ``label_encoded``, and hyper-parameters holding ``epoch_counter``.

    A clip with NaN/inf samples takes no part in the loss or the metrics
    (a warning names it); the stage's ``loss`` is the mean NLL over the
    finite clips.

    Arguments
    ---------
    *args
        As :class:`speechbrain.Brain`.
    train_logger : speechbrain.utils.train_logger.TrainLogger, optional
        Where the stage statistics go (None: logged nowhere).
    lr_schedule : callable, optional
        Epoch progress in [0, 1) -> learning rate, set at the start of every
        epoch (e.g. :class:`~speechbrain_moe.schedules.CosineLR`).
    tensorboard : speechbrain.utils.train_logger.TensorboardLogger, optional
        Also receives the statistics, and the routers' per-expert loads.
    **kwargs
        As :class:`speechbrain.Brain`.

    Example
    -------
    >>> class Tiny(torch.nn.Module):
    ...     def forward(self, wavs, wav_lens=None):
    ...         return wavs[:, :4]
    >>> modules = {"backbone": Tiny(), "classifier": torch.nn.Linear(4, 3)}
    >>> brain = PETLClassifierBrain(modules, run_opts={"device": "cpu"})
    >>> batch = sb.dataio.batch.PaddedBatch([
    ...     {"id": "a", "sig": torch.randn(8), "label_encoded": torch.tensor([1])},
    ...     {"id": "b", "sig": torch.full((8,), float("nan")),
    ...      "label_encoded": torch.tensor([0])}])
    >>> brain.on_stage_start(sb.Stage.TEST)
    >>> log_probs, finite = brain.compute_forward(batch, sb.Stage.TEST)
    >>> finite.tolist()
    [True, False]
    >>> loss = brain.compute_objectives((log_probs, finite), batch, sb.Stage.TEST)
    >>> brain.nll_count, bool(torch.isfinite(loss))
    (1, True)
    """

    def __init__(
        self, *args, train_logger=None, lr_schedule=None, tensorboard=None, **kwargs
    ):
        super().__init__(*args, **kwargs)
        self.train_logger = train_logger
        self.tensorboard = tensorboard
        self.loads = {}
        self.lr_schedule = lr_schedule
        self.num_routers = track_load(self.modules)
        self.random_state = RandomState()
        if self.checkpointer is not None:
            # Dropout and other random draws continue exactly after a resume.
            self.checkpointer.add_recoverable(
                "random_state", self.random_state, optional_load=True
            )
        backbone = self.modules["backbone"]
        logger.info(
            "PETL method %s %s\n%s",
            getattr(backbone, "petl_method", None),
            getattr(backbone, "petl_settings", None),
            format_parameters(count_parameters(self.modules)),
        )

    def compute_forward(self, batch, stage):
        """Log-probabilities and which clips are finite.

        Arguments
        ---------
        batch : PaddedBatch
            With ``id`` and ``sig``.
        stage : speechbrain.Stage
            The stage.

        Returns
        -------
        log_probs : torch.Tensor
            ``[batch, classes]``.
        finite : torch.Tensor
            ``[batch]`` bool, False for clips with NaN/inf samples (their
            input is replaced by silence; their outputs are ignored).
        """
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        finite = torch.isfinite(wavs).all(dim=1)
        if not bool(finite.all()):
            bad = [i for i, ok in zip(batch.id, finite.tolist()) if not ok]
            logger.warning(
                "%s: clip(s) %s have NaN/inf samples; they take no part in the "
                "loss or the metrics.",
                stage.name.lower(),
                bad,
            )
            wavs = torch.where(finite.unsqueeze(1), wavs, torch.zeros_like(wavs))
        embeddings = self.modules.backbone(wavs, wav_lens)
        logits = self.modules.classifier(embeddings)
        return F.log_softmax(logits, dim=-1), finite

    def compute_objectives(self, predictions, batch, stage):
        """NLL over the finite clips plus the routers' auxiliary losses.

        Arguments
        ---------
        predictions : tuple
            ``(log_probs, finite)`` from :meth:`compute_forward`.
        batch : PaddedBatch
            With ``label_encoded``.
        stage : speechbrain.Stage
            The stage.

        Returns
        -------
        torch.Tensor
            NaN when no clip of the batch is finite (SpeechBrain then skips
            the batch as a non-finite loss).
        """
        log_probs, finite = predictions
        labels = batch.label_encoded.data.to(log_probs.device).view(-1)
        nll = F.nll_loss(log_probs[finite], labels[finite], reduction="none")
        aux = collect_aux_loss(self.modules)
        ids = [i for i, ok in zip(batch.id, finite.tolist()) if ok]
        self.accuracy.append(
            ids, log_probs[finite].argmax(dim=-1).tolist(), labels[finite].tolist()
        )
        self.nll_sum += float(nll.detach().sum())
        self.nll_count += nll.numel()
        self.aux_sum += float(aux.detach())
        self.num_batches += 1
        if nll.numel() == 0:
            return log_probs.sum() * float("nan")
        return nll.mean() + aux

    def on_fit_batch_start(self, batch, should_step):
        """Restores the random state of an intra-epoch checkpoint (first batch
        after a resume).

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        should_step : bool
            Whether the optimizer steps after this batch.
        """
        self.random_state.apply_pending()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Updates bias-balanced routers once per optimizer step; says when a
        loss was not finite (SpeechBrain drops its gradients with
        ``skip_nonfinite_grads`` and stops after ``nonfinite_patience``).

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        outputs : tuple
            Predictions.
        loss : torch.Tensor
            Loss.
        should_step : bool
            Whether the optimizer stepped.
        """
        if not bool(torch.isfinite(loss)):
            logger.warning(
                "Non-finite loss at epoch %s, step %s (%d of --nonfinite_patience=%d "
                "in this epoch); with skip_nonfinite_grads its gradients are dropped.",
                self.hparams.epoch_counter.current,
                self.step,
                self.nonfinite_count,
                self.nonfinite_patience,
            )
        if should_step:
            update_selection_biases(self.modules)

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics; the epoch's learning rate; clears the load counters.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage.
        epoch : int, optional
            The epoch.
        """
        self.accuracy = ClassificationStats()
        self.nll_sum, self.nll_count = 0.0, 0
        self.aux_sum, self.num_batches = 0.0, 0
        if stage == sb.Stage.TRAIN and self.lr_schedule is not None:
            limit = max(self.hparams.epoch_counter.limit, 1)
            update_learning_rate(self.optimizer, self.lr_schedule((epoch - 1) / limit))
        if stage == sb.Stage.VALID:
            # Resumed after the last training batch: restore the draws here.
            self.random_state.apply_pending()
        if self.num_routers:
            pop_load_stats(self.modules)

    def stage_stats(self):
        """Loss, accuracy, aux loss and (MoE methods) load balance, as floats.

        Returns
        -------
        dict
        """
        stats = {}
        if self.num_routers:
            # Collectives under DDP: every rank calls them, whatever its data.
            if self.tensorboard is not None:
                self.loads = expert_loads(self.modules)
            load = pop_load_stats(self.modules).get("mean") or {}
            stats = {f"load_{k}": float(v) for k, v in load.items()}
        if self.nll_count == 0:
            return stats
        stats = {
            "loss": self.nll_sum / self.nll_count,
            "accuracy": float(self.accuracy.summarize("accuracy")),
            **stats,
        }
        if self.num_routers:
            stats["aux_loss"] = self.aux_sum / max(self.num_batches, 1)
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's statistics; checkpoints after validation.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage.
        stage_loss : float
            SpeechBrain's mean batch loss (the logged ``loss`` is per clip).
        epoch : int, optional
            The epoch.
        """
        stats = self.stage_stats()
        epoch = epoch or self.hparams.epoch_counter.current
        log_expert_loads(self.tensorboard, self.loads, stage.name.lower(), epoch)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            lr = float(self.optimizer.param_groups[0]["lr"])
            self.log_stats(
                stats_meta={"epoch": epoch, "lr": lr},
                train_stats=getattr(self, "train_stats", None),
                valid_stats=stats,
            )
            if self.checkpointer is not None:
                meta = {"accuracy": stats.get("accuracy", 0.0)}
                meta["loss"] = stats.get("loss", float("inf"))
                self.checkpointer.save_and_keep_only(meta=meta, max_keys=["accuracy"])
        else:
            self.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )

    def log_stats(self, **stats):
        """Hands a stage's statistics to the train and TensorBoard loggers.

        Arguments
        ---------
        **stats
            As ``TrainLogger.log_stats``.
        """
        for stats_logger in (self.train_logger, self.tensorboard):
            if stats_logger is not None:
                stats_logger.log_stats(**stats)

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best checkpoint; refuses to evaluate an untrained model.

        Arguments
        ---------
        max_key : str, optional
            Meta key to maximise (e.g. ``accuracy``).
        min_key : str, optional
            Meta key to minimise.
        """
        if self.checkpointer is None:
            return
        found = self.checkpointer.recover_if_possible(max_key=max_key, min_key=min_key)
        if found is None:
            raise RuntimeError(
                f"No checkpoint in {self.checkpointer.checkpoints_dir} to evaluate: "
                "the model is untrained. Train first (without --test_only), or "
                "give the --output_folder of a trained run."
            )
