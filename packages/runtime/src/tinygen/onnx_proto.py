"""A reader of ONNX's protobuf structure that touches no weights and needs no `onnx` package:
enough to find a graph's position tables (graph_limits.py) and its weights files
(weights_files.py) before onnxruntime loads it.

Field numbers are onnx.proto's: ModelProto.graph 7; GraphProto.node 1, .initializer 5;
NodeProto.input 1, .op_type 4, .attribute 5; TensorProto.dims 1, .name 8,
.external_data 13, .data_location 14; StringStringEntryProto.key 1, .value 2.
"""

from __future__ import annotations


def fields(data, start: int, end: int):
    """(field number, value) of each field of the protobuf message at data[start:end]:
    an int for a varint, (start, end) for a length-delimited field; fixed-width skipped."""
    pos = start
    while pos < end:
        key, pos = varint(data, pos)
        wire = key & 7
        if wire == 0:
            value, pos = varint(data, pos)
        elif wire == 2:
            size, pos = varint(data, pos)
            value, pos = (pos, pos + size), pos + size
        elif wire in (1, 5):
            pos += 8 if wire == 1 else 4
            continue
        else:
            raise ValueError(f"protobuf wire type {wire}")
        if pos > end:
            raise ValueError("protobuf field past its message")
        yield key >> 3, value


def varint(data, pos: int) -> tuple[int, int]:
    """The varint at data[pos]: (its value, the position after it)."""
    result = shift = 0
    while True:
        byte = data[pos]
        result |= (byte & 0x7F) << shift
        pos += 1
        if byte < 0x80:
            return result, pos
        shift += 7


def packed(data, span: tuple[int, int]):
    """The varints of a packed repeated field (dims, for one)."""
    pos, end = span
    while pos < end:
        value, pos = varint(data, pos)
        yield value


def text(data, span) -> str:
    """A string field's text ("" where the field was not length-delimited)."""
    return data[span[0]:span[1]].decode("utf-8", "replace") if isinstance(span, tuple) else ""
