"""The one error type the library raises for anything a user can fix.

The CLI turns it into a single line on stderr and exit code 2; everything else
is a bug and keeps its traceback. Messages name options as Python does
(min_new_tokens, resume=True); `respell` names them as a front end does (the CLI's
--min-new-tokens and --resume, the server's min_tokens).
"""

import re
from typing import Mapping


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception (or a TinygenError) as the tail of a one-line message."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."  # a cut says so


# A value the message quotes ('min_new_tokens' given as a stop string): never respelled. Its
# quote stands apart from words, so the apostrophe of "model's" starts none.
_QUOTED = r"""(?<!\w)'(?:[^'\\]|\\.)*'(?!\w)|(?<!\w)"(?:[^"\\]|\\.)*"(?!\w)"""


def respell(message: str, names: Mapping[str, str]) -> str:
    """`message` with the options it names spelled as `names` says (Python's spelling -> the
    front end's). A name with an underscore or an '=' (min_new_tokens, resume=True) is
    respelled wherever it stands, but for quoted values and paths (/tmp/max_new_tokens.txt);
    a plain word (stop, seed) only where the message begins, where an option's message names
    it ("stop must be ...") and prose could not."""
    compound = sorted((n for n in names if not n.isalpha()), key=len, reverse=True)
    if compound:
        pattern = re.compile(f"({_QUOTED})|(?<![\\w./-])({'|'.join(map(re.escape, compound))})"
                             f"(?![\\w/-]|\\.\\w)")
        message = pattern.sub(lambda m: m[1] or names[m[2]], message)
    first = re.match(r"[a-z]+(?=[ :])", message)
    if first and first[0] in names:
        message = names[first[0]] + message[first.end():]
    return message


class TinygenError(ValueError):
    """Bad input, a missing or corrupt model file, an unusable option: says what to fix."""


class ModelFormatError(TinygenError):
    """The model directory is missing a file, or a file does not match the manifest."""


class PromptTooLong(TinygenError):
    """A prompt that does not fit the model's window (the server's context_length_exceeded)."""
