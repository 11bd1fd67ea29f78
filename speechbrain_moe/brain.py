"""The ``Brain`` shared by the classification recipes (``recipes/*/PETL``).

``backbone(wavs, wav_lens) -> classifier -> log-softmax``; the objective is
the NLL plus the auxiliary losses of the model's routers (logged separately
as ``aux_loss``); accuracy comes from SpeechBrain's ``ClassificationStats``;
load-balance figures of MoE methods are logged per epoch.

Authors
 * speechbrain-moe contributors 2026
"""

import logging

import speechbrain as sb
import torch
from speechbrain.core import INTRA_EPOCH_CKPT_FLAG
from speechbrain.utils.logger import get_logger
from speechbrain.utils.metric_stats import ClassificationStats

from speechbrain_moe.adapters.moe import update_selection_biases
from speechbrain_moe.checkpoints import RandomState
from speechbrain_moe.routing import collect_aux_loss, pop_load_stats, track_load

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

    Example
    -------
    >>> m = torch.nn.Linear(2, 2)
    >>> unwrap(m) is m
    True
    """
    return getattr(module, "module", module)


class PETLClassifierBrain(sb.Brain):
    """Audio classification with a PETL-adapted backbone.

    Expects ``modules`` with ``backbone`` (a :class:`~speechbrain_moe.lobes.base.Backbone`)
    and ``classifier`` (``[batch, d] -> [batch, classes]`` logits), batches
    with ``sig`` and ``label_encoded``, and hyper-parameters holding
    ``epoch_counter`` (for the schedule's progress and the test log).

    The optimizer (``opt_class``, e.g. AdamW with weight decay 0.1) receives
    the trainable parameters only. The learning rate follows ``lr_schedule``
    per optimizer step.

    Arguments
    ---------
    *args
        As :class:`speechbrain.Brain`.
    train_logger : speechbrain.utils.train_logger.TrainLogger, optional
        Where the stage statistics go (default ``hparams.train_logger``).
    lr_schedule : callable, optional
        Training progress in [0, 1] -> learning rate, e.g.
        :class:`~speechbrain_moe.recipe.CosineLR` (default
        ``hparams.lr_schedule``; None keeps the optimizer's rate).
    **kwargs
        As :class:`speechbrain.Brain`.

    Example
    -------
    >>> class Tiny(torch.nn.Module):
    ...     output_size = 4
    ...     def forward(self, wavs, wav_lens=None):
    ...         return wavs[:, :4]
    >>> modules = {"backbone": Tiny(), "classifier": torch.nn.Linear(4, 3)}
    >>> brain = PETLClassifierBrain(modules, lambda p: torch.optim.AdamW(p, lr=0.01),
    ...                             run_opts={"device": "cpu"})
    >>> batch = sb.dataio.batch.PaddedBatch([
    ...     {"id": "a", "sig": torch.randn(8), "label_encoded": torch.tensor([1])}])
    >>> brain.compute_forward(batch, sb.Stage.VALID).shape
    torch.Size([1, 3])
    """

    def __init__(self, *args, train_logger=None, lr_schedule=None, **kwargs):
        super().__init__(*args, **kwargs)
        hparams = getattr(self, "hparams", None)
        if train_logger is None:
            train_logger = getattr(hparams, "train_logger", None)
        if lr_schedule is None:
            lr_schedule = getattr(hparams, "lr_schedule", None)
        self.train_logger = train_logger
        self.lr_schedule = lr_schedule
        self.steps_per_epoch = None
        self.num_routers = track_load(self.modules)
        self.skip_this_step = False
        self.last_batch_skipped = False
        self.num_cut = 0
        self.num_clips = 0
        self.random_state = RandomState()
        if self.checkpointer is not None:
            # Dropout and other random draws continue exactly after a resume.
            self.checkpointer.add_recoverable(
                "random_state", self.random_state, optional_load=True
            )

    # ------------------------------------------------------------- data
    def make_dataloader(
        self, dataset, stage, ckpt_prefix="dataloader-", **loader_kwargs
    ):
        """As :meth:`speechbrain.Brain.make_dataloader`; also records the
        number of training batches (for the per-step schedule).

        Arguments
        ---------
        dataset : Dataset
            The data.
        stage : speechbrain.Stage
            The stage.
        ckpt_prefix : str
            Checkpoint name prefix of the loader.
        **loader_kwargs : dict
            DataLoader options.

        Returns
        -------
        DataLoader
        """
        loader = super().make_dataloader(dataset, stage, ckpt_prefix, **loader_kwargs)
        if stage == sb.Stage.TRAIN:
            self.steps_per_epoch = len(loader)
        return loader

    # ------------------------------------------------------------- model
    def compute_forward(self, batch, stage):
        """Log-probabilities ``[batch, classes]``.

        Arguments
        ---------
        batch : PaddedBatch
            With ``sig``.
        stage : speechbrain.Stage
            The stage.

        Returns
        -------
        torch.Tensor
        """
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        self.count_cut_clips(wavs, wav_lens)
        embeddings = self.modules.backbone(wavs, wav_lens)
        logits = self.modules.classifier(embeddings)
        return torch.nn.functional.log_softmax(logits, dim=-1)

    def count_cut_clips(self, wavs, wav_lens):
        """Counts the clips longer than the backbone's ``max_frames`` (which
        the backbone cuts); reported at the end of each stage.

        Arguments
        ---------
        wavs : torch.Tensor
            ``[batch, samples]``.
        wav_lens : torch.Tensor
            Relative lengths.
        """
        backbone = unwrap(self.modules.backbone)
        max_frames = getattr(backbone, "max_frames", None)
        self.num_clips += wavs.shape[0]
        if not max_frames:
            return
        rate = getattr(backbone, "sample_rate", 16000)
        window, shift = int(0.025 * rate), int(0.010 * rate)
        samples = (wav_lens * wavs.shape[1]).round().long()
        frames = 1 + torch.div(samples - window, shift, rounding_mode="floor")
        self.num_cut += int((frames > max_frames).sum())

    def report_cut_clips(self, stage):
        """Logs how many clips of the stage were cut to ``max_frames``.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage.
        """
        if not self.num_cut:
            return
        backbone = unwrap(self.modules.backbone)
        seconds = (backbone.max_frames - 1) * 0.01 + 0.025
        logger.warning(
            "%s: %d of %d clips are longer than max_frames=%d (%.2f s) and were "
            "cut to their first %.2f s. Raise --max_frames to keep more audio.",
            stage.name.lower(),
            self.num_cut,
            self.num_clips,
            backbone.max_frames,
            seconds,
            seconds,
        )

    def compute_objectives(self, predictions, batch, stage):
        """NLL plus the routers' auxiliary losses.

        Arguments
        ---------
        predictions : torch.Tensor
            Log-probabilities.
        batch : PaddedBatch
            With ``label_encoded``.
        stage : speechbrain.Stage
            The stage.

        Returns
        -------
        torch.Tensor
        """
        labels, _ = batch.label_encoded
        labels = labels.view(-1)
        nll = torch.nn.functional.nll_loss(predictions, labels)
        aux = collect_aux_loss(self.modules)
        self.aux_sum += float(aux.detach())
        self.num_batches += 1
        self.accuracy.append(
            batch.id, predictions.argmax(dim=-1).tolist(), labels.tolist()
        )
        return nll + aux

    # ------------------------------------------------------------- optimisation
    def init_optimizers(self):
        """Creates ``opt_class`` over the trainable parameters only."""
        if self.opt_class is None:
            return
        params = [p for p in self.modules.parameters() if p.requires_grad]
        self.optimizer = self.opt_class(params)
        self.optimizers_dict = {"opt_class": self.optimizer}
        if self.checkpointer is not None:
            self.checkpointer.add_recoverable("optimizer", self.optimizer)

    def check_loss_isfinite(self, loss):
        """Skips the optimizer step of a batch whose loss is not finite; stops
        with a clear message once ``nonfinite_patience`` such batches occurred
        in an epoch (the weights and checkpoints stay as before the bad
        batches).

        Arguments
        ---------
        loss : torch.Tensor
            The (scaled) loss of the batch.
        """
        if torch.isfinite(loss):
            return
        self.nonfinite_count += 1
        self.skip_this_step = True
        epoch = self.hparams.epoch_counter.current
        if self.nonfinite_count > self.nonfinite_patience:
            raise ValueError(
                f"The loss was not finite (NaN/inf) in {self.nonfinite_count} "
                f"batches of epoch {epoch} (last: step {self.step}), more than "
                f"--nonfinite_patience={self.nonfinite_patience}; training "
                "stopped. Nothing was written to the checkpoints since the last "
                "good one. Check the data (audio with NaN/inf samples), lower "
                "--lr, or debug with torch.autograd.detect_anomaly()."
            )
        logger.warning(
            "Non-finite loss at epoch %s, step %s: batch skipped (%d of "
            "--nonfinite_patience=%d).",
            epoch,
            self.step,
            self.nonfinite_count,
            self.nonfinite_patience,
        )

    def optimizers_step(self):
        """As :meth:`speechbrain.Brain.optimizers_step`, but drops the
        gradients of batches with a non-finite loss instead of stepping."""
        if self.skip_this_step:
            self.zero_grad(set_to_none=True)
            return
        super().optimizers_step()

    def trainable_parameters_finite(self):
        """Whether every trainable parameter is finite.

        Returns
        -------
        bool
        """
        return all(
            bool(torch.isfinite(p).all())
            for p in self.modules.parameters()
            if p.requires_grad
        )

    def save_checkpoint(self, **kwargs):
        """Saves a checkpoint unless the trainable weights became non-finite.

        Arguments
        ---------
        **kwargs : dict
            As ``Checkpointer.save_and_keep_only``.
        """
        if not self.trainable_parameters_finite():
            raise ValueError(
                "Some trained parameters became NaN/inf; the checkpoint was NOT "
                "written (the previous one is intact). Lower --lr or "
                "--max_grad_norm and resume from the last checkpoint."
            )
        self.checkpointer.save_and_keep_only(**kwargs)

    def _save_intra_epoch_ckpt(self):
        """Intra-epoch checkpoint (``ckpt_interval_steps``/``_minutes``),
        refused when the weights are not finite and deferred to the next good
        batch after a batch skipped for a non-finite loss."""
        if self.last_batch_skipped:
            return
        self.save_checkpoint(
            end_of_epoch=False,
            num_to_keep=1,
            ckpt_predicate=lambda c: INTRA_EPOCH_CKPT_FLAG in c.meta,
            meta={INTRA_EPOCH_CKPT_FLAG: True},
            verbosity=logging.DEBUG,
        )

    def current_progress(self):
        """Fraction of the planned training steps done (for the schedule).

        Returns
        -------
        float
        """
        counter = self.hparams.epoch_counter
        epochs = max(counter.limit, 1)
        steps = max(self.steps_per_epoch or 1, 1)
        epoch = max(counter.current, 1)
        return ((epoch - 1) + (self.step - 1) / steps) / epochs

    def on_fit_batch_start(self, batch, should_step):
        """Restores the random state of an intra-epoch checkpoint (first batch
        after a resume) and sets the learning rate of this step from
        ``lr_schedule``.

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        should_step : bool
            Whether the optimizer steps after this batch.
        """
        self.random_state.apply_pending()
        if self.lr_schedule is not None and should_step:
            lr = self.lr_schedule(self.current_progress())
            for group in self.optimizer.param_groups:
                group["lr"] = lr

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Updates bias-balanced routers once per optimizer step (not after a
        step skipped for a non-finite loss).

        Arguments
        ---------
        batch : PaddedBatch
            The batch.
        outputs : torch.Tensor
            Predictions.
        loss : torch.Tensor
            Loss.
        should_step : bool
            Whether the optimizer stepped.
        """
        self.last_batch_skipped = self.skip_this_step
        if should_step:
            if not self.skip_this_step:
                update_selection_biases(self.modules)
            self.skip_this_step = False

    # ------------------------------------------------------------- stages
    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics; clears the load counters.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage.
        epoch : int, optional
            The epoch.
        """
        self.accuracy = ClassificationStats()
        self.aux_sum = 0.0
        self.num_batches = 0
        self.num_cut = 0
        self.num_clips = 0
        if stage == sb.Stage.VALID:
            # Resumed from an intra-epoch checkpoint taken after the last
            # training batch: no batch restored the random state yet.
            self.random_state.apply_pending()
        if self.num_routers:
            pop_load_stats(self.modules)

    def stage_stats(self, stage_loss):
        """Loss, accuracy, aux loss and (MoE methods) load balance, as floats.

        After a resume from an intra-epoch checkpoint, the training figures
        (other than the loss, which is checkpointed) cover the batches run
        since the resume; without any (resumed after the last batch) only the
        loss is reported.

        Arguments
        ---------
        stage_loss : float
            Mean loss of the stage.

        Returns
        -------
        dict
        """
        stats = {"loss": float(stage_loss)}
        if self.num_batches == 0:
            return stats
        stats["accuracy"] = float(self.accuracy.summarize("accuracy"))
        if self.num_routers:
            stats["aux_loss"] = self.aux_sum / max(self.num_batches, 1)
            load = pop_load_stats(self.modules).get("mean")
            if load:
                stats.update({f"load_{k}": float(v) for k, v in load.items()})
        return stats

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs the stage's statistics and checkpoints after validation.

        Arguments
        ---------
        stage : speechbrain.Stage
            The stage.
        stage_loss : float
            Mean loss of the stage.
        epoch : int, optional
            The epoch.
        """
        self.report_cut_clips(stage)
        stats = self.stage_stats(stage_loss)
        self.last_stats = stats
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        if stage == sb.Stage.VALID:
            lr = float(self.optimizer.param_groups[0]["lr"])
            if self.train_logger is not None:
                self.train_logger.log_stats(
                    stats_meta={"epoch": epoch, "lr": lr},
                    train_stats=getattr(self, "train_stats", None),
                    valid_stats=stats,
                )
            if self.checkpointer is not None:
                self.save_checkpoint(
                    meta={"accuracy": stats["accuracy"], "loss": stats["loss"]},
                    max_keys=["accuracy"],
                )
        elif self.train_logger is not None:
            self.train_logger.log_stats(
                stats_meta={"Epoch loaded": self.hparams.epoch_counter.current},
                test_stats=stats,
            )

    def parameter_summary(self):
        """Trainable-parameter counts of the (unwrapped) modules.

        Returns
        -------
        dict
            See :func:`speechbrain_moe.summary.count_parameters`.
        """
        from speechbrain_moe.summary import count_parameters

        return count_parameters({k: unwrap(m) for k, m in self.modules.items()})
