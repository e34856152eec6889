"""Pruning old checkpoints: a run killed mid-delete leaves nothing a later prune misses."""

import json
import shutil

import pytest

from tinygen_trainer.training import checkpoint


def _fake_checkpoint(root, step):
    folder = root / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / "state.json").write_text(json.dumps({"step": step}))
    for name in ("config.json", "optimizer.pt", "model.safetensors"):
        (folder / name).write_text("x")
    return folder


def test_a_kill_while_pruning_leaves_no_step_folder_behind(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    real_rmtree = shutil.rmtree

    def killed_midway(path, ignore_errors=False):
        # rmtree removes files one by one; state.json first, then the kill
        next(p for p in path.rglob("state.json")).unlink()
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint.shutil, "rmtree", killed_midway)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.prune(root, keep=1)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", real_rmtree)

    _fake_checkpoint(root, 4)
    checkpoint.prune(root, keep=1)  # the next save's prune
    assert sorted(p.name for p in root.iterdir()) == ["step-00000004"]


def test_prune_keeps_the_newest(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (1, 2, 3):
        _fake_checkpoint(root, step)
    (root / ".tmp-step-00000004-abc").mkdir()  # left by a run killed mid-write
    checkpoint.prune(root, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000003"]
