"""How many positions a graph takes: its rotary cos_cache and position tables, read from
model.onnx's protobuf structure alone (no weights touched, no `onnx` dependency).

A manifest whose context_window is longer than these would load, then fail mid-text as an
onnxruntime error at the first position past them; checked on load instead.
"""

from __future__ import annotations

import mmap
from pathlib import Path

from .errors import ModelFormatError
from .manifest import Manifest
from .onnx_proto import fields, packed, text


def check_window_fits(path: Path, m: Manifest, position_ids: str | None) -> None:
    """The manifest's context_window fits the graph's position tables: a longer window
    would pass them only mid-text, as an onnxruntime error at the first position past them."""
    for what, positions in position_limits(path, position_ids):
        if positions < m.context_window:
            raise ModelFormatError(
                f"{path}: the graph's {what} holds {positions} positions, the manifest's "
                f"context_window is {m.context_window}; the manifest does not fit the graph "
                f"(set context_window to {positions} or less)")


def position_limits(path: Path, position_ids: str | None) -> list[tuple[str, int]]:
    """[(what, positions)] for each table in the graph that caps the positions it takes:
    GroupQueryAttention's rotary cos_cache, and a position embedding gathered at the
    `position_ids` input. Read from model.onnx's protobuf structure alone (no weights
    touched, no `onnx` dependency); a file this reader cannot follow gives no limits."""
    try:
        with open(path, "rb") as file, mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ) as data:
            return _position_limits(data, position_ids)
    except (OSError, ValueError, IndexError):  # onnxruntime loaded it: not ours to refuse
        return []


def _position_limits(data, position_ids: str | None) -> list[tuple[str, int]]:
    graph = next((value for number, value in fields(data, 0, len(data)) if number == 7), None)
    if not isinstance(graph, tuple):
        return []
    wanted: list[tuple[str, str]] = []  # (what, initializer name)
    rows: dict[str, int] = {}  # initializer name -> its first dimension
    for number, value in fields(data, *graph):
        if number == 1 and isinstance(value, tuple):  # NodeProto
            node = _node(data, value)
            if node["op_type"] == "GroupQueryAttention" and len(node["input"]) > 7:
                cos_cache = text(data, node["input"][7])
                if cos_cache:
                    wanted.append(("rotary cos_cache", cos_cache))
            elif node["op_type"] == "Gather" and position_ids and len(node["input"]) == 2 and \
                    text(data, node["input"][1]) == position_ids and node["axis"] == 0:
                table = text(data, node["input"][0])
                wanted.append((f"position table '{table}'", table))
        elif number == 5 and isinstance(value, tuple):  # TensorProto
            name, dims = None, []
            for field, item in fields(data, *value):
                if field == 8:
                    name = text(data, item)
                elif field == 1:
                    dims += [item] if isinstance(item, int) else list(packed(data, item))
            if name is not None and dims:
                rows[name] = dims[0]
    limits = {(what, rows[name]) for what, name in wanted if name in rows}
    return sorted(limits, key=lambda limit: limit[1])


def _node(data, span: tuple[int, int]) -> dict:
    """A NodeProto's inputs (spans: most nodes' are never read), op_type and integer
    `axis` attribute (0 when absent)."""
    node = {"input": [], "op_type": "", "axis": 0}
    for number, value in fields(data, *span):
        if number == 1:
            node["input"].append(value)
        elif number == 4:
            node["op_type"] = text(data, value)
        elif number == 5:  # AttributeProto: name 1, i 3
            attribute = dict(fields(data, *value))
            if text(data, attribute.get(1, (0, 0))) == "axis":
                node["axis"] = attribute.get(3, 0)
    return node
