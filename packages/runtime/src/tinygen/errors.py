"""The one error type the library raises for anything a user can fix.

The CLI turns it into a single line on stderr and exit code 2; everything else
is a bug and keeps its traceback.
"""


def first_line(exc: BaseException, limit: int = 200) -> str:
    """A third-party exception (or a TinygenError) as the tail of a one-line message."""
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    line = text.splitlines()[0]
    return line if len(line) <= limit else line[:limit - 3].rstrip() + "..."  # a cut says so


class TinygenError(ValueError):
    """Bad input, a missing or corrupt model file, an unusable option: says what to fix."""


class ModelFormatError(TinygenError):
    """The model directory is missing a file, or a file does not match the manifest."""


class PromptTooLong(TinygenError):
    """A prompt that does not fit the model's window (the server's context_length_exceeded)."""
