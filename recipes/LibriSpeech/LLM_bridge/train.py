#!/usr/bin/env python3
"""Recipe: speech (and sound) to text through an audio encoder, a bridge and a
frozen decoder-only LLM.

Frozen audio encoder (valid frames only) -> ConcatDownsampler -> bridge
(``dense`` | ``moe_adapter`` | ``soft_moa``, YAML key ``bridge``) -> LLM input
embeddings; the LLM reads ``<audio start> audio <audio end> prompt`` and is
trained (through the bridge, and optional LoRA) to answer ``target <eos>``.

Tasks: LibriSpeech ASR (WER/CER) and, optionally, audio classification data
(e.g. ESC-50 prepared by ``recipes/ESC50/PETL``) answered as text (exact-match
accuracy), mixed with per-task sampling weights.

To run::

    python train.py hparams/bridge.yaml --data_folder=/path/to/LibriSpeech \\
        --llm_source=meta-llama/Llama-3.2-1B [--bridge=dense] \\
        [--bridge_overrides="{top_k: 2}"]

Multi-GPU / CPU DDP::

    torchrun --standalone --nproc_per_node=2 train.py hparams/bridge.yaml ... \\
        --device=cpu --distributed_backend=gloo

Authors
 * speechbrain-moe contributors 2026
"""

import csv
import logging
import os
import sys

import speechbrain as sb
import torch
from hyperpyyaml import load_hyperpyyaml
from librispeech_prepare import prepare_librispeech
from speechbrain.dataio.sampler import ReproducibleWeightedRandomSampler
from speechbrain.utils.distributed import if_main_process, run_once_per_node
from speechbrain.utils.logger import get_logger

from speechbrain_moe.adapters import update_selection_biases
from speechbrain_moe.brain import unwrap
from speechbrain_moe.dataio import read_clip
from speechbrain_moe.distributed import close_process_group
from speechbrain_moe.experiment import Experiment
from speechbrain_moe.inference import export_inference_hparams
from speechbrain_moe.lobes.speech_llm import target_nll
from speechbrain_moe.routing import LoadCounter, routing_context
from speechbrain_moe.settings import check_recipe_settings
from speechbrain_moe.summary import count_parameters, format_parameters
from speechbrain_moe.tensorboard import log_expert_loads, open_tensorboard

logger = get_logger(__name__)
ASR = "asr"


class BridgeBrain(sb.Brain):
    """Trains the bridge of a speech-LLM and decodes with it; logs to the
    ``train_logger`` and, if given, a TensorBoard logger."""

    def __init__(self, *args, tensorboard=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.tensorboard = tensorboard
        self.loads = LoadCounter(self.modules)  # per-expert loads, per stage
        logger.info("Bridge\n%s", format_parameters(count_parameters(self.modules)))

    def compute_forward(self, batch, stage):
        """Teacher-forced logits; decoded answers when evaluating."""
        batch = batch.to(self.device)
        wavs, wav_lens = batch.sig
        prompt, prompt_lens = batch.prompt_tokens
        target, target_lens = batch.target_tokens
        with routing_context(self.modules, track_load=bool(self.loads)) as routing:
            out = self.modules.speech_llm(
                wavs, wav_lens, prompt, prompt_lens, target, target_lens
            )
        self.loads.add(routing)  # the aux loss comes in out["aux_loss"]
        hyps = None
        if stage == sb.Stage.TEST or (
            stage == sb.Stage.VALID and self.hparams.valid_decode
        ):
            tokens = unwrap(self.modules.speech_llm).generate(
                wavs,
                wav_lens,
                prompt,
                prompt_lens,
                max_new_tokens=self.hparams.max_new_tokens,
                num_beams=self.hparams.num_beams,
            )
            hyps = [
                self.tokenizer.decode(t, skip_special_tokens=True).strip()
                for t in tokens
            ]
        return out, hyps

    def compute_objectives(self, predictions, batch, stage):
        """Target-token cross-entropy plus the bridge's auxiliary losses."""
        out, hyps = predictions
        nll = target_nll(out["logits"], out["targets"], out["target_mask"])
        loss = nll + out["aux_loss"]
        if stage != sb.Stage.TRAIN:
            self.aux_sum += float(out["aux_loss"])
            self.aux_count += 1
        if hyps is not None:
            for utt_id, task, ref, hyp in zip(
                batch.id, batch.task, batch.target_text, hyps
            ):
                if task == ASR:
                    self.wer_metric.append(
                        [utt_id], [hyp.upper().split()], [ref.upper().split()]
                    )
                    self.cer_metric.append(
                        [utt_id], [list(hyp.upper())], [list(ref.upper())]
                    )
                else:
                    hit = normalize_answer(hyp) == normalize_answer(ref)
                    correct, total = self.accuracy.get(task, (0, 0))
                    self.accuracy[task] = (correct + int(hit), total + 1)
                    self.answers.append((utt_id, task, ref, hyp, int(hit)))
        return loss

    def on_fit_batch_end(self, batch, outputs, loss, should_step):
        """Updates the bias-balanced routers once per optimizer step."""
        if should_step:
            update_selection_biases(self.modules)

    def on_stage_start(self, stage, epoch=None):
        """Fresh metrics for each evaluation stage; clears the load counters."""
        self.loads.reset()
        if stage == sb.Stage.TRAIN and hasattr(self, "weighted_sampler"):
            self.weighted_sampler.set_epoch(epoch or 0)
        if stage != sb.Stage.TRAIN:
            self.wer_metric = self.hparams.error_rate_computer()
            self.cer_metric = self.hparams.cer_computer()
            self.accuracy = {}
            self.answers = []
            self.aux_sum, self.aux_count = 0.0, 0

    def on_stage_end(self, stage, stage_loss, epoch=None):
        """Logs per-task metrics, anneals, checkpoints, writes test outputs."""
        stats = {"loss": float(stage_loss)}
        if self.loads:  # collectives: every DDP rank calls them
            loads = self.loads.pop()
            mean = loads.get("mean", {})
            stats.update({f"load_{k}": float(v) for k, v in mean.items()})
            step = epoch or self.hparams.epoch_counter.current
            shares = loads.get("shares", {})
            log_expert_loads(self.tensorboard, shares, stage.name.lower(), step)
        if stage == sb.Stage.TRAIN:
            self.train_stats = stats
            return
        stats["aux_loss"] = self.aux_sum / max(self.aux_count, 1)
        if self.wer_metric.scores:
            stats["WER"] = float(self.wer_metric.summarize("error_rate"))
            stats["CER"] = float(self.cer_metric.summarize("error_rate"))
        for task, (correct, total) in sorted(self.accuracy.items()):
            stats[f"accuracy_{task}"] = correct / max(total, 1)
        if stage == sb.Stage.VALID:
            old_lr, new_lr = self.hparams.lr_annealing(stats["loss"])
            sb.nnet.schedulers.update_learning_rate(self.optimizer, new_lr)
            self.log_stats(
                stats_meta={"epoch": epoch, "lr": old_lr},
                train_stats=self.train_stats,
                valid_stats=stats,
            )
            self.checkpointer.save_and_keep_only(
                meta={"loss": stats["loss"]}, min_keys=["loss"]
            )
        else:
            self.log_stats(
                stats_meta={
                    "Epoch loaded": self.hparams.epoch_counter.current,
                    "test set": self.test_name,
                },
                test_stats=stats,
            )
            if if_main_process():
                self._write_test_outputs()
        self.last_stats = stats

    def log_stats(self, stats_meta, **stats):
        """Hands a stage's statistics to the train and TensorBoard loggers
        (TensorBoard: the test set's name goes into the statistics' names)."""
        self.hparams.train_logger.log_stats(stats_meta, **stats)
        if self.tensorboard is not None:
            meta = {k: v for k, v in stats_meta.items() if k != "test set"}
            if "test set" in stats_meta:
                name = stats_meta["test set"]
                stats = {
                    "test_stats": {
                        f"{k}_{name}": v for k, v in stats.pop("test_stats").items()
                    },
                    **stats,
                }
            self.tensorboard.log_stats(meta, **stats)

    def _write_test_outputs(self):
        """Per-utterance WER alignments and classification answers."""
        folder = self.hparams.output_wer_folder
        os.makedirs(folder, exist_ok=True)
        if self.wer_metric.scores:
            path = os.path.join(folder, f"wer_{self.test_name}.txt")
            with open(path, "w") as w:
                self.wer_metric.write_stats(w)
            logger.info("Per-utterance WER written to %s", path)
        if self.answers:
            path = os.path.join(folder, f"answers_{self.test_name}.csv")
            with open(path, "w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(["ID", "task", "reference", "hypothesis", "correct"])
                writer.writerows(self.answers)


def normalize_answer(text):
    """Lower-case, underscores as spaces, single spaces (exact-match scoring)."""
    return " ".join(text.replace("_", " ").lower().split())


def read_csv_rows(path):
    """Rows of a manifest CSV as dicts (a byte-order mark, as spreadsheet
    programs write one, is not part of the first column's name)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        return list(csv.DictReader(f))


def task_data(hparams, asr_csvs, cls_csv):
    """Merges ASR and classification manifests into one item dict."""
    data = {}
    for path in asr_csvs:
        for row in read_csv_rows(path):
            data[f"{ASR}/{row['ID']}"] = {
                "wav": row["wav"],
                "duration": float(row["duration"]),
                "task": ASR,
                "text": row["wrd"],
            }
    if cls_csv:
        task = hparams["cls_task"]
        for row in read_csv_rows(cls_csv):
            missing = {"ID", "wav", "duration", "class_name"} - set(row)
            if missing:
                raise KeyError(
                    f"{cls_csv} lacks the columns {sorted(missing)}; classification "
                    "manifests need ID, wav, duration, class_name (as written by "
                    "recipes/ESC50/PETL/esc50_prepare.py)."
                )
            data[f"{task}/{row['ID']}"] = {
                "wav": row["wav"],
                "duration": float(row["duration"]),
                "task": task,
                "text": row["class_name"].replace("_", " "),
            }
    return data


def dataio_prepare(hparams, tokenizer, csvs):
    """Builds the train/valid/test datasets and their pipelines."""
    sample_rate = hparams["sample_rate"]
    prompts = {ASR: hparams["asr_prompt"], hparams["cls_task"]: hparams["cls_prompt"]}
    eos = tokenizer.eos_token_id

    @sb.utils.data_pipeline.takes("wav")
    @sb.utils.data_pipeline.provides("sig")
    def audio_pipeline(wav):
        """Reads, mixes down, resamples and cuts one audio file."""
        return read_clip(wav, sample_rate, hparams["max_audio_seconds"])

    @sb.utils.data_pipeline.takes("task", "text")
    @sb.utils.data_pipeline.provides("prompt_tokens", "target_tokens", "target_text")
    def text_pipeline(task, text):
        """Prompt ids, target ids + <eos>, and the reference text."""
        yield torch.LongTensor(
            tokenizer(prompts[task], add_special_tokens=False).input_ids
        )
        yield torch.LongTensor(
            tokenizer(text, add_special_tokens=False).input_ids + [eos]
        )
        yield text

    def make(data):
        dataset = sb.dataio.dataset.DynamicItemDataset(data)
        dataset.add_dynamic_item(audio_pipeline)
        dataset.add_dynamic_item(text_pipeline)
        dataset.set_output_keys(
            ["id", "task", "sig", "prompt_tokens", "target_tokens", "target_text"]
        )
        return dataset

    train = make(
        task_data(
            hparams,
            [csvs[s] for s in hparams["train_splits"]],
            hparams["cls_train_csv"],
        )
    )
    valid = make(
        task_data(
            hparams, [csvs[s] for s in hparams["dev_splits"]], hparams["cls_valid_csv"]
        )
    )
    tests = {
        split: make(task_data(hparams, [csvs[split]], None))
        for split in hparams["test_splits"]
    }
    if hparams["cls_test_csv"]:
        tests[hparams["cls_task"]] = make(
            task_data(hparams, [], hparams["cls_test_csv"])
        )
    return train, valid, tests


def mixture_sampler(dataset, weights, seed):
    """Samples tasks with the given weights (uniform within a task)."""
    tasks = [dataset.data[i]["task"] for i in dataset.data_ids]
    counts = {t: tasks.count(t) for t in set(tasks)}
    unknown = set(counts) - set(weights)
    if unknown:
        raise KeyError(
            f"task_weights has no weight for tasks {sorted(unknown)}; add them."
        )
    example_weights = [weights[t] / counts[t] for t in tasks]
    return ReproducibleWeightedRandomSampler(
        example_weights, num_samples=len(tasks), replacement=True, seed=seed
    )


if __name__ == "__main__":
    hparams_file, run_opts, overrides = sb.parse_arguments(sys.argv[1:])
    sb.utils.distributed.ddp_init_group(run_opts)
    # The output folder holds one experiment: another configuration is
    # refused here, before any model is loaded or file written
    # (speechbrain_moe/experiment.py).
    experiment = Experiment(hparams_file, overrides, run_opts)
    hparams = experiment.settings  # plain values; the models are built next
    experiment.check_folder(overwrite=hparams["overwrite_experiment"])
    with open(hparams_file) as fin:
        hparams = load_hyperpyyaml(fin, overrides)
    check_recipe_settings(hparams, hparams_file)  # types and ranges, before any file

    sb.create_experiment_directory(
        experiment_directory=hparams["output_folder"],
        hyperparams_to_save=hparams_file,
        overrides=overrides,
    )
    # Python warnings go through SpeechBrain's logging too: into log.txt, and
    # to the console by a handler that never writes onto a progress bar.
    logging.captureWarnings(True)

    splits = list(
        dict.fromkeys(
            hparams["train_splits"] + hparams["dev_splits"] + hparams["test_splits"]
        )
    )
    run_once_per_node(
        prepare_librispeech,
        kwargs={
            "data_folder": hparams["data_folder"],
            "save_folder": hparams["csv_folder"],
            "splits": splits,
            "select_n_sentences": hparams["select_n_sentences"],
            "skip_prep": hparams["skip_prep"],
        },
    )
    csvs = prepare_librispeech(
        hparams["data_folder"], hparams["csv_folder"], splits, skip_prep=True
    )

    # <output_folder>/inference.yaml: loads the trained model for inference
    # (speechbrain_moe.inference.SpeechLLMTranscriber, see README.md)
    run_once_per_node(
        export_inference_hparams,
        args=[hparams_file, overrides, hparams["output_folder"]],
        kwargs=dict(
            keys=[
                "sample_rate",
                "max_audio_seconds",
                "asr_prompt",
                "max_new_tokens",
                "num_beams",
                "tokenizer",
                "speech_llm",
            ],
            loadables=["speech_llm"],
            card={"task": "automatic-speech-recognition", "dataset": "LibriSpeech"},
        ),
    )

    # <output_folder>/experiment.json, and the identity in every checkpoint
    experiment.record()
    hparams["checkpointer"].add_recoverable(
        "experiment", experiment, optional_load=True
    )
    tensorboard = None
    if hparams["use_tensorboard"]:
        tensorboard = open_tensorboard(hparams["tensorboard_logs_folder"])
    tokenizer = hparams["tokenizer"]
    train_data, valid_data, test_sets = dataio_prepare(hparams, tokenizer, csvs)

    brain = BridgeBrain(
        modules=hparams["modules"],
        opt_class=hparams["opt_class"],
        hparams=hparams,
        run_opts=run_opts,
        checkpointer=hparams["checkpointer"],
        tensorboard=tensorboard,
    )
    brain.tokenizer = tokenizer

    train_opts = dict(hparams["train_dataloader_opts"])
    if len({item["task"] for item in train_data.data.values()}) > 1:
        brain.weighted_sampler = mixture_sampler(
            train_data, hparams["task_weights"], hparams["seed"]
        )
        train_opts["sampler"] = brain.weighted_sampler
        train_opts["shuffle"] = False

    brain.fit(
        brain.hparams.epoch_counter,
        train_data,
        valid_data,
        train_loader_kwargs=train_opts,
        valid_loader_kwargs=hparams["valid_dataloader_opts"],
    )

    for name, test_data in test_sets.items():
        brain.test_name = name
        brain.evaluate(
            test_data,
            min_key="loss",
            test_loader_kwargs=hparams["test_dataloader_opts"],
        )

    # All ranks: frees the process group now, not at interpreter exit
    # (where gloo can abort a run that succeeded; see its docstring).
    close_process_group(brain)
