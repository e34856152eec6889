"""Exports of the tiny models, made once per session and shared by the export tests."""

from __future__ import annotations

import pytest

from tinygen_trainer.export import ExportConfig, run_export


def _export(src, out, **options):
    return run_export(ExportConfig(src=src, out=out, **options))


@pytest.fixture(scope="session")
def onnx_result(tiny_source_dir, tmp_path_factory):
    """ExportResult of the float32 ONNX export, for each architecture."""
    return _export(tiny_source_dir, tmp_path_factory.mktemp("onnx") / "model")


@pytest.fixture(scope="session")
def int8_result(tiny_source_dir, tmp_path_factory):
    return _export(tiny_source_dir, tmp_path_factory.mktemp("int8") / "model", quantize="int8")


@pytest.fixture(scope="session")
def torchscript_result(tiny_source_dir, tmp_path_factory):
    return _export(tiny_source_dir, tmp_path_factory.mktemp("ts") / "model", format="torchscript")


@pytest.fixture(scope="session")
def model_bytes():
    """The bytes of a model directory's graph and its weights' side file (model.onnx.data)."""
    return lambda folder: sum(p.stat().st_size for p in folder.glob("model.onnx*"))
