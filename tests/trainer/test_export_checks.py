"""The export's own checks and failure paths: a quantized graph with NaN logits, graphs with
external weight data, the staging folder when the final rename fails or an earlier export was
killed, and a missing optimum."""

from __future__ import annotations

import errno
import os
import shutil
import sys
from importlib.metadata import requires

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tinygen.errors import TinygenError
from tinygen_trainer.cli import main
from tinygen_trainer.export import ExportConfig, export_model, pipeline, run_export, staging
from tinygen_trainer.export.fused import kv_int8
from tinygen_trainer.export.staging import staged_dir


def _siblings(path):
    return sorted(p.name for p in path.parent.iterdir())


# -- a quantized graph must at least compute numbers ---------------------------

def _nan_weight_scales(monkeypatch):
    """The int8 quantizer as a reviewer broke it: every weight scale it writes is NaN."""
    real = pipeline.quantize_nbits

    def broken(path, **options):
        real(path, **options)
        model = onnx.load(str(path))
        scales = {n.input[2] for n in model.graph.node if n.op_type == "MatMulNBits"}
        assert scales
        for init in model.graph.initializer:
            if init.name in scales:
                nan = np.full_like(numpy_helper.to_array(init), np.nan)
                init.CopyFrom(numpy_helper.from_array(nan, init.name))
        onnx.save(model, str(path))

    monkeypatch.setattr(pipeline, "quantize_nbits", broken)


def _nan_kv_ranges(monkeypatch):
    """KV calibration that saw NaN: every int8 KV scale is NaN."""
    real = kv_int8.calibrate
    monkeypatch.setattr(kv_int8, "calibrate", lambda *args: [np.full_like(r, np.nan)
                                                             for r in real(*args)])


@pytest.mark.parametrize("model, options, label, break_it", [
    ("gpt2", {"quantize": "int8"}, "int8", _nan_weight_scales),
    ("llama", {"kv_cache": "int8"}, "int8 KV", _nan_kv_ranges),
])
def test_a_quantized_graph_with_nan_logits_fails_the_export(
        tiny_gpt2_dir, tiny_llama_dir, tmp_path, monkeypatch, model, options, label, break_it):
    break_it(monkeypatch)
    src = {"gpt2": tiny_gpt2_dir, "llama": tiny_llama_dir}[model]
    out = tmp_path / "out"
    lines = []
    with pytest.raises(TinygenError, match=f"verification failed: the {label} graph gives "
                                           f"non-finite logits") as info:
        run_export(ExportConfig(src=src, out=out, **options), echo=lines.append)
    assert "\n" not in str(info.value)
    assert "export without" in str(info.value)
    assert not any("(informational)" in line for line in lines)  # no report for a broken graph
    assert lines and lines[0]  # the float graph's strict check ran first
    assert _siblings(out) == []  # no OUT, no staging


def test_the_cli_reports_nan_logits_in_one_line(tiny_gpt2_dir, tmp_path, monkeypatch, capsys):
    _nan_weight_scales(monkeypatch)
    out = tmp_path / "out"
    assert main(["export", str(tiny_gpt2_dir), str(out), "--quantize", "int8"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "non-finite logits" in err and "--quantize int8" in err
    assert not out.exists()


def test_a_source_model_with_nan_weights_is_named_as_the_cause(tiny_gpt2_dir, tmp_path):
    """NaN from PyTorch itself is the model's fault, not the export's or the quantizer's."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    src = tmp_path / "src"
    shutil.copytree(tiny_gpt2_dir, src)
    model = AutoModelForCausalLM.from_pretrained(src)
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight[0, 0] = float("nan")
    model.save_pretrained(src)
    with pytest.raises(TinygenError, match="PyTorch's own logits are NaN or inf: the source "
                                           "model's weights are broken") as info:
        run_export(ExportConfig(src=src, out=tmp_path / "out", quantize="int8"))
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()


# -- graphs whose weights sit in a side file -----------------------------------

def test_rotary_dim_of_a_graph_with_external_data(onnx_result, tmp_path):
    """Graphs over 2 GB keep their weights in model.onnx.data; rotary_dim loads none of it."""
    embedded = onnx_result.path / "model.onnx"
    path = tmp_path / "model.onnx"
    onnx.save(onnx.load(str(embedded)), str(path), save_as_external_data=True,
              all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=0)
    assert (tmp_path / "model.onnx.data").is_file()
    expected = kv_int8.rotary_dim(embedded)
    assert kv_int8.rotary_dim(path) == expected
    if onnx_result.manifest.architecture == "llama":
        assert expected == onnx_result.manifest.head_size  # the tiny Llama rotates every channel
    else:
        assert expected is None  # GPT-2: learned positions


def test_int8_kv_export_of_a_graph_with_external_data(tiny_llama_dir, tmp_path):
    # Every fused graph keeps its weights in model.onnx.data (fused/graph.py, GraphBuilder.save).
    result = run_export(ExportConfig(src=tiny_llama_dir, out=tmp_path / "out", kv_cache="int8"))
    data = result.path / "model.onnx.data"
    assert data.is_file() and data.stat().st_size > 10 * (result.path / "model.onnx").stat().st_size
    float_report, kv8_report = result.reports
    assert float_report.exact and kv8_report.label == "int8 KV"


# -- staging: the final rename, and folders left by a killed export ------------

def _failing_rename(monkeypatch, target, source=".tmp-"):
    """os.rename fails (permission denied) to move a folder whose name has `source` (default: a
    staging folder; "": any folder) onto `target`."""
    real = os.rename

    def rename(src, dst):
        if os.fspath(dst) == os.fspath(target) and source in os.path.basename(src):
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(dst))
        real(src, dst)

    monkeypatch.setattr(staging.os, "rename", rename)


def test_a_failed_rename_into_place_is_one_line_and_leaves_no_staging(tmp_path, monkeypatch):
    out = tmp_path / "out"
    _failing_rename(monkeypatch, out)
    with pytest.raises(TinygenError) as info:
        with staged_dir(out) as stage:
            (stage / "model.onnx").write_bytes(b"new")
    message = str(info.value)
    assert "\n" not in message and str(out) in message and "Permission denied" in message
    assert _siblings(out) == []


def test_a_failed_rename_keeps_the_earlier_export(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"earlier")
    _failing_rename(monkeypatch, out)
    with pytest.raises(TinygenError, match="Permission denied"):
        with staged_dir(out) as stage:
            (stage / "model.onnx").write_bytes(b"new")
    assert (out / "model.onnx").read_bytes() == b"earlier"
    assert _siblings(out) == ["out"]  # neither the staging folder nor the set-aside copy


def test_a_failed_restore_says_where_the_earlier_export_is(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.onnx").write_bytes(b"earlier")
    _failing_rename(monkeypatch, out, source="")  # neither the new export nor the earlier one
    with pytest.raises(TinygenError, match="nor put the earlier export back: it is in ") as info:
        with staged_dir(out) as stage:
            (stage / "model.onnx").write_bytes(b"new")
    [old] = [p for p in tmp_path.iterdir()]
    assert old.name.startswith(".out.old-") and str(old) in str(info.value)
    assert (old / "model.onnx").read_bytes() == b"earlier" and "\n" not in str(info.value)


def test_the_cli_reports_a_failed_rename_in_one_line(tiny_gpt2_dir, tmp_path, monkeypatch,
                                                     capsys):
    out = tmp_path / "out"
    _failing_rename(monkeypatch, out)
    assert main(["export", str(tiny_gpt2_dir), str(out), "--no-verify"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and "Permission denied" in err
    assert _siblings(out) == []


needs_flock = pytest.mark.skipif(sys.platform == "win32", reason="the sweep needs flock")


@needs_flock
def test_staging_left_by_a_killed_export_is_swept(tiny_gpt2_dir, tmp_path):
    out = tmp_path / "model"
    stale = tmp_path / ".model.tmp-0123abcd"
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half an export")
    # Not this export's staging: other names, another output's, a file, a link, the set-aside
    # copy of an earlier export (the only copy if a kill fell between the two renames).
    keep_dirs = [".model.tmp-0123", ".model.tmp-0123abcdef", ".model2.tmp-0123abcd",
                 ".other.tmp-89abcdef", "model.tmp-0123abcd", ".model.old-0123abcd"]
    for name in keep_dirs:
        (tmp_path / name).mkdir()
    (tmp_path / ".model.tmp-89abcdef").write_text("a file")
    target = tmp_path / "linked"
    target.mkdir()
    (target / "precious").write_text("keep")
    (tmp_path / ".model.tmp-fedcba98").symlink_to(target, target_is_directory=True)

    run_export(ExportConfig(src=tiny_gpt2_dir, out=out, verify=False))
    assert not stale.exists()
    assert _siblings(out) == sorted([*keep_dirs, ".model.tmp-89abcdef", ".model.tmp-fedcba98",
                                     "linked", "model"])
    assert (target / "precious").read_text() == "keep"


@needs_flock
def test_a_running_exports_staging_is_not_swept(tmp_path):
    """Two exports to one OUT: the second must not delete the first one's folder mid-export."""
    out = tmp_path / "model"
    with staged_dir(out) as first:
        (first / "model.onnx").write_bytes(b"first")
        with staged_dir(out) as second:
            assert (first / "model.onnx").read_bytes() == b"first"
            (second / "model.onnx").write_bytes(b"second")
        assert (out / "model.onnx").read_bytes() == b"second"
    assert (out / "model.onnx").read_bytes() == b"first"  # the later rename wins
    assert _siblings(out) == ["model"]


@needs_flock
def test_another_process_keeps_its_staging_until_it_is_killed(tmp_path):
    import signal
    import subprocess

    out = tmp_path / "model"
    code = ("import sys, time\n"
            "from pathlib import Path\n"
            "from tinygen_trainer.export.staging import staged_dir\n"
            "with staged_dir(Path(sys.argv[1])) as stage:\n"
            "    (stage / 'model.onnx').write_bytes(b'half')\n"
            "    print(stage, flush=True)\n"
            "    time.sleep(60)\n")
    other = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE,
                             text=True)
    try:
        theirs = tmp_path / other.stdout.readline().strip()
        assert theirs.name.startswith(".model.tmp-") and theirs.is_dir()
        with staged_dir(out):
            assert theirs.is_dir()  # running: not swept
    finally:
        other.send_signal(signal.SIGKILL)
        other.wait()
        other.stdout.close()
    assert theirs.is_dir()  # a killed export cleans up nothing...
    with staged_dir(out):
        assert not theirs.exists()  # ...the next one does
    assert _siblings(out) == ["model"]


# -- optimum missing -----------------------------------------------------------

def _without_optimum(monkeypatch):
    for name in ("optimum", "optimum.exporters", "optimum.exporters.onnx"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails even if already imported


def test_a_missing_optimum_is_one_line(tiny_gpt2_dir, tmp_path, monkeypatch, capsys):
    _without_optimum(monkeypatch)
    out = tmp_path / "out"
    with pytest.raises(TinygenError, match="optimum-onnx is not installed: pip install") as info:
        run_export(ExportConfig(src=tiny_gpt2_dir, out=out, graph="optimum", verify=False))
    message = str(info.value)
    # the pin the trainer is installed with (packages/trainer/pyproject.toml): optimum-onnx==...
    pin = next(r for r in requires("tinygen-trainer") if r.startswith("optimum-onnx"))
    assert "==" in pin and f"pip install {pin}" in message
    assert "\n" not in message and "--graph fused" in message
    assert _siblings(out) == []

    assert main(["export", str(tiny_gpt2_dir), str(out), "--graph", "optimum"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "optimum-onnx is not installed" in err


def test_a_symlinked_out_replaces_the_model_it_points_to(exported_gpt2_dir, tiny_gpt2_dir, tmp_path):
    target = shutil.copytree(exported_gpt2_dir, tmp_path / "models" / "v1")
    (target / "model.onnx").write_bytes(b"stale")  # the earlier export, to be replaced
    link = tmp_path / "current"
    link.symlink_to(target, target_is_directory=True)
    export_model(tiny_gpt2_dir, link, verify=False)
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert (target / "model.onnx").read_bytes() != b"stale"
    left = [p.name for p in [*tmp_path.iterdir(), *target.parent.iterdir()] if p.name.startswith(".")]
    assert left == []


# -- permissions of the finished folder ------------------------------------------

def test_a_file_written_for_its_owner_only_is_readable_as_the_folder(tmp_path):
    out = tmp_path / "out"
    with staged_dir(out) as stage:
        private = stage / "model.onnx.data"
        private.write_bytes(b"weights")
        private.chmod(0o600)  # as onnx writes external data, whatever the umask
        (stage / "tinygen.json").write_text("{}")
    folder_bits = out.stat().st_mode & 0o666
    assert (out / "model.onnx.data").stat().st_mode & 0o777 == 0o600 | folder_bits
    assert (out / "model.onnx.data").stat().st_mode & 0o777 == \
        (out / "tinygen.json").stat().st_mode & 0o777
