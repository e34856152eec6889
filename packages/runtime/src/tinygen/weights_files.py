"""The files a graph keeps its weights in (model.onnx.data beside a fused export's
model.onnx) are there and whole, checked before onnxruntime loads the graph.

onnxruntime reports a missing or truncated weights file as a failure deep inside its
optimizer, after logging its own lines; a model folder copied without its weights is
the likely cause, and the error should say so. Read from model.onnx's protobuf
structure alone (onnx_proto.py): the check costs a walk over the graph's initializers.
"""

from __future__ import annotations

import mmap
from pathlib import Path, PurePosixPath

from .errors import ModelFormatError
from .onnx_proto import fields, text

EXTERNAL = 1  # TensorProto.data_location


def check_weights_files(path: Path) -> None:
    """Each file the graph at `path` reads weights from exists beside it and holds every byte
    the graph reads from it; ModelFormatError otherwise. A graph this reader cannot follow
    is left to onnxruntime."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            needed = external_extents(data)
    except (OSError, ValueError, IndexError):
        return
    for location, end in sorted(needed.items()):
        relative = PurePosixPath(location.replace("\\", "/"))
        if relative.is_absolute() or ".." in relative.parts:
            raise ModelFormatError(f"{path}: its weights file '{location}' lies outside the model "
                                   f"folder; export the model again")
        weights = path.parent / relative
        if weights.is_dir():
            raise ModelFormatError(f"{weights} is a folder, not a file; put the model's weights "
                                   f"file {location} there (copy the model folder again)")
        if not weights.is_file():
            raise ModelFormatError(f"{path}: missing {location}, the file that holds its weights "
                                   f"(copy it with the rest of the model folder)")
        size = weights.stat().st_size
        if size < end:
            raise ModelFormatError(f"{weights}: {size:,} bytes, but the graph reads {end:,}: a "
                                   f"truncated copy or another export's; copy the model folder "
                                   f"again or export it again")


def external_extents(data) -> dict[str, int]:
    """Weights file name -> the end of the last byte the graph's initializers read from it
    (offset + length; a tensor without a length reads to the end, so counts from its offset)."""
    graph = next((value for number, value in fields(data, 0, len(data)) if number == 7), None)
    if not isinstance(graph, tuple):
        return {}
    extents: dict[str, int] = {}
    for number, value in fields(data, *graph):
        if number != 5 or not isinstance(value, tuple):  # GraphProto.initializer
            continue
        entries, external = {}, False
        for field, item in fields(data, *value):
            if field == 13 and isinstance(item, tuple):  # external_data: key 1, value 2
                entry = dict(fields(data, *item))
                entries[text(data, entry.get(1))] = text(data, entry.get(2))
            elif field == 14:
                external = item == EXTERNAL
        if not external or "location" not in entries:
            continue
        end = int(entries.get("offset") or 0) + int(entries.get("length") or 0)
        name = entries["location"]
        extents[name] = max(extents.get(name, 0), end)
    return extents
