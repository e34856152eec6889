"""Everything a run needs, resolved from a TrainConfig, with every user error raised up front.

The order is cheapest check first: tokenizer and model config (vocabulary,
context window) before encoding the corpus, the corpus before loading weights.
So a bad option fails in seconds, never after an hour of encoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from tinygen.errors import TinygenError
from tinygen.fields import FieldSchema
from tinygen.replacements import FILE_NAME as REPLACEMENTS_FILE
from tinygen.replacements import Replacements

from ..data.blend import BlendSampler, derive_seed
from ..data.dataset import RecordSampler, Sampler, TokenDataset, WindowSampler
from ..data.encoder import Encoder, find_eos_id, load_tokenizer
from ..data.holdout import hold_out, join
from ..export.source import check_model_folder, folder_kind, load_causal_lm
from ..folder_tokenizer import model_tokenizer
from ..notices import warn
from .config import FINETUNE_LR, MAX_DEFAULT_BLOCK, DataSource, Phase, TrainConfig
from .presets import PRESETS
from .schedule import LRSchedule


@dataclass
class PhaseRun:
    """A phase placed on the run's step axis, with its rows and learning rate."""

    index: int
    start: int  # first global step of the phase
    steps: int
    schedule: LRSchedule  # indexed by step - start
    sampler: Sampler

    def lr_at(self, step: int) -> float:
        return self.schedule(step - self.start)


@dataclass(frozen=True)
class ModelPlan:
    """The model before its weights: where they come from and its transformers config."""

    hf_config: Any  # transformers.PretrainedConfig
    source: Path | None  # weights to load; None: fresh init from the preset
    vocab_size: int  # rows the embedding must have (resized when larger than the config's)
    window: int  # context window in tokens
    pad_id: int


def build_encoder(config: TrainConfig) -> tuple[Encoder, int]:
    """The run's encoder, and how many tokens it added for replacement rules."""
    if config.model is not None and config.model.is_file():  # its weights or config, say
        raise TinygenError(f"--model {config.model} is a file; give the model's folder, "
                           f"{config.model.parent}")
    if config.model is not None and not config.model.is_dir():
        raise TinygenError(f"model folder not found: {config.model}")
    if config.model is not None and not (config.model / "config.json").is_file():
        load_hf_config(config.model)  # what the folder is, before asking for its tokenizer
    tokenizer_path = config.tokenizer or (config.model / "tokenizer.json")
    # The model's own: as its export will write it (built, where it ships vocab.json + merges.txt)
    tokenizer = load_tokenizer(config.tokenizer) if config.tokenizer is not None else \
        model_tokenizer(config.model)
    if tokenizer is None:
        raise TinygenError(f"{config.model}: has no tokenizer.json; pass --tokenizer FILE")
    source = str(tokenizer_path) if tokenizer_path.is_file() else str(config.model)
    replacements = _replacements(config, tokenizer_path)
    missing = sorted(t for t in replacements.tokens() if tokenizer.token_to_id(t) is None)
    schema = field_schema(config)
    # After the replacement tokens, so a run without fields keeps the ids it always had.
    missing += [t for t in (schema.tokens() if schema else ()) if tokenizer.token_to_id(t) is None]
    if missing:
        # Finetuning a model whose tokenizer predates the rules or the fields (or a tokenizer
        # trained without --field): the tokens become new special tokens, and the model's
        # embedding grows to hold them. Otherwise `<|title|>` would be trained as 9 byte pieces.
        tokenizer.add_special_tokens(missing)
    eos_id = _eos_id(config, tokenizer, source)
    return Encoder(tokenizer, eos_id, replacements), len(missing)


def field_schema(config: TrainConfig) -> FieldSchema | None:
    """The records' fields (`--field title,keywords,body`) the run trains on, if any: one
    schema per model, since its fields.json tells generation how records are written."""
    schemas = {schema for phase in config.resolved_phases() for source in phase.data
               if (schema := FieldSchema.parse(source.field) if source.field else None)}
    if len(schemas) > 1:
        names = sorted(",".join(s.names) for s in schemas)
        raise TinygenError(f"the corpora use different fields ({' and '.join(names)}); "
                           f"a model is trained on one set of fields")
    return next(iter(schemas), None)


def plan_model(config: TrainConfig, encoder: Encoder, added_tokens: int = 0) -> ModelPlan:
    """`added_tokens`: how many ids build_encoder appended for replacement rules and fields."""
    if config.preset is not None:
        hf_config = PRESETS[config.preset].build_config(encoder.vocab_size, encoder.eos_id)
        source = None
    else:
        hf_config = load_hf_config(config.model)
        check_model_folder(config.model)  # LM head, whole weights: before the corpus is encoded
        source = config.model
        if encoder.vocab_size - added_tokens > hf_config.vocab_size:
            raise TinygenError(
                f"tokenizer has {encoder.vocab_size} ids but {config.model} has only "
                f"{hf_config.vocab_size} embeddings; use the model's own tokenizer"
            )
        _check_same_ids(config, encoder)
    window = model_window(hf_config)
    pad = getattr(hf_config, "pad_token_id", None)
    return ModelPlan(hf_config, source, max(encoder.vocab_size, hf_config.vocab_size), window,
                     pad if isinstance(pad, int) else encoder.eos_id)


def _check_same_ids(config: TrainConfig, encoder: Encoder) -> None:
    """Finetuning with another --tokenizer: it must give each of the model's own tokens the id
    the model learned it under (a copy, or one saved by another library, does); another
    tokenizer would train every embedding on the wrong text."""
    own = config.model / "tokenizer.json"
    if config.tokenizer is None or own.resolve() == Path(config.tokenizer).resolve():
        return
    theirs = model_tokenizer(config.model)
    if theirs is None:
        return
    theirs = theirs.get_vocab(with_added_tokens=True)
    ours = encoder.tokenizer.get_vocab(with_added_tokens=True)
    moved = [t for t, i in theirs.items() if ours.get(t) != i]
    if moved:
        raise TinygenError(
            f"--tokenizer {config.tokenizer} gives {len(moved)} of {config.model}'s {len(theirs)} "
            f"tokens other ids (e.g. {moved[0]!r}); finetune with the model's own tokenizer")


def resolve_block_size(config: TrainConfig, plan: ModelPlan) -> int:
    if config.block_size is None:
        return min(plan.window, MAX_DEFAULT_BLOCK)
    if config.block_size > plan.window:
        raise TinygenError(
            f"block_size {config.block_size} is larger than the model's context window "
            f"({plan.window}); use --block-size {plan.window} or less"
        )
    return config.block_size


def build_data(config: TrainConfig, encoder: Encoder, block_size: int,
               pad_id: int) -> tuple[list[PhaseRun], TokenDataset | None]:
    """The phases, and the documents --eval-fraction holds out of their corpora (else None).

    Each corpus (phases may share one) gives up its share of documents once, so no phase
    trains on a held-out document."""
    datasets = encode_corpora(config, encoder)
    held_out = None
    if config.eval_fraction is not None:
        parts = []
        for index, (key, dataset) in enumerate(datasets.items()):
            datasets[key], held = hold_out(dataset, config.eval_fraction, index)
            parts.append(held)
        held_out = join(parts, "the held-out documents")
    return build_phases(config, encoder, block_size, pad_id, datasets), held_out


def encode_corpora(config: TrainConfig,
                   encoder: Encoder) -> dict[tuple[Path, str | None], TokenDataset]:
    """Every corpus of every phase, encoded once, by (path, field), in order of first use."""
    datasets: dict[tuple[Path, str | None], TokenDataset] = {}
    for phase in config.resolved_phases():
        for source in phase.data:
            key = (source.path, source.field)
            if key not in datasets:
                datasets[key] = TokenDataset.from_path(
                    source.path, encoder, field=source.field, errors=config.errors,
                    line_by_line=config.line_by_line, progress=config.progress)
    return datasets


def build_phases(config: TrainConfig, encoder: Encoder, block_size: int, pad_id: int,
                 datasets: dict[tuple[Path, str | None], TokenDataset] | None = None,
                 ) -> list[PhaseRun]:
    """Each phase's sampler over `datasets` (default: encode_corpora's)."""
    datasets = encode_corpora(config, encoder) if datasets is None else datasets
    runs, start = [], 0
    for index, phase in enumerate(config.resolved_phases()):
        samplers = [_sampler(config, datasets[(s.path, s.field)], s, block_size, pad_id,
                             derive_seed(config.seed, index, i)) for i, s in enumerate(phase.data)]
        # After the samplers: a corpus shorter than one block is their error, and a warning to
        # lower --batch-size before it sent the user the wrong way.
        _check_batch_fits(config, [datasets[(s.path, s.field)] for s in phase.data], block_size,
                          index)
        if len(samplers) == 1:
            sampler = samplers[0]
        else:
            sampler = BlendSampler(samplers, [s.weight for s in phase.data],
                                   derive_seed(config.seed, index, len(samplers)))
        runs.append(PhaseRun(index, start, phase.steps, phase_schedule(config, phase, index), sampler))
        start += phase.steps
    return runs


def _check_batch_fits(config: TrainConfig, datasets: list[TokenDataset], block_size: int,
                      index: int) -> None:
    """Warn when one micro-batch holds more rows than the corpus has: every step would train
    on the same text several times over, and a batch far too big is found only when the
    memory runs out, with nothing said."""
    if config.line_by_line:
        have = sum(d.num_documents for d in datasets)
        unit = f"document{'s' * (have != 1)}"
    else:
        have = sum(max(1, d.num_tokens // block_size) for d in datasets)
        unit = f"block{'s' * (have != 1)} of {block_size} tokens"
    if config.batch_size > have:
        where = f"phase {index + 1}'s corpus" if len(config.resolved_phases()) > 1 else \
            "the corpus"
        warn(f"--batch-size {config.batch_size} is more rows than {where} holds ({have} "
             f"{unit}): each step repeats it; lower --batch-size, or give more text")


def phase_schedule(config: TrainConfig, phase: Phase, index: int = 0) -> LRSchedule:
    """Warmup and decay over the phase's steps (phase `index` of the run's), to its peak
    learning rate."""
    peak = phase.learning_rate or config.learning_rate or default_learning_rate(config)
    warmup = config.warmup_steps if config.warmup_steps is not None else min(100, phase.steps // 10)
    if warmup > phase.steps:  # allowed (a resume may lengthen the run), but likely a slip
        where = f"phase {index + 1}'s" if len(config.resolved_phases()) > 1 else "the run's"
        warn(f"--warmup-steps {warmup} is more than {where} {phase.steps} steps: the learning "
             f"rate never reaches its peak {peak:g}")
    return LRSchedule(peak, phase.steps, warmup, config.lr_schedule, config.min_lr_ratio)


def load_model(plan: ModelPlan, weights: Path | None) -> torch.nn.Module:
    """Weights from `weights` (a checkpoint), else from the plan's source, else a fresh init."""
    from transformers import AutoModelForCausalLM

    source = weights or plan.source
    if source is None:
        model = AutoModelForCausalLM.from_config(plan.hf_config)
    else:
        model = load_causal_lm(source)
    if model.get_input_embeddings().num_embeddings < plan.vocab_size:
        _resize_embeddings(model, plan.vocab_size)
    return model


def _resize_embeddings(model, vocab_size: int) -> None:
    """Rows for the tokens added (fields, replacements), started from the old rows' mean and
    covariance (transformers' mean_resizing), without transformers' warning about it: it
    prints even under --quiet and names an argument the user of this command cannot pass."""
    from transformers.utils import logging as hf_logging

    logger = hf_logging.get_logger("transformers.modeling_utils")
    level = logger.level
    logger.setLevel(hf_logging.ERROR)
    try:
        model.resize_token_embeddings(vocab_size)
    finally:
        logger.setLevel(level)


def default_learning_rate(config: TrainConfig) -> float:
    return PRESETS[config.preset].learning_rate if config.preset else FINETUNE_LR


def model_window(hf_config: Any) -> int:
    for name in ("n_positions", "max_position_embeddings", "n_ctx", "seq_length"):
        value = getattr(hf_config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    # Not "pass --block-size": the export and the runtime need the window too.
    raise TinygenError(
        f"cannot tell the model's context window from its config.json (no n_positions or "
        f"max_position_embeddings: an ALiBi model such as {getattr(hf_config, 'model_type', '?')}?); "
        f"tinygen's export and runtime need one: set max_position_embeddings there to the "
        f"longest text to run")


def _sampler(config: TrainConfig, dataset: TokenDataset, source: DataSource, block_size: int,
             pad_id: int, seed: int) -> Sampler:
    if config.line_by_line:
        return RecordSampler(dataset, block_size, seed, pad_id, source.loss_weight)
    return WindowSampler(dataset, block_size, seed, source.loss_weight, config.recency)


def _replacements(config: TrainConfig, tokenizer_path: Path) -> Replacements:
    if config.replacements is not None:
        return Replacements.load(config.replacements)
    for folder in (tokenizer_path.parent, config.model):
        if folder is not None and (folder / REPLACEMENTS_FILE).is_file():
            return Replacements.load(folder / REPLACEMENTS_FILE)
    return Replacements()


def _eos_id(config: TrainConfig, tokenizer, source: str) -> int:
    """`source` names the tokenizer in errors."""
    if config.eos_token is None and config.model is not None:
        eos = getattr(load_hf_config(config.model), "eos_token_id", None)
        eos = eos[0] if isinstance(eos, (list, tuple)) and eos else eos
        if isinstance(eos, int):
            return eos
    return find_eos_id(tokenizer, config.eos_token, source=source)


def load_hf_config(model_dir: Path):
    from transformers import AutoConfig

    if not (model_dir / "config.json").is_file():
        raise TinygenError({
            "export": f"{model_dir} is an exported tinygen model; give the transformers folder "
                      f"it was exported from",
            "run": f"{model_dir}: a training run that did not finish (no model saved yet); "
                   f"finish it with --resume, or give one of its checkpoints "
                   f"({model_dir / 'checkpoints'}/step-N)",
            "other": f"{model_dir}: not a transformers model folder (no config.json)",
        }[folder_kind(model_dir)])
    try:
        return AutoConfig.from_pretrained(model_dir)
    except (ValueError, OSError) as exc:
        raise TinygenError(f"{model_dir}: cannot read config.json ({str(exc)[:200]})") from None
