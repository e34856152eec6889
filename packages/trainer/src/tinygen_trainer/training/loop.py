"""The training loop: AdamW, a per-step learning rate, gradient accumulation and clipping.

Trainer.from_config resolves and checks everything (setup.py) before the first
step; fit() is the loop. Override the hooks (make_data, train_step, batch_loss,
on_step_end, evaluate, save_final) to change one part without copying the loop.
Device specifics (autocast, loss scaling, XLA's sync and loader) live in the
backend, not here; the held-out evaluation in evaluation.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import math
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import torch

from tinygen.atomic import atomic_write_text, file_in_the_way
from tinygen.errors import TinygenError, first_line
from tinygen.file_digest import ends_digest
from tinygen.fields import FILE_NAME as FIELDS_FILE

from ..data.dataset import Rows, TokenDataset
from ..data.encoder import Encoder
from ..data.sources import corpus_files
from ..notices import said_by
from .checkpoint import (TMP_PREFIX, capture_rng, check_finite_weights, fsync_dir, fsync_tree,
                         latest_checkpoint, load_optimizer, read_state, restore_rng, resume_point,
                         save_checkpoint, save_model_files, write_failure)
from .config import TrainConfig
from .device import Backend, select_backend
from .evaluation import EvalResult, Evaluation, write_result
from .feed import Feed, HostBatch
from .loss import causal_lm_loss, target_count
from .memory import check_batch_memory
from .progress import METRICS_FILE, Reporter
from .samples import generate_sample
from .setup import (PhaseRun, build_data, build_encoder, field_schema, load_model, model_window,
                    plan_model, resolve_block_size)

TRAIN_CONFIG_FILE = "train_config.json"  # renamed into --output last: the model is whole
FINAL_TMP = "final-"  # save_final's temp folder in --output: .tmp-final-XXXX
# While save_final renames files into --output: their names, for a run after a kill to clear.
SAVING = f"{TMP_PREFIX}saving-model.json"


def train(config: TrainConfig) -> Path:
    """Train (or finetune) as `config` says; returns the output folder (a transformers model)."""
    return fit_and_release(Trainer.from_config(config))


def fit_and_release(trainer: "Trainer") -> Path:
    """trainer.fit(), then the trainer is freed while the interpreter is whole.

    DistributedDataParallel sits in a reference cycle, so without a collection the wrapper,
    and the gloo process group its reducer holds, live until the interpreter exits; freed
    there, the process group's work objects can abort it: under torchrun in CI the rank that
    had saved the model exited -6 ("terminate called without an active exception") after
    a finished run."""
    try:
        return trainer.fit()
    finally:
        del trainer
        gc.collect()


class Trainer:
    def __init__(self, config: TrainConfig, backend: Backend, encoder: Encoder,
                 model: torch.nn.Module, phases: list[PhaseRun], block_size: int,
                 reporter: Reporter, data_files: dict[str, str] | None = None,
                 evaluation: Evaluation | None = None):
        self.config = config
        self.backend = backend
        self.encoder = encoder
        self.model = model
        self.phases = phases
        self.block_size = block_size
        self.reporter = reporter
        self.optimizer = make_optimizer(model, config, backend.device)
        self.feeds: list[Feed] = [backend.feed(p.sampler, self.host_batch, config.batch_size,
                                               config.grad_accum) for p in phases]
        self.step = 0  # optimizer steps done
        self._data_files = data_files or {}  # data_fingerprints(), written into checkpoints
        self.tokens_seen = 0
        self.tokens_per_step = config.batch_size * config.grad_accum * block_size
        self._diverged: tuple[int, float] | None = None  # (step, loss) of a non-finite logged loss
        self._log_time = time.perf_counter()
        self._log_tokens = 0
        self._output_lock: OutputLock | None = None  # from_config's: held until fit() ends
        self.evaluation = evaluation  # the held-out rows, if the run has any
        self.evaluated: EvalResult | None = None  # the latest evaluation

    @classmethod
    def from_config(cls, config: TrainConfig) -> "Trainer":
        """Build a ready-to-fit trainer; any user error is raised here, before training."""
        backend = select_backend(config.device, config.precision)  # under torchrun: joins the group
        output_lock = None
        if config.progress and not backend.is_writer:
            config = dataclasses.replace(config, progress=False)  # process 0's bars alone
        try:
            failure = None
            try:  # collectives here only where every process gets alike: one that fails must reach agree()
                # A --resume with no checkpoint yet starts afresh: its --batch-size may change.
                resuming = config.resume and latest_checkpoint(config.output_dir) is not None
                backend.check_batch(config.batch_size, resuming=resuming)
                _check_folder(config.output_dir, "--output")
                _check_folder(config.tensorboard_dir, "--tensorboard")
                if backend.is_writer:  # the one process that writes there
                    output_lock = OutputLock(config.output_dir)
                checkpoint = _checkpoint_to_resume(config, backend)
                encoder, added = build_encoder(config)
                plan = plan_model(config, encoder, added)
                block_size = resolve_block_size(config, plan)
                # Before the corpora are read: a batch past the memory was killed unannounced.
                check_batch_memory(config.batch_size, config.grad_accum, block_size,
                                   plan.vocab_size, backend.averaged_over, backend.device)
                state = read_state(checkpoint) if checkpoint else None
                data_files = data_fingerprints(config.data_paths())
                notes = _check_resumable(config, encoder, checkpoint, state, data_files) \
                    if state is not None else []
                reporter = Reporter(config.output_dir, config.total_steps, config.tensorboard_dir,
                                    config.progress, writes=backend.is_writer)
                for note in notes:
                    reporter.write(f"tinygen-train: note: {note}")
                reporter.truncate_after(int(state["step"]) if state is not None else 0)
                with said_by(backend.is_writer):  # every process builds the rows; one warns
                    phases, held_out = cls.make_data(config, encoder, block_size, plan.pad_id)
                    evaluation = Evaluation.build(config, encoder, block_size, plan.pad_id,
                                                  held_out)
                _check_held_out_apart(config, phases, evaluation)
                if state is not None:
                    _check_same_held_out(checkpoint, state, evaluation)
            except Exception as exc:
                failure = exc
            backend.agree(failure)
            set_seed(config.seed)  # before the model: a fresh init depends on it
            backend.seed(config.seed)
            with _loading(checkpoint):
                model = load_model(plan, checkpoint)
            model = backend.place_model(model)
            backend.seed_processes(config.seed)  # data parallel: dropout differs per process
            trainer = cls(config, backend, encoder, model, phases, block_size, reporter, data_files,
                          evaluation)
            trainer._output_lock = output_lock
            if state is not None:
                trainer.restore(checkpoint, state)
        except BaseException:
            if output_lock is not None:
                output_lock.release()
            backend.close()
            raise
        return trainer

    # -- the loop ------------------------------------------------------------

    def fit(self) -> Path:
        total = self.config.total_steps
        self.reporter.start(self.step, resumed=self.config.resume)
        if self.config.progress:
            self.reporter.write(self.describe())
            if self.evaluation is not None:
                self.reporter.write(f"held out: {self.evaluation.describe()}")
        self.model.train()
        self._log_time, self._log_tokens = time.perf_counter(), self.tokens_seen
        try:
            with self.backend.step_end() as step_end:  # torchrun: all stop at one step's end
                while self.step < total:
                    phase = self.phase_at(self.step)
                    lr = phase.lr_at(self.step)
                    for group in self.optimizer.param_groups:
                        group["lr"] = lr
                    loss = self.train_step(self.feeds[phase.index])
                    self.step += 1
                    self.tokens_seen += self.tokens_per_step
                    self.reporter.advance()
                    self.on_step_end(phase, lr, loss)
                    step_end.check()
            if self.evaluation is not None and getattr(self.evaluated, "step", None) != self.step:
                # Resumed from the run's last step, nothing trained: its figures are in
                # metrics.jsonl already; the saved model gets them again.
                self.evaluated = self.run_evaluation()
            return self.save_final()
        finally:
            for feed in self.feeds:
                feed.close()
            self.reporter.close()
            self.backend.close()
            if self._output_lock is not None:
                self._output_lock.release()

    def train_step(self, feed: Feed) -> torch.Tensor:
        """One optimizer step over grad_accum micro-batches; returns its mean loss per target
        token (on device), the loss of one batch of batch_size x grad_accum rows."""
        batches = feed.next_step()  # the whole step up front: its target count weights each part
        # A micro-batch counts by its share of the step's targets, not 1 / grad_accum: padded
        # (--line-by-line) rows hold fewer, and a split must not change what a step trains.
        # Counts stay tensors (no sync; one graph on XLA, where SPMD sums over every chip).
        # Under torchrun each process holds part of the step's rows: all_sum makes the count
        # the step's global one. DDP averages the processes' gradients; scaling each loss by
        # their number makes that average the sum, the gradient of the step's global mean.
        counts = [target_count(batch["labels"]) for batch in batches]
        targets = self.backend.all_sum(torch.stack(counts).sum()).clamp(min=1)
        scale = self.backend.averaged_over
        total = torch.zeros((), device=self.backend.device)
        last = len(batches) - 1
        for i, (batch, count) in enumerate(zip(batches, counts)):
            # DDP all-reduces the gradients once per step, in the last micro-batch's backward.
            with self.backend.accumulating(self.model, sync=i == last):
                loss = self.batch_loss(batch) * (count / targets)
                self.backend.backward(loss * scale if scale > 1 else loss)
            total += loss.detach()
        self.backend.optimizer_step(self.optimizer, self.model.parameters(), self.config.grad_clip)
        self.optimizer.zero_grad(set_to_none=True)
        return self.backend.all_sum(total)  # the whole step's mean, over every process's rows

    def batch_loss(self, batch: HostBatch) -> torch.Tensor:
        """The mean loss per target token of one micro-batch (distillation adds the teacher's)."""
        with self.backend.autocast():
            logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits
        return causal_lm_loss(logits, batch["labels"], batch.get("loss_weights"))

    def on_step_end(self, phase: PhaseRun, lr: float, loss: torch.Tensor) -> None:
        """Log, sample and checkpoint. `self.step` is the number of steps done."""
        cfg = self.config
        last = self.step == cfg.total_steps
        if self.step % cfg.log_every == 0 or last:
            now = time.perf_counter()
            rate = (self.tokens_seen - self._log_tokens) / max(now - self._log_time, 1e-9)
            step, rest = self.step, {"lr": lr, "tokens_per_s": round(rate, 1),
                                     "phase": phase.index, **self.backend.step_metrics()}
            # Reading the loss waits for the device: only on logging steps, so GPUs run ahead
            # in between; on XLA it is read after the step's graph ran (a step closure).
            self.backend.when_ready(loss, lambda value: self._log(step, value, rest))
            self._log_time, self._log_tokens = now, self.tokens_seen
        self._stop_if_diverged()  # on XLA a logged loss is read a step later, at the next sync
        paused = time.perf_counter()
        every = cfg.eval_every
        if self.evaluation is not None and (last or every and self.step % every == 0):
            self.evaluate()  # before the checkpoint, whose metrics.jsonl then holds it
        if cfg.sample_every and self.step % cfg.sample_every == 0:
            # Every process takes part in the copy (on a pod, fetching weights is collective);
            # only the one that prints draws the sample.
            model, backend = self.backend.for_sampling(self.model)
            if self.backend.is_writer:
                text = generate_sample(model, self.encoder, backend, cfg.sample_prompt,
                                       cfg.sample_length, model_window(self.model.config))
                self.reporter.log_sample(self.step, text)
        if cfg.checkpoint_every and (self.step % cfg.checkpoint_every == 0 or last):
            self.save_checkpoint()
        self._log_time += time.perf_counter() - paused  # evaluating, sampling, saving: not training

    def evaluate(self) -> EvalResult:
        """Score the held-out rows (every process takes part) and report it."""
        self.evaluated = self.run_evaluation()
        self.reporter.log_eval(self.evaluated.step, self.evaluated.to_json(),
                               self.evaluated.describe())
        return self.evaluated

    def run_evaluation(self) -> EvalResult:
        return self.evaluation.run(self.backend.unwrap(self.model), self.backend, self.step)

    def _log(self, step: int, loss: float, rest: dict[str, Any]) -> None:
        if not math.isfinite(loss) and self._diverged is None:
            self._diverged = (step, loss)
        self.reporter.log(step, {"loss": loss, **rest})

    def _stop_if_diverged(self) -> None:
        """Stop at a non-finite logged loss. Every process reads the same summed loss, so all
        stop at the same step; the weights are not saved, so the last checkpoint stays good."""
        if self._diverged is not None:
            step, loss = self._diverged
            raise TinygenError(
                f"training diverged: the loss was {loss} at step {step}; lower --lr or set "
                f"--grad-clip (e.g. 1.0), then --resume from the last checkpoint")

    # -- saving and resuming -------------------------------------------------

    def save_checkpoint(self) -> Path:
        """Write a checkpoint of this step (process 0 of a pod slice or torchrun; others wait)."""
        self.backend.flush()  # metrics.jsonl reaches this step before the checkpoint exists
        self._stop_if_diverged()
        # Every process's RNG: data-parallel processes draw different dropout.
        rngs = self.backend.gather(capture_rng(self.backend))
        return self.backend.write_once(f"checkpoint {self.step}",
                                       lambda: self._write_checkpoint(rngs))

    def _write_checkpoint(self, rngs: list[dict[str, Any]]) -> Path:
        state = {
            "tokens_seen": self.tokens_seen,
            "data": [feed.state_dict() for feed in self.feeds],
            "rng": rngs[0],
            **({"process_rng": rngs} if len(rngs) > 1 else {}),
            "backend": self.backend.state_dict(),
            "tokenizer_sha256": self.encoder.fingerprint,
            "replacements_sha256": self.encoder.replacements_fingerprint,
            "config": self.config.resume_identity(),
            # Where the run was: moved with its data (copied to another machine), the paths
            # above are read relative to it (_relocated).
            "output_dir": str(self.config.output_dir.resolve()),
            "optimisation": {**self.config.resume_noted(), "total_steps": self.config.total_steps},
            "data_files": self._data_files,
            "held_out_sha256": self.evaluation.fingerprint() if self.evaluation else None,
        }
        return save_checkpoint(self.config.output_dir, self.step, self.model, self.optimizer, state,
                               self.write_tokenizer, self.config.keep_checkpoints, self.backend)

    def restore(self, checkpoint: Path, state: dict[str, Any]) -> None:
        with _loading(checkpoint):
            load_optimizer(checkpoint, self.optimizer, self.backend.checkpoint_location)
        for feed, sampler_state in zip(self.feeds, state["data"], strict=True):
            feed.load_state_dict(sampler_state)
        rngs = state.get("process_rng") or []
        if self.backend.process < len(rngs):
            restore_rng(rngs[self.backend.process], self.backend)
        else:  # saved by fewer processes: process 0's, then this one's own dropout stream
            restore_rng(state["rng"], self.backend)
            self.backend.seed_processes(self.config.seed + int(state["step"]))
        self.backend.load_state_dict(state["backend"])
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        if self.config.progress:
            self.reporter.write(f"resuming from {checkpoint} (step {self.step})")

    def save_final(self) -> Path:
        """Write the trained model (process 0 of a pod slice or torchrun; the others wait).

        Everything is written into a temp folder inside --output, then renamed into
        place (_move_into_place): train_config.json last, so --output holds one only
        when the whole model is there, and a run killed midway leaves a list of what
        it had moved, which the next run in that folder clears.
        """
        self.backend.flush()
        self._stop_if_diverged()
        out = self.config.output_dir
        evaluated = self.evaluated

        def write() -> None:
            out.mkdir(parents=True, exist_ok=True)
            for stale in out.glob(f"{TMP_PREFIX}{FINAL_TMP}*"):  # left by a kill while saving
                shutil.rmtree(stale, ignore_errors=True)
            tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{FINAL_TMP}", dir=out))
            try:
                save_model_files(self.backend, self.model, tmp)
                check_finite_weights(tmp, self.step)
                self.write_tokenizer(tmp)
                if evaluated is not None:
                    write_result(tmp, evaluated, self.evaluation.what)
                (tmp / TRAIN_CONFIG_FILE).write_text(
                    json.dumps(self.config.to_json(), indent=2) + "\n", encoding="utf-8")
                fsync_tree(tmp)
                _move_into_place(tmp, out)
            except Exception as exc:
                if (reason := write_failure(exc)) is not None:
                    raise TinygenError(f"cannot write the trained model to {out}: {reason}") \
                        from None
                raise
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

        self.backend.write_once("the trained model", write)
        return out

    def write_tokenizer(self, folder: Path) -> None:
        """tokenizer.json with transformers' side files; replacements.json if there are rules."""
        from transformers import PreTrainedTokenizerFast

        tokenizer = self.encoder.tokenizer
        eos = tokenizer.id_to_token(self.encoder.eos_id)
        bos_id = getattr(self.model.config, "bos_token_id", None)
        bos = tokenizer.id_to_token(bos_id) if isinstance(bos_id, int) else None
        # GPT-2 style models have no BOS of their own: EOS doubles as the start of a text.
        PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=eos,
                                bos_token=bos or eos).save_pretrained(folder)
        if self.encoder.replacements.tokens():
            self.encoder.replacements.save(Path(folder))
        # The fields this run trains on; else a schema that travels with its tokenizer (from
        # `tinygen-train tokenizer --field a,b`) or with the finetuned model.
        schema = field_schema(self.config)
        source = self.config.tokenizer.parent if self.config.tokenizer else self.config.model
        if schema is not None:
            schema.save(Path(folder))
        elif source is not None and (source / FIELDS_FILE).is_file() and Path(folder) != source:
            shutil.copyfile(source / FIELDS_FILE, Path(folder) / FIELDS_FILE)

    # -- helpers -------------------------------------------------------------

    @staticmethod
    def make_data(config: TrainConfig, encoder: Encoder, block_size: int,
                  pad_id: int) -> tuple[list[PhaseRun], TokenDataset | None]:
        """The run's phases and their row samplers (distillation draws from its teacher cache),
        and the documents --eval-fraction holds out of their corpora (None without it)."""
        return build_data(config, encoder, block_size, pad_id)

    def phase_at(self, step: int) -> PhaseRun:
        for phase in self.phases:
            if step < phase.start + phase.steps:
                return phase
        return self.phases[-1]

    def host_batch(self, rows: Rows) -> HostBatch:
        """One micro-batch as CPU tensors; the loss weights only where they matter.

        No attention mask, even for padded (line-by-line) rows: their padding comes after
        the text, where causal attention already keeps every text token from seeing it, and
        its predictions have no labels. So the attention takes its fast causal path, and on
        XLA transformers has no mask to read back to the host in every forward. With static
        shapes (XLA) every batch carries weights, so every step has the same tensors and
        compiles once.
        """
        batch = {"input_ids": torch.from_numpy(rows.input_ids),
                 "labels": torch.from_numpy(rows.labels)}
        if self.backend.static_shapes or not np.all(rows.loss_weights == 1.0):
            batch["loss_weights"] = torch.from_numpy(rows.loss_weights)
        return batch

    def describe(self) -> str:
        cfg = self.config
        params = sum(p.numel() for p in self.model.parameters())
        what = f"preset {cfg.preset}" if cfg.preset else f"{cfg.model}"
        return (f"training {what} ({params / 1e6:.1f}M parameters) on {self.backend.describe()} "
                f"{self.backend.precision}: {cfg.total_steps} steps x "
                f"{self.tokens_per_step:,} tokens")


def make_optimizer(model: torch.nn.Module, config: TrainConfig,
                   device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices and embeddings only, not on biases and norms (as nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # lr is set before every step from the schedule; fused kernels where CUDA has them.
    return torch.optim.AdamW(groups, lr=0.0, betas=config.adam_betas, fused=device.type == "cuda")


def set_seed(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # every device's generator too


def _move_into_place(tmp: Path, out: Path) -> None:
    """Rename the saved model's files from `tmp` into `out`: the others, the weight shards,
    their index, and train_config.json, the mark of a whole model, last. SAVING lists them
    meanwhile; a replaced model's train_config.json (a resumed run saving again) goes first."""
    names = sorted((p.name for p in tmp.iterdir()), key=_rename_order)  # train_config.json last
    atomic_write_text(out / SAVING, json.dumps({"files": names}) + "\n")
    (out / TRAIN_CONFIG_FILE).unlink(missing_ok=True)
    fsync_dir(out)
    for name in names[:-1]:
        os.replace(tmp / name, out / name)
    fsync_dir(out)  # every other file is there before the mark of a whole model
    os.replace(tmp / TRAIN_CONFIG_FILE, out / TRAIN_CONFIG_FILE)
    fsync_dir(out)
    (out / SAVING).unlink()


def _rename_order(name: str) -> tuple[bool, bool, bool, str]:
    weights = ".safetensors" in name or name.endswith(".bin")
    return name == TRAIN_CONFIG_FILE, weights, name.endswith(".index.json"), name


def _unfinished_save(out: Path) -> list[str] | None:
    """The files a final save killed while renaming them into `out` left there, or None when
    no save stopped midway. SAVING names what it was moving; with train_config.json, renamed
    last, present, the save finished (it was killed before removing SAVING)."""
    try:
        record = json.loads((out / SAVING).read_text(encoding="utf-8"))
        names = [str(name) for name in record["files"]]
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError, KeyError, TypeError):
        raise TinygenError(f"{out / SAVING} is damaged; delete it (and the model files beside "
                           f"it, from a save that did not finish) to train into {out}") from None
    if (out / TRAIN_CONFIG_FILE).exists():
        return None
    # Plain names in `out` only: the list is ours, but nothing outside the folder is deleted.
    return [name for name in names
            if name == Path(name).name and not name.startswith(".") and (out / name).is_file()]


def _clear_unfinished_save(out: Path, names: list[str]) -> None:
    for name in names:
        (out / name).unlink(missing_ok=True)
    (out / SAVING).unlink(missing_ok=True)  # last: another process reads it to know the files
    if names:
        shown = ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")
        print(f"tinygen-train: note: removed {shown} from {out}: the start of a final save "
              f"that did not finish (the run was killed while saving the model)", file=sys.stderr)


def _checkpoint_to_resume(config: TrainConfig, backend: Backend) -> Path | None:
    skipped: list[str] = []  # damaged newer checkpoints
    latest = resume_point(config.output_dir, backend, skipped.append)  # the same on every host
    unfinished = _unfinished_save(config.output_dir)  # a run killed while saving its model
    if latest is not None and not config.resume:
        if unfinished is not None:
            raise TinygenError(f"{config.output_dir}: its run was killed while saving the model; "
                               f"pass --resume to finish it")
        raise TinygenError(
            f"{config.output_dir} already has checkpoints; pass --resume to continue that run, "
            f"or choose another --output"
        )
    if backend.is_writer:
        for line in skipped:
            print(f"tinygen-train: note: {line}", file=sys.stderr)
    if latest is None:  # a run starts here: it must not write over what the folder holds
        _check_fresh_output(config, unfinished or [])
        if config.resume and backend.is_writer:
            print(f"tinygen-train: note: --resume: {config.output_dir} has no checkpoint yet; "
                  f"training starts at step 0", file=sys.stderr)
    if unfinished is not None and backend.is_writer:
        _clear_unfinished_save(config.output_dir, unfinished)
    return latest


def _check_fresh_output(config: TrainConfig, unfinished: Iterable[str] = ()) -> None:
    """The output folder of a new run: new, empty, or what a run killed before its first
    checkpoint left (metrics, temp files, the `unfinished` files of a final save that
    stopped midway). A trained model, an export or data is refused: the run would
    overwrite or mix with it."""
    out = config.output_dir
    if not out.exists():  # _check_folder made sure that one that exists is a folder
        return
    # Its own inputs may live there too: distill writes the teacher's texts (and their
    # settings, NAME.settings.json) or cache first.
    inside = [Path(p).name for p in (config.tensorboard_dir, *config.data_paths())
              if p is not None and Path(p).parent.resolve() == out.resolve()]
    left = {METRICS_FILE, "checkpoints", *unfinished, *inside}
    others = sorted(p.name for p in out.iterdir()
                    if p.name not in left and not p.name.startswith(TMP_PREFIX)
                    and not any(p.name.startswith(name + ".") for name in inside))
    if TRAIN_CONFIG_FILE in others and not any(".safetensors" in name or name.endswith(".bin")
                                               for name in others):
        # Saved before train_config.json was renamed last: a save killed midway.
        raise TinygenError(f"{out} holds {TRAIN_CONFIG_FILE} but no weights: the model's save "
                           f"did not finish; delete {out} to train again")
    if TRAIN_CONFIG_FILE in others:
        raise TinygenError(f"{out} already holds a trained model; choose another --output "
                           f"(or delete it to train it again)")
    if others:
        raise TinygenError(f"{out} holds {others[0]}{' and more' if len(others) > 1 else ''}, which is "
                           f"not a training run's; choose a new or empty --output")


def _check_resumable(config: TrainConfig, encoder: Encoder, checkpoint: Path,
                     state: dict[str, Any], data_files: dict[str, str]) -> list[str]:
    """Refuse a resume that would train on other rows or tokens; returns a note for each
    optimisation option changed on purpose."""
    # A run moved with its data reads its paths where they are now; one moved alone, as they were.
    relocate = _relocated(state.get("output_dir"), config.output_dir)
    saved = state.get("config", {})
    for name, value in config.resume_identity().items():
        # A checkpoint from before `name` was recorded (errors) cannot tell: not a mismatch.
        if name in saved and saved[name] != value and not (
                name in PATH_OPTIONS and relocate(saved[name]) == value):
            raise TinygenError(
                f"cannot resume {checkpoint}: it was trained with {name}={_shown(saved.get(name))}, "
                f"this run has {_shown(value)}; keep the options or start a new --output"
            )
    if state.get("tokenizer_sha256") != encoder.fingerprint:
        raise TinygenError(f"cannot resume {checkpoint}: its tokenizer differs from this run's")
    # Same replacements path, other rules (the file edited): other tokens from the same text.
    if state.get("replacements_sha256") != encoder.replacements_fingerprint:
        raise TinygenError(
            f"cannot resume {checkpoint}: its replacement rules differ from this run's; "
            f"restore the rules it was trained with or start a new --output")
    if len(state.get("data", [])) != len(config.resolved_phases()):
        raise TinygenError(f"cannot resume {checkpoint}: it has a different number of phases")
    _check_steps_left(config, checkpoint, int(state["step"]))
    recorded = state.get("data_files")
    if recorded is not None:
        recorded = {path if path in data_files or relocate(path) not in data_files
                    else relocate(path): digest for path, digest in recorded.items()}
    for path, digest in (recorded or {}).items():  # older checkpoints: none
        if path not in data_files and Path(path).exists():
            continue  # a file the reader skips (hidden), which older checkpoints listed too
        if data_files.get(path) != digest:
            raise TinygenError(f"cannot resume {checkpoint}: {path} changed since it was written "
                               f"(other rows would follow); restore it or start a new --output")
    added = sorted(set(data_files) - set(recorded)) if recorded is not None else []
    if added:
        raise TinygenError(f"cannot resume {checkpoint}: {added[0]} was added to the corpus "
                           f"since it was written (other rows would follow); remove it or start "
                           f"a new --output")
    old = state.get("optimisation") or {}
    notes = [f"resuming with {name}={_shown(value)} where the checkpoint's run had "
             f"{_shown(old[name])}: the losses from here are not an uninterrupted run's"
             for name, value in config.resume_noted().items() if name in old and old[name] != value]
    if int(state["step"]) == config.total_steps:  # e.g. killed while saving the final model
        return notes + [f"{checkpoint.name} is the run's last step: nothing to train, "
                        f"its weights are saved as the trained model"]
    steps = old.get("total_steps")  # older checkpoints: not recorded
    if steps is not None and steps != config.total_steps and config.lr_schedule != "constant":
        notes.append(f"resuming with {config.total_steps} steps where the checkpoint's run had {steps}: "
                     f"the {config.lr_schedule} learning-rate schedule stretches to the new length, so "
                     f"the losses from here are not an uninterrupted {config.total_steps}-step run's")
    return notes


# The options of TrainConfig.resume_identity that hold paths (data and phases: in their items).
PATH_OPTIONS = ("model", "tokenizer", "replacements", "data", "phases", "eval_data")


def _relocated(was: str | None, out: Path) -> Callable[[Any], Any]:
    """Maps the absolute paths a checkpoint recorded (its options, its corpus files) to where
    they would be had they moved with the run's folder (`was`: where it was; older checkpoints
    did not say): a project copied elsewhere whole, its data beside its run, resumes there."""
    now = str(out.resolve())
    if was is None or was == now:
        return lambda value: value

    def moved(value: Any) -> Any:
        if isinstance(value, str) and os.path.isabs(value):
            return os.path.normpath(os.path.join(now, os.path.relpath(value, was)))
        if isinstance(value, dict):
            return {k: moved(v) for k, v in value.items()}
        if isinstance(value, list):
            return [moved(v) for v in value]
        return value
    return moved


def _check_same_held_out(checkpoint: Path, state: dict[str, Any],
                         evaluation: Evaluation | None) -> None:
    """The same held-out rows as the checkpoint's run scored, so its evaluations go on alike
    (the options and files are checked already; this is what they made of them)."""
    recorded = state.get("held_out_sha256")
    if recorded is not None and evaluation is not None and recorded != evaluation.fingerprint():
        raise TinygenError(f"cannot resume {checkpoint}: its run held out other text than this "
                           f"one would; keep the options or start a new --output")


def _check_held_out_apart(config: TrainConfig, phases: list[PhaseRun],
                          evaluation: Evaluation | None) -> None:
    """--eval-data with the very tokens of a training corpus (the text of a token cache trained
    on, or a copy of the corpus) scores text the model trains on: no held-out figure at all.
    The same path is refused with the options; this catches the same text under another."""
    if config.eval_data is None or evaluation is None:
        return
    held = evaluation.rows.dataset
    samplers = [phase.sampler for phase in phases]
    while samplers:
        sampler = samplers.pop()
        samplers += getattr(sampler, "samplers", [])  # a blend's corpora
        trained = getattr(sampler, "dataset", None)  # a teacher cache's blocks have none
        if isinstance(trained, TokenDataset) and trained.num_tokens == held.num_tokens \
                and np.array_equal(trained.tokens, held.tokens):
            raise TinygenError(f"--eval-data {config.eval_data.path} holds the same text as the "
                               f"training corpus {trained.name}, so it is not held out; give "
                               f"other text, or hold out part of the corpora with --eval-fraction")


def _check_steps_left(config: TrainConfig, checkpoint: Path, done: int) -> None:
    """A resume trains on from the checkpoint's step: fewer steps would train nothing and
    save the checkpoint's weights as a model of fewer steps than they had."""
    total = config.total_steps
    if done > total:
        steps = f"the phases' {total} steps" if config.phases else f"--steps {total}"
        raise TinygenError(f"the checkpoint {checkpoint.name} is at step {done}, beyond {steps}: "
                           f"ask for at least {done} (more to train further)")


class OutputLock:
    """An exclusive flock on the output folder (made here if new) for the length of a run.

    Two runs in one folder at once would both write checkpoints, metrics.jsonl and the
    model: a mix of two runs, and no error. The lock goes with the process, however it ends;
    a folder this made is removed again when the run fails to start (release)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.made = not folder.exists()
        self.fd = None
        try:
            import fcntl
        except ImportError:  # Windows: no flock, no lock
            return
        try:
            folder.mkdir(parents=True, exist_ok=True)
            self.fd = os.open(folder, os.O_RDONLY)
        except OSError as exc:
            raise TinygenError(f"cannot create --output {folder}: {exc.strerror or exc}") from None
        for _ in range(2):
            try:
                fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                # Maybe a trainer this process made and dropped unfitted, its lock not yet
                # collected (trainers sit in reference cycles): collected, it lets go.
                gc.collect()
            except OSError:  # a filesystem without flock: run unlocked, as before
                return
        os.close(self.fd)
        self.fd = None
        raise TinygenError(f"{folder} is in use by another training run; wait for it to end, "
                           f"or choose another --output")

    def __del__(self) -> None:  # a trainer dropped unfitted lets go of the folder too
        self.release()

    def release(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.made:
            self.made = False
            with contextlib.suppress(OSError):  # only while empty: a run that wrote keeps it
                self.folder.rmdir()


def _check_folder(path: Path | None, flag: str) -> None:
    """Before any work: a folder the run creates or writes into is not, nor is inside, a file."""
    if path is None:
        return
    blocking = path if path.exists() and not path.is_dir() else file_in_the_way(path)
    if blocking is not None:
        where = "" if blocking == path else f": {blocking}"
        raise TinygenError(f"{flag} {path}{where} is a file, not a folder; choose another {flag}")


@contextlib.contextmanager
def _loading(checkpoint: Path | None):
    """A checkpoint whose files fail to load (one too old to record digests, damaged since):
    one line. Only a file's faults: out of memory, say, is no reason to set it aside."""
    from safetensors import SafetensorError

    try:
        yield
    except (OSError, EOFError, ValueError, SafetensorError, RuntimeError) as exc:
        torn_zip = isinstance(exc, RuntimeError) and "PytorchStreamReader" in str(exc)
        if checkpoint is None or isinstance(exc, TinygenError) or \
                (isinstance(exc, RuntimeError) and not torn_zip):
            raise
        raise TinygenError(f"cannot load checkpoint {checkpoint} ({first_line(exc)}); move it "
                           f"out of the checkpoints folder to resume from the one before") from None


def _shown(value: Any) -> str:
    return "the default" if value is None else repr(value)


def data_fingerprints(paths: list[Path]) -> dict[str, str]:
    """Each corpus file's size and ends (tinygen.file_digest), by absolute path; a folder's
    files each, those the reader reads (data/sources.py skips hidden ones). A resume compares
    them: the sampler's place in a corpus that changed would be another run's."""
    files = []
    for path in paths:
        path = Path(path).resolve()
        if not path.is_dir():
            files.append(path)
            continue
        with contextlib.suppress(TinygenError):  # no files: the data loader's one-line error
            files += corpus_files(path)
    # A missing corpus is skipped here: it is the data loader's one-line error.
    return {str(path): ends_digest(path) for path in files if path.is_file()}
