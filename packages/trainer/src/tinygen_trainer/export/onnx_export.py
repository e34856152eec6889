"""ONNX export through optimum: the graph with KV cache that the runtime runs.

optimum's `text-generation-with-past` graph is exactly the layout the runtime
expects (docs/model-format.md), so we take it as it is and only move the graph
and its external-data files into the model directory.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path

from tinygen.errors import TinygenError, first_line

from .contract import GraphSignature, TensorSpec

MODEL_FILE = "model.onnx"
TASK = "text-generation-with-past"


def export_onnx(src: Path, dest: Path) -> GraphSignature:
    """Export `src` to the file `dest` (+ external data beside it); returns the graph's signature.

    The scratch directory lives beside `dest` so that moving a multi-GB file is a rename.
    """
    main_export = _optimum_main_export()
    from torch.jit import TracerWarning

    scratch = dest.parent / "_optimum"
    try:
        try:
            with warnings.catch_warnings():
                # Tracing warns about every Python branch on a shape; the graph is
                # checked numerically afterwards, so these are noise for our users.
                warnings.simplefilter("ignore", TracerWarning)
                warnings.simplefilter("ignore", UserWarning)
                main_export(str(src), output=scratch, task=TASK, local_files_only=True,
                            # Our verify step is stricter (greedy tokens on a real prompt).
                            do_validation=False)
        # ValueError for an unsupported architecture or task; others from inside the trace
        # (seen: a RuntimeError from the dummy cache it builds for Falcon's new decoder).
        except Exception as exc:
            raise TinygenError(f"{src}: optimum cannot export this model "
                               f"({type(exc).__name__}: {first_line(exc)})") from exc
        exported = scratch / MODEL_FILE
        if not exported.is_file():
            raise TinygenError(f"{src}: optimum wrote no {MODEL_FILE}")
        move_onnx(exported, dest)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return read_signature(dest)


def _optimum_main_export():
    try:
        from optimum.exporters.onnx import main_export
    except ImportError as exc:
        from .fused import BUILDERS

        missing = (exc.name or "").partition(".")[0] == "optimum"
        problem = "is not installed" if missing else f"cannot be imported ({first_line(exc)})"
        raise TinygenError(f"optimum-onnx {problem}: pip install {_optimum_requirement()}, or "
                           f"export with --graph fused ({' and '.join(BUILDERS)} models)") from exc
    return main_export


def _optimum_requirement() -> str:
    """optimum-onnx as the trainer pins it (its pyproject), for the install hint."""
    import shlex
    from importlib.metadata import PackageNotFoundError, requires

    try:
        pins = [r for r in requires("tinygen-trainer") or () if r.startswith("optimum-onnx")]
    except PackageNotFoundError:  # run from a source tree without installing
        pins = []
    return shlex.quote(pins[0].partition(";")[0].strip()) if pins else "optimum-onnx"


def external_data_files(path: Path) -> list[str]:
    """File names (relative to the graph) that hold the graph's external tensors."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        tensors += [a.t for a in node.attribute if a.HasField("t")]
    locations = set()
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            locations.update(e.value for e in tensor.external_data if e.key == "location")
    return sorted(locations)


def move_onnx(src: Path, dest: Path) -> None:
    """Move a graph and its external data; the data keeps its name, which the graph records."""
    for name in external_data_files(src):
        (src.parent / name).replace(dest.parent / name)
    src.replace(dest)


def write_onnx(model, path: Path, external: bool) -> None:
    """Write `model` to `path`; with `external`, its weights go to one `<name>.data` beside it
    (protobuf cannot hold a graph past 2 GB)."""
    import onnx

    if external:
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=path.name + ".data", size_threshold=1024)
    else:
        onnx.save_model(model, str(path))


def remove_onnx(path: Path) -> None:
    for name in external_data_files(path):
        (path.parent / name).unlink(missing_ok=True)
    path.unlink()


def read_signature(path: Path) -> GraphSignature:
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph

    def spec(value) -> TensorSpec:
        tensor = value.type.tensor_type
        elem = onnx.helper.tensor_dtype_to_string(tensor.elem_type).removeprefix("TensorProto.")
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                     for d in tensor.shape.dim)
        return TensorSpec(elem.lower(), dims)

    initializers = {i.name for i in graph.initializer}
    return GraphSignature(
        inputs={v.name: spec(v) for v in graph.input if v.name not in initializers},
        outputs={v.name: spec(v) for v in graph.output},
    )

