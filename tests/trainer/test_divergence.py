"""A diverged run stops with one line, writes no weights that are not finite, and its
metrics.jsonl stays JSON."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from tinygen.errors import TinygenError
from tinygen_trainer.training import TrainConfig, train
from tinygen_trainer.training.progress import Reporter

from training_corpus import corpus, one_thread, tokenizer  # noqa: F401 (fixtures)


def diverging(tmp_path, corpus, tokenizer_path, **options) -> TrainConfig:
    """A learning rate so high that the loss is nan from step 2."""
    base = {"output_dir": tmp_path / "out", "data": (corpus,), "preset": "cpu-tiny",
            "tokenizer": tokenizer_path, "steps": 6, "block_size": 32, "batch_size": 4,
            "learning_rate": 1e6, "grad_clip": 0.0, "warmup_steps": 0, "log_every": 1,
            "checkpoint_every": 1, "progress": False}
    return TrainConfig(**{**base, **options})


def strict_json(line: str) -> dict:
    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    return json.loads(line, parse_constant=refuse)


def checkpoints(out) -> list[str]:
    return sorted(p.name for p in (out / "checkpoints").iterdir())


def all_finite(folder) -> bool:
    return all(torch.isfinite(t).all() for t in load_file(folder / "model.safetensors").values())


def test_a_nan_loss_stops_the_run_before_anything_is_saved(tmp_path, corpus, tokenizer):
    config = diverging(tmp_path, corpus, tokenizer)
    with pytest.raises(TinygenError) as info:
        train(config)
    assert str(info.value) == ("training diverged: the loss was nan at step 2; lower --lr or set "
                               "--grad-clip (e.g. 1.0), then --resume from the last checkpoint")
    out = config.output_dir
    assert not (out / "model.safetensors").exists()
    assert checkpoints(out) == ["step-00000001"]  # none from step 2's weights
    records = [strict_json(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["loss"] is None) for r in records] == [(1, False), (2, True)]


def test_weights_that_are_not_finite_are_never_written(tmp_path, corpus, tokenizer):
    """Between logged steps the loss is not read (no device sync): the weights are checked as
    they are saved instead."""
    config = diverging(tmp_path, corpus, tokenizer, log_every=10)
    with pytest.raises(TinygenError, match=r"^training diverged: the weights hold nan or inf "
                                           r"after step \d; lower --lr") as info:
        train(config)
    assert "\n" not in str(info.value)
    out = config.output_dir
    assert not (out / "model.safetensors").exists()
    assert checkpoints(out)  # the ones before stay, each finite
    assert all(all_finite(out / "checkpoints" / name) for name in checkpoints(out))
    assert not list((out / "checkpoints").glob(".tmp-*"))


def test_metrics_of_a_nan_are_null(tmp_path):
    reporter = Reporter(tmp_path, 10, progress=True)
    reporter.start(0)  # with its progress bar, which shows the loss too
    reporter.log(3, {"loss": float("nan"), "lr": float("inf"), "tokens_per_s": 1.0, "phase": 0})
    reporter.close()
    line = (tmp_path / "metrics.jsonl").read_text()
    assert strict_json(line) == {"step": 3, "loss": None, "lr": None, "tokens_per_s": 1.0,
                                 "phase": 0}
