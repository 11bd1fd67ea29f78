"""The ``Brain`` of the classification recipes (``recipes/*/PETL``).

``backbone(wavs, wav_lens) -> classifier -> log-softmax``; the objective is the
NLL plus the routers' auxiliary losses. Only SpeechBrain's public hooks are
used: the optimizer gets all parameters (frozen ones have no gradient), a
non-finite loss goes through the ``nonfinite_patience`` and
``skip_nonfinite_grads`` run options, checkpoints through
:class:`speechbrain_moe.checkpoints.Checkpointer`.

Authors
 * speechbrain-moe contributors 2026
"""

import speechbrain as sb
import torch
import torch.nn.functional as F
from speechbrain.nnet.schedulers import update_learning_rate
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ClassificationStats

from speechbrain_moe.adapters.moe import update_selection_biases
from speechbrain_moe.lobes.base import adaptation_of
from speechbrain_moe.recoverables import RandomState
from speechbrain_moe.routing import LoadCounter, routing_context
from speechbrain_moe.summary import count_parameters, format_parameters
from speechbrain_moe.tensorboard import log_expert_loads

logger = get_logger(__name__)


def unwrap(module):
    """The module inside a DDP / DataParallel wrapper (or the module itself).

    Arguments
    ---------
    module : torch.nn.Module
        Possibly wrapped module.

    Returns
    -------
    torch.nn.Module
        Its ``module`` attribute when it has one, else ``module`` itself.

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
    ``label_encoded``, and hyper-parameters holding ``epoch_counter``. A clip
    with NaN/inf samples takes no part in the loss or the metrics (a warning
    names it); a stage's ``loss`` is the mean NLL over its finite clips.

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
    init_from : speechbrain_moe.upcycling.Upcycling, optional
        Initialises the backbone's mixtures and the head from a source run
        (``--petl_init_from``) when the fit starts, unless a checkpoint was
        recovered (a resumed run continues from its own checkpoint).
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
    >>> log_probs, finite, routing = brain.compute_forward(batch, sb.Stage.TEST)
    >>> finite.tolist(), float(routing.aux_loss)
    ([True, False], 0.0)
    >>> loss = brain.compute_objectives((log_probs, finite, routing), batch, sb.Stage.TEST)
    >>> brain.nll_count, bool(torch.isfinite(loss))
    (1, True)
    """

    def __init__(
        self,
        *args,
        train_logger=None,
        lr_schedule=None,
        tensorboard=None,
        init_from=None,
        **kwargs,
    ):
        super().__init__(*args, **kwargs)
        self.train_logger, self.tensorboard = train_logger, tensorboard
        self.lr_schedule = lr_schedule
        self.init_from = init_from
        # Per-expert loads of the routers, summed over a stage for logging.
        self.loads = LoadCounter(self.modules)
        self.random_state = RandomState()
        if self.checkpointer is not None:
            # Dropout and other random draws continue exactly after a resume.
            self.checkpointer.add_recoverable(
                "random_state", self.random_state, optional_load=True
            )
        method, settings = adaptation_of(self.modules["backbone"])
        logger.info(
            "PETL method %s %s\n%s",
            method,
            settings,
            format_parameters(count_parameters(self.modules)),
        )

    def on_fit_start(self):
        """SpeechBrain's start of fit (DDP wrapping, optimizer, recovery of
        the latest checkpoint); then, for a run that recovered nothing (no
        optimizer step and no epoch done), the upcycling of ``init_from``.

        Every rank recovers the same checkpoint, so all take the same branch;
        the upcycled tensors are the same on every rank (no collective).
        """
        super().on_fit_start()
        if self.init_from is None:
            return
        if self.optimizer_step == 0 and self.hparams.epoch_counter.current == 0:
            self.init_from.apply(
                unwrap(self.modules["backbone"]), unwrap(self.modules["classifier"])
            )

    def compute_forward(self, batch, stage):
        """Log-probabilities ``[batch, classes]``, which clips are finite (a
        clip with NaN/inf samples is replaced by silence, then ignored) and
        what the routers reported during the forward pass (a
        :class:`~speechbrain_moe.routing.RoutingContext`: auxiliary losses,
        per-expert loads).

        Arguments
        ---------
        batch : speechbrain.dataio.batch.PaddedBatch
            With ``sig`` (padded waveforms and relative lengths) and ``id``.
        stage : speechbrain.Stage
            TRAIN, VALID or TEST (named in the warning on non-finite clips).

        Returns
        -------
        log_probs : torch.Tensor
            ``[batch, classes]`` log-probabilities.
        finite : torch.Tensor
            ``[batch]`` boolean, True on the clips whose samples are finite.
        routing : speechbrain_moe.routing.RoutingContext
            What the routers reported during this forward pass.
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
        with routing_context(self.modules, track_load=bool(self.loads)) as routing:
            logits = self.modules.classifier(self.modules.backbone(wavs, wav_lens))
        return F.log_softmax(logits, dim=-1), finite, routing

    def compute_objectives(self, predictions, batch, stage):
        """NLL over the finite clips plus the routers' auxiliary losses (NaN
        when no clip is finite: SpeechBrain then skips the batch).

        Also accumulates the stage's accuracy, loss sums and per-expert loads
        for :meth:`stage_stats`.

        Arguments
        ---------
        predictions : tuple
            ``(log_probs, finite, routing)`` from :meth:`compute_forward`.
        batch : speechbrain.dataio.batch.PaddedBatch
            With ``label_encoded`` and ``id``.
        stage : speechbrain.Stage
            TRAIN, VALID or TEST.

        Returns
        -------
        torch.Tensor
            The scalar loss (mean NLL + auxiliary losses), NaN when no clip of
            the batch is finite.
        """
        log_probs, finite, routing = predictions
        labels = batch.label_encoded.data.to(log_probs.device).view(-1)
        nll = F.nll_loss(log_probs[finite], labels[finite], reduction="none")
        aux = routing.aux_loss.to(log_probs.device)
        self.loads.add(routing)
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
        """Restores the random state of an intra-epoch checkpoint.

        Arguments
        ---------
        batch : speechbrain.dataio.batch.PaddedBatch
            The batch about to be trained on (unused).
        should_step : bool
            Whether the optimizer steps after this batch (unused).
        """
        self.random_state.apply_pending()

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Updates bias-balanced routers once per optimizer step; says when a
        loss was not finite (its gradients are dropped by SpeechBrain).

        Arguments
        ---------
        batch : speechbrain.dataio.batch.PaddedBatch
            The batch just trained on (unused).
        outputs : tuple
            :meth:`compute_forward`'s output (unused).
        loss : torch.Tensor
            The batch's loss, checked for being finite.
        should_step : bool
            Whether the optimizer stepped (the selection biases are updated
            only then, once per step under gradient accumulation).
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
        """Fresh metrics and load counters; the epoch's learning rate.

        Arguments
        ---------
        stage : speechbrain.Stage
            TRAIN (the learning rate is set), VALID (a pending random state is
            restored) or TEST.
        epoch : int, optional
            The epoch starting (1-based; None when evaluating).
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
        self.loads.reset()

    def stage_stats(self, stage, epoch):
        """Loss, accuracy, aux loss and load balance of a stage, as floats
        (the per-expert loads go to TensorBoard).

        Under DDP every rank must call it (the load counters are gathered).

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage that ended (names the TensorBoard histograms).
        epoch : int
            Its epoch (the histograms' step).

        Returns
        -------
        dict
            ``loss``, ``accuracy``, ``aux_loss`` (with routers) and
            ``load_<statistic>`` entries; only the load entries when the
            stage saw no finite clip.
        """
        stats = {}
        if self.loads:
            # A collective under DDP: every rank calls it, whatever its data.
            loads = self.loads.pop()
            log_expert_loads(
                self.tensorboard, loads.get("shares", {}), stage.name.lower(), epoch
            )
            stats = {f"load_{k}": float(v) for k, v in loads.get("mean", {}).items()}
        if self.nll_count == 0:
            return stats
        stats = {
            "loss": self.nll_sum / self.nll_count,
            "accuracy": float(self.accuracy.summarize("accuracy")),
            **stats,
        }
        if self.loads:
            stats["aux_loss"] = self.aux_sum / max(self.num_batches, 1)
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's statistics; checkpoints after validation.

        Arguments
        ---------
        stage : speechbrain.Stage
            TRAIN (statistics kept for the validation line), VALID (logged
            with the learning rate, then a checkpoint keeping the most
            accurate) or TEST (logged with the epoch loaded).
        stage_loss : float
            SpeechBrain's average loss of the stage (unused: the NLL without
            the auxiliary losses is logged instead).
        epoch : int, optional
            The epoch (None when evaluating: the epoch counter's).
        """
        epoch = epoch or self.hparams.epoch_counter.current
        stats = self.stage_stats(stage, epoch)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
        elif stage == sb.Stage.VALID:
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
            self.log_stats(stats_meta={"Epoch loaded": epoch}, test_stats=stats)

    def log_stats(self, **stats):
        """Hands a stage's statistics (as ``TrainLogger.log_stats`` takes them)
        to the train and TensorBoard loggers.

        Arguments
        ---------
        **stats
            ``stats_meta``, ``train_stats``, ``valid_stats``, ``test_stats``
            (dicts), as ``speechbrain.utils.train_logger.TrainLogger.log_stats``.
        """
        for stats_logger in (self.train_logger, self.tensorboard):
            if stats_logger is not None:
                stats_logger.log_stats(**stats)

    def on_evaluate_start(self, max_key=None, min_key=None):
        """Loads the best checkpoint; refuses to evaluate an untrained model.

        Arguments
        ---------
        max_key : str, optional
            Load the checkpoint with the highest value of this meta key.
        min_key : str, optional
            Load the checkpoint with the lowest value of this meta key.
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
