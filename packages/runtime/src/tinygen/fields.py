"""`fields.json`: records with named fields, for context conditioning.

    {"format_version": 1, "names": ["title", "keywords", "body"], "separator": ", "}

The trainer writes every record as `<|title|>...<|keywords|>a, b<|body|>...` then
EOS: the fields it has, in schema order, each after its own special token (list
values joined by the separator). At generation time `generate(context={...})`
writes the given fields the same way and then the token of the field to
generate, and the text ends at EOS or at the next field's token.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from .atomic import atomic_write_text
from .errors import ModelFormatError, TinygenError

FORMAT_VERSION = 1
FILE_NAME = "fields.json"


@dataclass(frozen=True)
class FieldSchema:
    names: tuple[str, ...]
    separator: str = ", "

    def __post_init__(self) -> None:
        # Types first: a list among the names could not go into the set.
        if isinstance(self.names, str) or len(self.names) < 2 or \
                not all(isinstance(n, str) and n.strip() and "|" not in n for n in self.names) or \
                len(set(self.names)) != len(self.names):
            raise TinygenError(f"a field schema needs two or more distinct field names, got {list(self.names)}")
        if not isinstance(self.separator, str):
            raise TinygenError(f"'separator' must be a string, got {self.separator!r}")

    @staticmethod
    def token(name: str) -> str:
        return f"<|{name}|>"

    def tokens(self) -> list[str]:
        return [self.token(n) for n in self.names]

    def _value(self, name: str, value: Any) -> str:
        if isinstance(value, (list, tuple)):
            # Empty items (a trailing comma in --context keywords=a,) are no values: "a, " or
            # a bare field token would be a shape no record had.
            value = self.separator.join(str(v) for v in value if v not in (None, ""))
        if not isinstance(value, str):
            raise TinygenError(f"field '{name}' must be a string or a list of strings, got {type(value).__name__}")
        return value

    def format(self, record: Mapping[str, Any]) -> str:
        """The fields the record has, in schema order, each after its token."""
        values = ((n, self._value(n, record[n])) for n in self.names if record.get(n) is not None)
        return "".join(self.token(n) + value for n, value in values if value)

    def prompt(self, context: Mapping[str, Any], target: str | None = None) -> tuple[str, str]:
        """(prompt text, target field) for generating `target` given `context`."""
        unknown = sorted(set(context) - set(self.names))
        if unknown:
            raise TinygenError(f"unknown context field '{unknown[0]}' (this model's fields: {', '.join(self.names)})")
        if target is None:
            missing = [n for n in self.names if n not in context]
            if not missing:
                raise TinygenError("context fills every field; name a target field to generate")
            target = missing[-1]
        if target not in self.names:
            raise TinygenError(f"unknown target field '{target}' (this model's fields: {', '.join(self.names)})")
        if target in context:
            raise TinygenError(f"field '{target}' is both given and to be generated")
        before = {n: v for n, v in context.items() if self.names.index(n) < self.names.index(target)}
        after = sorted(set(context) - set(before))
        if after:
            raise TinygenError(
                f"field '{after[0]}' comes after '{target}' in this model's records, so it cannot condition it")
        return self.format(before) + self.token(target), target

    def to_json(self) -> dict[str, Any]:
        return {"format_version": FORMAT_VERSION, "names": list(self.names), "separator": self.separator}

    def save(self, folder: str | os.PathLike) -> Path:
        path = Path(folder) / FILE_NAME
        atomic_write_text(path, json.dumps(self.to_json(), indent=2) + "\n")
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "FieldSchema":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ModelFormatError(f"{path}: not a readable fields.json ({exc})") from None
        if not isinstance(data, dict) or set(data) - {"format_version", "names", "separator"}:
            raise ModelFormatError(f"{path}: expected keys format_version, names, separator")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise ModelFormatError(f"{path}: 'format_version' must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise ModelFormatError(f"{path}: format_version {version} is newer than this tinygen "
                                   f"reads")
        if version < 1:
            raise ModelFormatError(f"{path}: format_version {version} is not one tinygen writes "
                                   f"({FORMAT_VERSION}); set it to {FORMAT_VERSION}")
        names = data.get("names", [])
        if not isinstance(names, list):  # a string would pass as one field per character
            raise ModelFormatError(f"{path}: 'names' must be a list of field names, got {names!r}")
        try:
            return cls(tuple(names), data.get("separator", ", "))
        except TinygenError as exc:
            raise ModelFormatError(f"{path}: {exc}") from None

    @classmethod
    def parse(cls, spec: str) -> "FieldSchema | None":
        """`--field title,keywords,body` -> a schema; a single name -> None (plain text field)."""
        names = tuple(n.strip() for n in spec.split(",")) if spec else ()
        return cls(names) if len(names) > 1 else None
