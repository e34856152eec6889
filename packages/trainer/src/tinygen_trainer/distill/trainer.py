"""Logit distillation: the training loop with the teacher's top-k logits as a second target.

loss = kd_weight * KL(teacher || student) at `temperature` + (1 - kd_weight) * cross-entropy

The rows are the teacher cache's blocks, drawn in a seeded order per epoch like
any sampler's, so checkpoints, resume, TensorBoard and every backend work as in
plain training: DistillTrainer only swaps the rows and the loss. A held-out
evaluation (--eval-data) scores the student's plain cross-entropy, which needs
no teacher.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from tinygen.errors import TinygenError

from ..data.blend import derive_seed
from ..data.dataset import Rows, _EpochSampler
from ..data.encoder import Encoder
from ..export.source import load_causal_lm
from ..folder_tokenizer import model_tokenizer
from ..training.config import DataSource, TrainConfig
from ..training.feed import HostBatch
from ..training.loop import Trainer, fit_and_release
from ..training.loss import causal_lm_loss
from ..training.setup import PhaseRun, phase_schedule
from .loss import topk_kl
from .teacher import refuse_other_tokenizer
from .teacher_cache import TeacherBlocks, TeacherCache


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    # The teacher cache to learn from (tinygen-train teacher-cache); it is the training data.
    teacher_cache: Path | None = None
    # Share of the loss from matching the teacher; the rest is the usual cross-entropy.
    kd_weight: float = 0.9
    # Softens both distributions before comparing them; the KL term is scaled by T^2.
    temperature: float = 1.0
    # Start the student's token embeddings from this teacher's (a transformers folder),
    # projected onto their top principal directions to the student's width; None: random.
    teacher_embeddings: Path | None = None

    # A resume must keep the teacher and the loss, as well as the rows.
    RESUME_FIXED = TrainConfig.RESUME_FIXED + ("teacher_cache", "kd_weight", "temperature",
                                               "teacher_embeddings")

    def __post_init__(self) -> None:
        if self.teacher_embeddings is not None:
            object.__setattr__(self, "teacher_embeddings", Path(self.teacher_embeddings))
        if self.teacher_cache is not None:
            object.__setattr__(self, "teacher_cache", Path(self.teacher_cache))
            if not self.data and not self.phases:
                object.__setattr__(self, "data", (DataSource(self.teacher_cache),))
            if self.block_size is None:  # the rows are the cache's blocks
                object.__setattr__(self, "block_size", _cache_block_size(self.teacher_cache))
        super().__post_init__()

    def _validate(self) -> None:
        if self.teacher_cache is None:
            raise TinygenError("distillation needs a teacher cache (--teacher-cache DIR)")
        super()._validate()
        if self.phases:
            raise TinygenError("distillation trains on its teacher cache; phases do not apply")
        if self.line_by_line:
            raise TinygenError("distillation trains on the cache's blocks; drop --line-by-line")
        # TeacherSampler weights every cached position alike: it has no place in the corpus to
        # ramp by, and a weight on the one source would only rescale the cross-entropy term.
        if self.recency != 1.0:
            raise TinygenError("distillation draws the cache's blocks without their place in the "
                               "corpus, so recency cannot weight them; drop --recency")
        if self.eval_fraction is not None:
            raise TinygenError("distillation trains on every block of its teacher cache, so "
                               "--eval-fraction cannot hold documents out; give held-out text "
                               "with --eval-data")
        if any(source.loss_weight != 1.0 for source in self.data):
            raise TinygenError("distillation weights every position of the teacher cache alike; "
                               "drop --loss-weights")
        if not (isinstance(self.kd_weight, (int, float)) and 0 <= self.kd_weight <= 1):
            raise TinygenError(f"kd_weight must be in [0, 1], got {self.kd_weight!r}")
        t = self.temperature
        if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
            raise TinygenError(f"temperature must be > 0, got {t!r}")


@dataclass(frozen=True)
class TeacherRows(Rows):
    teacher_ids: np.ndarray  # (n, T, k) int64
    teacher_logits: np.ndarray  # (n, T, k) float32


class TeacherSampler(_EpochSampler):
    """The cache's blocks in a seeded random order, reshuffled every epoch."""

    def __init__(self, blocks: TeacherBlocks, seed: int):
        super().__init__(seed, len(blocks))
        self.blocks = blocks
        self.block_size = int(blocks.tokens.shape[1])

    def _make_plan(self, rng: np.random.Generator) -> np.ndarray:
        return rng.permutation(self.epoch_size)

    def next_rows(self, n: int) -> TeacherRows:
        order = self._draw(n)
        ids = self.blocks.tokens[order].astype(np.int64)
        return TeacherRows(ids, ids.copy(), np.ones(ids.shape, dtype=bool),
                           np.ones(ids.shape, dtype=np.float32),
                           self.blocks.ids[order].astype(np.int64),
                           self.blocks.logits[order].astype(np.float32))


def open_cache_for(config: DistillConfig, encoder: Encoder) -> TeacherCache:
    """The run's teacher cache, checked against the student's tokenizer and block size."""
    cache = TeacherCache.open(config.teacher_cache)
    refuse_other_tokenizer(config.teacher_cache, cache.manifest, encoder)
    if config.block_size not in (None, cache.block_size):
        raise TinygenError(f"--block-size {config.block_size} differs from the teacher cache's "
                           f"blocks ({cache.block_size}); leave it out")
    return cache


def _cache_block_size(folder: Path) -> int | None:
    try:
        return int(TeacherCache.open(folder).block_size)
    except (TinygenError, KeyError, TypeError, ValueError):
        return None  # make_data says what is wrong with the cache


class DistillTrainer(Trainer):
    config: DistillConfig

    @classmethod
    def from_config(cls, config: DistillConfig) -> "DistillTrainer":
        trainer = super().from_config(config)
        if config.teacher_embeddings is not None and trainer.step == 0:  # a resume has its own
            embedding = trainer.model.get_input_embeddings().weight
            vocab = trainer.encoder.tokenizer.get_vocab(with_added_tokens=True)
            table = projected_embeddings(config.teacher_embeddings, embedding.shape[0],
                                         embedding.shape[1], vocab)
            with torch.no_grad():
                embedding.copy_(table.to(embedding.device))
        return trainer

    @staticmethod
    def make_data(config: DistillConfig, encoder: Encoder, block_size: int,
                  pad_id: int) -> tuple[list[PhaseRun], None]:
        """One phase over the cache's blocks; nothing held out of it (_validate refuses
        eval_fraction: held-out text comes as eval_data)."""
        cache = open_cache_for(config, encoder)
        sampler = TeacherSampler(cache.load(), derive_seed(config.seed, 0, 0))
        phase = config.resolved_phases()[0]
        return [PhaseRun(0, 0, phase.steps, phase_schedule(config, phase), sampler)], None

    def host_batch(self, rows: TeacherRows) -> HostBatch:
        batch = super().host_batch(rows)
        batch["teacher_ids"] = torch.from_numpy(rows.teacher_ids)
        batch["teacher_logits"] = torch.from_numpy(rows.teacher_logits)
        return batch

    def batch_loss(self, batch: HostBatch) -> torch.Tensor:
        with self.backend.autocast():
            logits = self.model(input_ids=batch["input_ids"], use_cache=False).logits
        w = float(self.config.kd_weight)
        loss = 0.0
        if w > 0:
            loss = w * topk_kl(logits, batch["teacher_ids"], batch["teacher_logits"],
                               self.config.temperature)
        if w < 1:  # kd_weight 0 is the plain student on the same rows: the baseline
            loss = loss + (1 - w) * causal_lm_loss(logits, batch["labels"],
                                                   batch.get("loss_weights"))
        return loss


def projected_embeddings(teacher: Path, vocab_size: int, width: int,
                         vocab: dict[str, int] | None = None) -> torch.Tensor:
    """The teacher's (vocab, d) token embeddings on their top `width` principal directions.

    With a shared tokenizer the teacher's embeddings already place every token, rare ones
    included, which a small student would otherwise have to learn from few occurrences;
    most of a small student's parameters are that table (DistilBERT starts from its
    teacher's weights for the same reason). The SVD keeps the directions of most variance.
    `vocab` (the student's token -> id) is checked against the teacher's tokenizer.
    """
    if vocab is not None:
        _check_same_tokens(Path(teacher), vocab)
    model = load_causal_lm(Path(teacher), f"--teacher-embeddings {teacher}")
    table = model.get_input_embeddings().weight.detach()
    if table.shape[0] < vocab_size:
        raise TinygenError(f"--teacher-embeddings {teacher}: {table.shape[0]} token embeddings, "
                           f"the student has {vocab_size}; they must share the tokenizer")
    if width > table.shape[1]:
        raise TinygenError(f"--teacher-embeddings: the student ({width} dims) is wider than "
                           f"the teacher ({table.shape[1]})")
    table = table[:vocab_size]
    _, _, basis = torch.linalg.svd(table - table.mean(0), full_matrices=False)
    return table @ basis[:width].T


def _check_same_tokens(teacher: Path, vocab: dict[str, int]) -> None:
    # Another tokenizer of the same size passed the row count and gave tokens others' rows.
    theirs = model_tokenizer(teacher)
    if theirs is None:  # no tokenizer to check against
        return
    theirs = theirs.get_vocab(with_added_tokens=True)
    by_id = {i: token for token, i in theirs.items()}
    other = sum(1 for token, i in vocab.items() if by_id.get(i, token) != token)
    if other:
        raise TinygenError(f"--teacher-embeddings {teacher}: its tokenizer differs from the "
                           f"student's ({other} of {len(vocab)} ids are other tokens); the "
                           f"embeddings need the same tokenizer")


def distill(config: DistillConfig) -> Path:
    """Train the student `config` describes on its teacher cache; returns the output folder."""
    return fit_and_release(DistillTrainer.from_config(config))


def mean_topk_kl(model: torch.nn.Module, blocks: TeacherBlocks, limit: int = 32,
                 batch_size: int = 8, temperature: float = 1.0) -> float:
    """The student's mean KL to the teacher over the cache's first `limit` blocks."""
    model.eval()
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for start in range(0, min(limit, len(blocks)), batch_size):
            end = min(start + batch_size, limit, len(blocks))
            ids = torch.from_numpy(blocks.tokens[start:end].astype(np.int64)).to(device)
            logits = model(input_ids=ids, use_cache=False).logits
            kl = topk_kl(logits, torch.from_numpy(blocks.ids[start:end].astype(np.int64)).to(device),
                         torch.from_numpy(blocks.logits[start:end].astype(np.float32)).to(device),
                         temperature)
            total += float(kl) * (end - start)
            count += end - start
    return total / max(count, 1)
