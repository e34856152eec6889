"""`replacements.json`: strings mapped to special tokens on encode, tokens back to text on decode.

    {
      "format_version": 1,
      "encode": [{"pattern": "https?://\\\\S+", "regex": true, "token": "<|url|>"}],
      "decode": {"<|url|>": "<url>"},
      "ban": ["<|url|>"]
    }

`encode` rules run in order on the text before it is tokenized, never matching into
a special token (a record's <|body|>, or a token an earlier rule wrote); `decode` says
what text a special token stands for when it is generated; `ban` lists tokens
that are never generated. The trainer writes this file with the model; the
runtime applies it on every encode and decode.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Iterable, Mapping

from .atomic import atomic_write_text
from .errors import ModelFormatError, first_line

FORMAT_VERSION = 1
FILE_NAME = "replacements.json"
_RULE_KEYS = {"pattern", "regex", "token"}


def regex_problem(pattern: str) -> str | None:
    """What keeps `pattern` from being a replacement regex, as the end of a sentence naming
    it (its file and rule, or its command-line flag); None when it is fine."""
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        return f"is not a valid regex ({exc})"
    if compiled.fullmatch(""):  # it would put the token between every character
        return "matches the empty string; make it match at least one character (+ instead of *)"
    return None


@dataclass(frozen=True)
class EncodeRule:
    pattern: str
    token: str
    regex: bool = False

    def apply(self, text: str) -> str:
        if self.regex:
            return re.sub(self.pattern, lambda _: self.token, text)
        return text.replace(self.pattern, self.token)


@lru_cache(maxsize=32)
def _tokens_pattern(tokens: frozenset[str]) -> re.Pattern:
    """Splits a text around `tokens` (one capturing group), longest first."""
    longest_first = sorted(tokens, key=len, reverse=True)
    return re.compile("(" + "|".join(re.escape(t) for t in longest_first) + ")")


@dataclass(frozen=True)
class Replacements:
    encode: tuple[EncodeRule, ...] = ()
    decode: Mapping[str, str] = field(default_factory=dict)
    ban: tuple[str, ...] = ()
    # Where it was read from, for check_vocab's message (a --replacements file is not
    # always named replacements.json).
    source: str = field(default=FILE_NAME, compare=False, repr=False)

    def tokens(self) -> set[str]:
        """Every token the config names; each must be in the model's vocabulary."""
        return {r.token for r in self.encode} | set(self.decode) | set(self.ban)

    def apply_encode(self, text: str, keep: Iterable[str] = ()) -> str:
        """The text with every rule applied, in order. No rule matches into a special token:
        one of `keep` (the tokenizer's, e.g. a record's <|body|>) or one an earlier rule
        wrote, so 'https?://\\S+' stops before the <|keywords|> after a URL instead of
        swallowing the field token."""
        if not self.encode:
            return text
        tokens = _tokens_pattern(frozenset(keep) | {r.token for r in self.encode})
        for rule in self.encode:
            pieces = tokens.split(text)  # the tokens at odd indices, left as they are
            pieces[::2] = [rule.apply(p) if p else p for p in pieces[::2]]
            text = "".join(pieces)
        return text

    def to_json(self) -> dict[str, Any]:
        return {
            "format_version": FORMAT_VERSION,
            "encode": [{"pattern": r.pattern, "regex": r.regex, "token": r.token} for r in self.encode],
            "decode": dict(self.decode),
            "ban": list(self.ban),
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write atomically; `path` is the file or the model directory."""
        path = Path(path)
        if path.is_dir():
            path = path / FILE_NAME
        atomic_write_text(path, json.dumps(self.to_json(), indent=2, ensure_ascii=False) + "\n")
        return path

    @classmethod
    def from_json(cls, data: Any, source: str = FILE_NAME) -> "Replacements":
        def fail(what: str) -> ModelFormatError:
            return ModelFormatError(f"{source}: {what}")

        if not isinstance(data, dict):
            raise fail("expected a JSON object")
        unknown = sorted(set(data) - {"format_version", "encode", "decode", "ban"})
        if unknown:
            raise fail(f"unknown key '{unknown[0]}' (known: format_version, encode, decode, ban)")
        version = data.get("format_version", FORMAT_VERSION)
        if not isinstance(version, int) or isinstance(version, bool):
            raise fail(f"'format_version' must be an integer, got {version!r}")
        if version > FORMAT_VERSION:
            raise fail(f"format_version {version} is newer than this tinygen reads "
                       f"({FORMAT_VERSION}); upgrade with: pip install -U tinygen")
        if version < 1:  # no tinygen writes it: a hand edit
            raise fail(f"format_version {version} is not one tinygen writes ({FORMAT_VERSION}); "
                       f"set it to {FORMAT_VERSION}")
        encode = data.get("encode", [])
        if not isinstance(encode, list):
            raise fail(f"'encode' must be a list of rules (objects with pattern and token), "
                       f"got {encode!r}")
        rules = []
        for i, rule in enumerate(encode):
            where = f"encode[{i}]"
            if not isinstance(rule, dict):
                raise fail(f"'{where}' must be an object with pattern and token")
            extra = sorted(set(rule) - _RULE_KEYS)
            if extra:
                raise fail(f"unknown key '{where}.{extra[0]}'")
            if not isinstance(rule.get("pattern"), str) or not rule["pattern"]:
                raise fail(f"'{where}.pattern' must be a non-empty string")
            if not isinstance(rule.get("token"), str) or not rule["token"]:
                raise fail(f"'{where}.token' must be a non-empty string")
            regex = rule.get("regex", False)
            if not isinstance(regex, bool):
                raise fail(f"'{where}.regex' must be true or false")
            problem = regex_problem(rule["pattern"]) if regex else None
            if problem:
                raise fail(f"'{where}.pattern' {rule['pattern']!r} {problem}")
            rules.append(EncodeRule(rule["pattern"], rule["token"], regex))
        decode = data.get("decode", {})
        if not isinstance(decode, dict) or not all(isinstance(v, str) for v in decode.values()):
            raise fail("'decode' must map tokens to strings")
        ban = data.get("ban", [])
        if not isinstance(ban, list) or not all(isinstance(t, str) and t for t in ban):
            raise fail("'ban' must be a list of token strings")
        return cls(tuple(rules), dict(decode), tuple(ban), source=source)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Replacements":
        path = Path(path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ModelFormatError(f"replacements file not found: {path}") from None
        except OSError as exc:  # a directory, no permission, ...
            raise ModelFormatError(f"{path}: not a readable replacements file "
                                   f"({exc.strerror or first_line(exc)})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFormatError(f"{path}: not valid JSON ({exc})") from None
        return cls.from_json(data, source=str(path))

    def check_added(self, added: Collection[str], source: str | None = None) -> None:
        """Every encode rule's token must be an added (special) token: an ordinary one's name
        ("Ġsee") put in the text is tokenized as its characters, never as that token."""
        for rule in self.encode:
            if rule.token not in added:
                raise ModelFormatError(
                    f"{source or self.source}: 'encode' maps to '{rule.token}', an ordinary token "
                    f"that the text would spell out in pieces; map to a special token (add it "
                    f"as one when training the tokenizer)")

    def check_vocab(self, vocab: Mapping[str, int], source: str | None = None) -> None:
        """Every named token must exist, or encode/decode would silently do nothing.
        `source` names the config in the message; by default, the file it was read from."""
        source = source or self.source
        for key, tokens in (("encode", [r.token for r in self.encode]),
                            ("decode", list(self.decode)), ("ban", list(self.ban))):
            for token in tokens:
                if token not in vocab:
                    raise ModelFormatError(
                        f"{source}: '{key}' names token '{token}', which is not in the tokenizer's "
                        f"vocabulary (add it as a special token when training the tokenizer)"
                    )
