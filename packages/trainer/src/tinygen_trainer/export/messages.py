"""Turning a third-party exception into the tail of a one-line TinygenError."""


def first_line(exc: BaseException, limit: int = 200) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:limit] if text else type(exc).__name__
