"""Training on XLA (torch_xla's CPU device): one compile, CPU parity, checkpoints, export."""

from __future__ import annotations

import gc
import shutil
import weakref
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tinygen import TextGenerator
from tinygen_trainer.export import export_model
from tinygen_trainer.training import Trainer, read_metrics, train
from tinygen_trainer.training.device import XlaBackend, select_backend

pytest.importorskip("torch_xla")  # the main .venv has none: skip
import torch_xla.debug.metrics as met  # noqa: E402

from tinygen_trainer.training.xla import compilations

pytestmark = pytest.mark.xla

# fp32 on both sides; XLA's CPU kernels sum in another order than ATen's.
PARITY_ATOL = 1e-4


def losses(out, steps=None) -> list[float]:
    return [m["loss"] for m in read_metrics(out) if steps is None or m["step"] in steps]


def host_reads() -> int:
    """How often a device value has been read to the host (.item(), bool(tensor), ...)."""
    return met.counter_value("aten::_local_scalar_dense") or 0


class Recording(Trainer):
    """Notes, after every step, how many graphs XLA has compiled so far."""

    def on_step_end(self, phase, lr, loss):
        super().on_step_end(phase, lr, loss)
        self.compiled.append(compilations())


@pytest.fixture(scope="module")
def xla_run(tiny, tmp_path_factory):
    """20 steps on XLA, logging every 5, a checkpoint every 10."""
    out = tmp_path_factory.mktemp("xla-run") / "out"
    trainer = Recording.from_config(tiny(out, steps=20, log_every=5, checkpoint_every=10))
    trainer.compiled = []
    reads = host_reads()
    trainer.fit()
    return SimpleNamespace(out=out, compiled=trainer.compiled, reads=host_reads() - reads,
                           metrics=read_metrics(out))


def test_compiles_during_warmup_only(xla_run):
    counts = xla_run.compiled
    print(f"XLA compilations after steps 1..20: {counts}")
    assert len(counts) == 20
    assert counts[2] >= 1
    assert counts[2:] == [counts[2]] * 18, f"recompiled after step 3: {counts}"
    # metrics.jsonl reports the count with every logged loss
    assert [(m["step"], m["xla_compilations"]) for m in xla_run.metrics] == \
        [(5, counts[4]), (10, counts[9]), (15, counts[14]), (20, counts[19])]
    # No .item() inside the step: the only host reads are the four logged losses.
    assert xla_run.reads == 4
    assert all(np.isfinite(m["loss"]) for m in xla_run.metrics)


def test_loss_parity_with_cpu(tiny, tmp_path):
    on_xla = losses(train(tiny(tmp_path / "xla", precision="fp32")))
    on_cpu = losses(train(tiny(tmp_path / "cpu", device="cpu")))
    diffs = np.abs(np.array(on_xla) - np.array(on_cpu))
    print(f"xla {on_xla}\ncpu {on_cpu}\nmax |diff| {diffs.max():.2e}")
    assert len(on_xla) == 8
    np.testing.assert_allclose(on_xla, on_cpu, rtol=0, atol=PARITY_ATOL)
    assert on_xla[-1] < on_xla[0] - 0.5  # and it learns


def test_line_by_line_with_grad_accum(tiny, lines, tmp_path):
    """Padded rows compile once, read nothing back but the logged losses (no mask for
    transformers to check in every forward), and match the CPU."""
    options = dict(data=(lines,), line_by_line=True, grad_accum=2, steps=6, block_size=16)
    reads = host_reads()
    on_xla = read_metrics(train(tiny(tmp_path / "xla", **options)))
    assert host_reads() - reads == 6  # one logged loss a step
    on_cpu = losses(train(tiny(tmp_path / "cpu", device="cpu", **options)))
    counts = [m["xla_compilations"] for m in on_xla]
    assert counts[2:] == [counts[2]] * 4, counts
    np.testing.assert_allclose([m["loss"] for m in on_xla], on_cpu, rtol=0, atol=PARITY_ATOL)


def test_samples_leave_the_graph_alone(tiny, tmp_path, capsys):
    """Samples are drawn from a CPU copy: growing sequences would compile a graph per length."""
    out = train(tiny(tmp_path / "out", steps=6, sample_every=3, sample_prompt="the cat",
                     sample_length=12))
    assert capsys.readouterr().err.count("--- sample at step") == 2
    counts = [m["xla_compilations"] for m in read_metrics(out)]
    assert counts[2:] == [counts[2]] * 4, counts


def test_precision(tiny, tmp_path):
    assert select_backend("xla").precision == "fp32"  # auto: fp32 on the CPU device, bf16 on TPU
    with pytest.raises(Exception, match="fp16 is not supported on XLA"):
        select_backend("xla", "fp16")
    out = train(tiny(tmp_path / "bf16", precision="bf16", steps=3))
    assert all(np.isfinite(losses(out)))


@pytest.mark.parametrize("line_by_line", [False, True], ids=["windows", "line-by-line"])
def test_held_out_evaluation_matches_the_cpu(tiny, lines, tmp_path, line_by_line):
    """An evaluation compiles its graphs once and leaves the training graph alone; it reads one
    value back; its loss is the CPU's."""
    held = tmp_path / "held.txt"
    held.write_text("the dog sat on the mat.\nthe bird ran in the park by the tree.\n" * 4,
                    encoding="utf-8")
    options = dict(steps=6, log_every=1, eval_data=held, eval_every=2)
    if line_by_line:
        options.update(data=(lines,), line_by_line=True, block_size=16)
    trainer = Recording.from_config(tiny(tmp_path / "xla", **options))
    trainer.compiled = []
    reads = host_reads()
    trainer.fit()
    counts = trainer.compiled
    print(f"XLA compilations after steps 1..6 (evaluations after 2, 4, 6): {counts}")
    # the first evaluation (after step 2) compiles its graphs; later ones and training, none
    assert counts[2:] == [counts[2]] * 4, counts
    assert host_reads() - reads == 6 + 3  # the logged losses, and one value an evaluation
    on_xla = [m for m in read_metrics(tmp_path / "xla") if "eval_loss" in m]
    on_cpu = [m for m in read_metrics(train(tiny(tmp_path / "cpu", device="cpu", **options)))
              if "eval_loss" in m]
    assert [m["step"] for m in on_xla] == [2, 4, 6]
    assert [m["eval_tokens"] for m in on_xla] == [m["eval_tokens"] for m in on_cpu]
    np.testing.assert_allclose([m["eval_loss"] for m in on_xla],
                               [m["eval_loss"] for m in on_cpu], rtol=0, atol=PARITY_ATOL)


# -- checkpoints and the trained model ------------------------------------------------

def test_checkpoints_hold_cpu_tensors_and_resume_anywhere(xla_run, tiny, tmp_path):
    step_10 = xla_run.out / "checkpoints" / "step-00000010"
    state = torch.load(step_10 / "optimizer.pt", weights_only=True)  # refuses XLA tensors
    tensors = [v for s in state["state"].values() for v in s.values() if torch.is_tensor(v)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert all(t.device.type == "cpu" for t in load_file(step_10 / "model.safetensors").values())

    expected = losses(xla_run.out, steps={15, 20})
    for device, atol in (("cpu", PARITY_ATOL), ("xla", 1e-6)):
        # the run as it was at step 10, then resumed on `device`
        out = tmp_path / device
        shutil.copytree(xla_run.out, out)
        shutil.rmtree(out / "checkpoints" / "step-00000020")
        train(tiny(out, device=device, steps=20, log_every=5, checkpoint_every=10, resume=True))
        # XLA's loader reads ahead: the checkpoint keeps the position of the rows trained on
        np.testing.assert_allclose(losses(out, steps={15, 20}), expected, rtol=0, atol=atol)


def test_resume_restores_the_dropout_stream(tiny, tiny_gpt2_dir, tmp_path, monkeypatch):
    """With dropout (tiny GPT-2 keeps its default 0.1) a resume must restore XLA's RNG."""
    options = dict(preset=None, model=tiny_gpt2_dir, tokenizer=None, learning_rate=1e-3,
                   steps=6, checkpoint_every=3)
    straight = train(tiny(tmp_path / "straight", **options))
    expected = losses(straight, steps={4, 5, 6})

    def resumed(name) -> list[float]:
        """The run as it was at step 3, resumed on XLA."""
        out = tmp_path / name
        shutil.copytree(straight, out)
        shutil.rmtree(out / "checkpoints" / "step-00000006")
        train(tiny(out, resume=True, **options))
        return losses(out, steps={4, 5, 6})

    assert resumed("resumed") == expected  # the same masks: exactly the same losses
    # The test sees it: without the restore the resumed steps draw other dropout masks.
    monkeypatch.setattr(XlaBackend, "set_rng_state", lambda self, state: None)
    assert resumed("rng-not-restored") != expected


def test_trained_model_exports_and_generates(xla_run, tmp_path):
    from transformers import AutoModelForCausalLM

    # the same file a CPU run writes: tied embeddings stored once, CPU tensors
    saved = load_file(xla_run.out / "model.safetensors")
    reference = tmp_path / "reference"
    AutoModelForCausalLM.from_pretrained(xla_run.out).save_pretrained(reference)
    assert set(saved) == set(load_file(reference / "model.safetensors"))

    model = export_model(xla_run.out, tmp_path / "model")  # checks 32 greedy tokens itself
    text = TextGenerator(str(model)).generate("the cat", do_sample=False, max_new_tokens=8)[0]
    assert text.token_ids and isinstance(text, str)


# -- the end of a run -------------------------------------------------------------------

class LosesTheDevice(Trainer):
    """Fails before step 4: step 3's loss, logged, is still waiting for the next sync."""

    def train_step(self, feed):
        if self.step == 3:
            raise RuntimeError("the device went away")
        return super().train_step(feed)


def test_a_failed_run_leaves_nothing_for_the_next_sync(tiny, tmp_path):
    """close() drops the reports when_ready still holds: left in torch_xla's step closures,
    a report of the failed run would run at the next run's first sync in this process,
    writing its step into metrics.jsonl after the resume had cut it, and would keep the
    failed trainer (its model and optimizer state on the device) alive until then."""
    options = dict(steps=6, log_every=1, checkpoint_every=2)
    failed = LosesTheDevice.from_config(tiny(tmp_path / "out", **options))
    with pytest.raises(RuntimeError, match="the device went away"):
        failed.fit()
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2]  # 3's never came
    gone = weakref.ref(failed)
    del failed
    gc.collect()
    assert gone() is None, "a pending report still holds the failed trainer"

    train(tiny(tmp_path / "out", resume=True, **options))  # from step 2, in this process
    assert [m["step"] for m in read_metrics(tmp_path / "out")] == [1, 2, 3, 4, 5, 6]
