"""Held-out evaluation: the mean loss per target token over fixed rows the run never trains on.

The rows come from --eval-data, or from the documents --eval-fraction holds out
of the training corpora (data/holdout.py). Every evaluation scores the same rows
(all of them, or --eval-batches batches spread evenly over them), with the model
in eval mode and no gradients; perplexity is exp(loss). The loss is the plain
cross-entropy, unweighted (corpus loss weights and recency shape training, not
the score), for distillation too: teacher logits exist for the cache alone.

The batches go through the backend's own feed, so each backend evaluates the way
it trains: under torchrun each process scores its share of every batch and the
sums are added up (all_sum); on XLA the batch is sharded over the chips like a
training batch, every batch has the same shape (the last one is filled with rows
that predict nothing), the graph is cut after each batch, and the one value read
back per evaluation waits for the step closure at the end (when_ready, flush).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.dataset import IGNORE_INDEX, Rows, TokenDataset
from ..data.encoder import Encoder
from ..data.holdout import EvalRows
from .config import TrainConfig
from .device import Backend
from .feed import HostBatch
from .loss import causal_lm_loss, target_count

EVAL_FILE = "eval_results.json"  # beside the trained model: its held-out figures


@dataclass(frozen=True)
class EvalResult:
    step: int
    loss: float  # mean cross-entropy per held-out target token, in nats
    tokens: int  # target tokens scored

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss) if self.loss < 700 else math.inf  # exp overflows past ~709

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "eval_loss": self.loss, "eval_perplexity": self.perplexity,
                "eval_tokens": self.tokens}

    def describe(self) -> str:
        return f"held-out loss {self.loss:.4f}, perplexity {self.perplexity:.2f}"


class Evaluation:
    """The run's held-out rows and how many of them an evaluation scores."""

    def __init__(self, rows: EvalRows, batch_size: int, max_batches: int | None, what: str):
        self.rows = rows
        self.batch_size = batch_size
        self.what = what  # where the rows come from, for the run's description
        count = len(rows)
        if max_batches is not None and max_batches * batch_size < count:
            # Spread evenly over the held-out text rather than its first rows.
            take = max_batches * batch_size
            self.order = np.arange(take, dtype=np.int64) * count // take
        else:
            self.order = np.arange(count, dtype=np.int64)
        self.batches = -(-len(self.order) // batch_size)
        self.targets = rows.targets(self.order)

    @classmethod
    def build(cls, config: TrainConfig, encoder: Encoder, block_size: int, pad_id: int,
              held_out: TokenDataset | None) -> "Evaluation | None":
        """From --eval-data (encoded like a corpus, or a token cache), else from `held_out`
        (the documents --eval-fraction kept from the corpora); None without either."""
        if config.eval_data is not None:
            source = config.eval_data
            dataset = TokenDataset.from_path(source.path, encoder, field=source.field,
                                             errors=config.errors,
                                             line_by_line=config.line_by_line,
                                             progress=config.progress)
            what = f"--eval-data {source.path}"
        elif held_out is not None:
            dataset = held_out
            what = f"the documents --eval-fraction {config.eval_fraction} holds out"
        else:
            return None
        rows = EvalRows(dataset, block_size, config.line_by_line, pad_id)
        return cls(rows, config.batch_size, config.eval_batches, what)

    def describe(self) -> str:
        return (f"{len(self.order):,} rows ({self.targets:,} tokens) of {self.what}, "
                f"{self.batches} batch{'es' * (self.batches != 1)} an evaluation")

    def run(self, model: torch.nn.Module, backend: Backend, step: int) -> EvalResult:
        """Score the rows with `model` (the bare one, not DDP's wrapper: nothing here needs
        its gradient hooks), in eval mode and without gradients; train mode again after."""
        was_training = model.training
        model.eval()
        feed = backend.feed(_InOrder(self.rows, self.order), _batch, self.batch_size, 1)
        total = torch.zeros((), device=backend.device)
        try:
            with torch.no_grad():
                for _ in range(self.batches):
                    batch = feed.next_step()[0]
                    with backend.autocast():
                        logits = model(input_ids=batch["input_ids"], use_cache=False).logits
                    labels = batch["labels"]
                    total = total + causal_lm_loss(logits, labels) * target_count(labels)
                    backend.flush()  # XLA: one graph per batch, not one over every batch
        finally:
            feed.close()
            model.train(was_training)
        found: list[float] = []
        backend.when_ready(backend.all_sum(total), found.append)
        backend.flush()  # XLA reads it at this sync; the others have already
        return EvalResult(step, found[0] / max(self.targets, 1), self.targets)

    def fingerprint(self) -> str:
        return self.rows.fingerprint


class _InOrder:
    """The rows evaluated, in order, as a sampler for the backend's feed. Past the end come
    copies of the first row that predict nothing: the last batch keeps its shape, and XLA's
    loader, which reads ahead, finds rows."""

    def __init__(self, rows: EvalRows, order: np.ndarray):
        self.rows = rows
        self.order = order
        self.block_size = rows.block_size
        self.at = 0

    def next_rows(self, n: int) -> Rows:
        index = self.order[self.at:self.at + n]
        self.at += len(index)
        parts = [self.rows.rows(index)] if len(index) else []
        if len(index) < n:
            first = self.rows.rows(self.order[:1])
            filler = Rows(first.input_ids, np.full_like(first.labels, IGNORE_INDEX),
                          first.attention_mask, np.zeros_like(first.loss_weights))
            parts.append(Rows.concat([filler] * (n - len(index))))
        return Rows.concat(parts)

    def state_dict(self) -> dict[str, Any]:
        return {"at": self.at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.at = int(state["at"])


def _batch(rows: Rows) -> HostBatch:
    """input_ids and labels; no mask, as in training (Trainer.host_batch says why)."""
    return {"input_ids": torch.from_numpy(rows.input_ids), "labels": torch.from_numpy(rows.labels)}


def write_result(folder: Path, result: EvalResult, what: str) -> None:
    record = {**result.to_json(), "eval_source": what}
    (folder / EVAL_FILE).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_result(folder: Path) -> dict[str, Any] | None:
    """The trained model's eval_results.json, or None where it has none (or it is unreadable)."""
    try:
        record = json.loads((Path(folder) / EVAL_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
