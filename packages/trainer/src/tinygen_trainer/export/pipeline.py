"""The export, step by step: check SRC and OUT, build the directory, verify it, move it in place."""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from tinygen.errors import TinygenError
from tinygen.file_digest import ends_digest
from tinygen.manifest import Manifest

from .assets import copy_fields, copy_replacements, write_tokenizer
from .config import ExportConfig
from .contract import base_manifest, check_graph, traced_window
from .fused import check_fused_graph, export_fused, head_size_multiple, kv_int8, supports_fused
from .fused.float16 import convert_to_float16
from .fused.graph import NoFusedGraph
from .fused.quantize import INT8_BLOCK_SIZE, quantize_nbits
from .noise import library_noise_dropped
from .onnx_export import MODEL_FILE as ONNX_FILE
from .onnx_export import export_onnx, external_data_files, read_signature
from .quantize import quantize_int8
from .source import SourceModel, read_source
from .staging import check_output_dir, staged_dir
from .torchscript import MODEL_FILE as TORCHSCRIPT_FILE
from .torchscript import export_torchscript
from .verify import (OnnxStepper, Reference, TorchScriptStepper, VerifyReport, prompt_ids,
                     torch_reference, verify_model)


Say = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the finished model directory (OUT)
    manifest: Manifest
    reports: tuple[VerifyReport, ...]  # empty when verification was skipped


def run_export(config: ExportConfig, echo: Say | None = None) -> ExportResult:
    """Export `config.src` to `config.out`; `echo` receives progress and report lines."""
    say = echo or (lambda line: None)
    source = read_source(config.src)
    check_output_dir(config.out, config.src)
    with library_noise_dropped(), staged_dir(config.out) as stage:
        tokenizer = write_tokenizer(source.path, stage)
        manifest = replace(base_manifest(source, copy_replacements(source.path, stage, tokenizer)),
                           fields_file=copy_fields(source.path, stage, tokenizer))
        window = traced_window(source.config, manifest.context_window)
        if window < manifest.context_window and config.format == "onnx":  # TorchScript refuses
            say(f"note: longrope's long factors cannot be traced; the export's window is the "
                f"original {window} positions, not {manifest.context_window} (generation slides "
                f"past it)")
            manifest = replace(manifest, context_window=window)
        manifest, reports = BUILDERS[config.format](config, source, manifest, stage, say)
        manifest = record_files(manifest, stage)  # the finished files, before OUT appears
        manifest.save(stage)
    say(f"wrote {config.out}")
    return ExportResult(config.out, manifest, tuple(reports))


def record_files(manifest: Manifest, folder: Path) -> Manifest:
    """The manifest with the fingerprint of the graph, its weights files and the tokenizer,
    which the runtime checks on load (docs/model-format.md, 'files'). Not replacements.json or
    fields.json: users edit those (a rule's decoded text, say), and their tokens are checked
    against the vocabulary on load anyway."""
    names = [manifest.model_file, manifest.tokenizer_file]
    if manifest.model_file.endswith(".onnx"):
        names += external_data_files(folder / manifest.model_file)
    return replace(manifest, files={name: ends_digest(folder / name) for name in sorted(set(names))})


def _build_onnx(config: ExportConfig, source: SourceModel, manifest: Manifest, stage: Path,
                say: Say) -> tuple[Manifest, list[VerifyReport]]:
    model_path = stage / ONNX_FILE
    model = None
    kind = _graph_kind(config, source, manifest)
    if kind == "fused":
        say(f"writing the fused ONNX graph of {source.path}")
        model = source.load_model()
        try:
            manifest = export_fused(model, manifest, model_path)
        except NoFusedGraph as exc:
            if config.graph == "fused":
                raise
            needs = _fused_only_options(config)
            if needs:  # only the fused graph has them, so --graph optimum would not help
                raise TinygenError(f"{exc.reason}, which {needs[0]} needs; export without it "
                                   f"(--quantize int8 works on the optimum graph)") from None
            say(f"{exc.reason}: exporting the optimum graph instead")
            kind, model = "optimum", None
            model_path.unlink(missing_ok=True)
    if kind == "fused":
        check = check_fused_graph
        graph = read_signature(model_path)
    else:
        say(f"exporting {source.path} to ONNX")
        check = check_graph
        graph = export_onnx(source.path, model_path)
    manifest = check(manifest, graph, where=f"ONNX export of {source.path}")
    reports = []
    ref = _reference(config, source, manifest, stage, model)
    if ref is not None:
        # Before quantizing: int8 may legitimately change tokens, float32 may not.
        report = verify_model(OnnxStepper(model_path, manifest), ref)
        report.require_exact("the ONNX graph")
        reports.append(report)
        say(report.line())
    kv_ranges = None
    if config.kv_cache == "int8":  # calibrated on the float graph, applied after the weights
        say("calibrating int8 KV buffers on text the model samples itself")
        kv_ranges = kv_int8.calibrate(stage, manifest, kv_int8.rotary_dim(model_path))
    if config.quantize:
        say(f"quantizing weights to {config.quantize}")
        if config.quantize == "int4":  # weight-only MatMulNBits (fused graphs): fused/quantize.py
            quantize_nbits(model_path, bits=4)
        elif kind == "fused":
            # 8-bit MatMulNBits scales activations per row and block, so a text made in a batch
            # is the text made alone (dynamic quantization takes one scale over the batch), and
            # keeps Llama's outlier channels that one scale per tensor flattens (SmolLM2-135M
            # held-out perplexity +7.3% with quantize_dynamic, +0.8% with this).
            quantize_nbits(model_path, bits=8, block_size=INT8_BLOCK_SIZE.get(source.architecture))
        else:
            quantize_int8(model_path)
        manifest = replace(manifest, quantization=config.quantize)
    if kv_ranges is not None:
        kv_int8.quantize_kv_cache(model_path, manifest, kv_ranges)
    if config.dtype == "float16":
        say("converting the graph to float16")
        convert_to_float16(model_path)
        manifest = replace(manifest, dtype="float16")
    label = " + ".join(([config.quantize] if config.quantize else []) +
                       (["int8 KV"] if kv_ranges is not None else []) +
                       (["float16"] if config.dtype == "float16" else []))
    if label:
        manifest = check(manifest, read_signature(model_path), where=f"{label} graph")
        if ref is not None:
            report = verify_model(OnnxStepper(model_path, manifest), ref, label=label)
            # Rounding may flip a close token, so those are only reported; it never makes a NaN.
            # (float16 is such a rounding too.)
            options = ([f"--quantize {config.quantize}"] if config.quantize else []) + \
                (["--kv-cache int8"] if kv_ranges is not None else []) + \
                (["--dtype float16"] if config.dtype == "float16" else [])
            report.require_finite(f"the {label} graph", f"export without {' and '.join(options)}")
            reports.append(report)
            say(report.line() + " (informational)")
    return manifest, reports


def _graph_kind(config: ExportConfig, source: SourceModel, manifest: Manifest) -> str:
    """"fused" or "optimum": the one asked for, else fused wherever we have a builder."""
    arch = source.architecture
    if config.graph == "fused" and not supports_fused(arch):
        raise TinygenError(f"no fused graph for '{arch}' models; export with --graph optimum")
    multiple = head_size_multiple(arch)
    odd_heads = manifest.head_size % multiple != 0
    if config.graph == "fused" and odd_heads:
        raise TinygenError(f"the fused graph needs a head size that is a multiple of "
                           f"{multiple}; this model's is {manifest.head_size}: "
                           f"export with --graph optimum")
    kind = config.graph or ("fused" if supports_fused(arch) and not odd_heads else "optimum")
    fused_only = _fused_only_options(config)
    if fused_only and kind != "fused":
        if not supports_fused(arch):
            hint = f"'{arch}' models have none"
        elif odd_heads:  # not "drop --graph optimum": that would not help
            hint = f"this model's head size, {manifest.head_size}, is not a multiple of {multiple}"
        else:
            hint = "drop --graph optimum"
        raise TinygenError(f"{fused_only[0]} needs the fused graph; {hint}")
    return kind


def _fused_only_options(config: ExportConfig) -> list[str]:
    """The options asked for that only the fused graph has."""
    return [option for option, asked in (("--quantize int4", config.quantize == "int4"),
                                         ("--kv-cache int8", config.kv_cache == "int8"),
                                         ("--dtype float16", config.dtype == "float16"))
            if asked]


def _build_torchscript(config: ExportConfig, source: SourceModel, manifest: Manifest, stage: Path,
                       say: Say) -> tuple[Manifest, list[VerifyReport]]:
    manifest = replace(manifest, model_file=TORCHSCRIPT_FILE)
    model_path = stage / TORCHSCRIPT_FILE
    say(f"tracing {source.path} to TorchScript")
    model = source.load_model()
    export_torchscript(model, manifest, model_path)
    reports = []
    ref = _reference(config, source, manifest, stage, model)
    if ref is not None:
        # The file as saved, not the in-memory trace: that is what users load.
        step = TorchScriptStepper(model_path, manifest)
        report = verify_model(step, ref)
        report.require_exact("the TorchScript module")
        reports.append(report)
        say(report.line())
    return manifest, reports


# format -> writes the model file into the staging dir, returns the final manifest and reports
BUILDERS = {"onnx": _build_onnx, "torchscript": _build_torchscript}


def _reference(config: ExportConfig, source: SourceModel, manifest: Manifest, stage: Path,
               model=None) -> Reference | None:
    if not config.verify:
        return None
    model = model if model is not None else source.load_model()
    return torch_reference(model, prompt_ids(stage / manifest.tokenizer_file, manifest), manifest)


def export_model(src: str | os.PathLike, out: str | os.PathLike, quantize: str | None = None,
                 format: str = "onnx", verify: bool = True, graph: str | None = None,
                 kv_cache: str = "float32", dtype: str = "float32") -> Path:
    """Export a transformers causal LM to a tinygen model directory; prints the report lines."""
    config = ExportConfig(src=Path(src), out=Path(out), format=format, quantize=quantize,
                          verify=verify, graph=graph, kv_cache=kv_cache, dtype=dtype)
    return run_export(config, echo=print).path
