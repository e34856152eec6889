"""Progress bars: tqdm on a terminal; off one (a log file, a pipe, CI), plain lines.

tqdm redraws its bar with a carriage return up to ten times a second. On a terminal
that is one line changing in place; in a log it is every redraw, joined by \\r on one
line (a two-hour run: tens of thousands). Off a terminal progress_bar() returns a
LineProgress instead, which writes the same figures as whole lines, at most one every
LINE_EVERY_S seconds, and a last one when it closes.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from tqdm.auto import tqdm

LINE_EVERY_S = 30.0  # off a terminal: at most one progress line this often
# In Jupyter, tqdm.auto draws a widget: stderr is no terminal there, and yet no log either.
_NOTEBOOK = any(kind.__module__ == "tqdm.notebook" for kind in tqdm.__mro__)
LINE_FORMAT = ("{desc}: {percentage:3.0f}% {n_fmt}/{total_fmt} "
               "[{elapsed}<{remaining}, {rate_fmt}{postfix}]")


def progress_bar(total: int, desc: str, unit: str, *, initial: int = 0, enabled: bool = True,
                 leave: bool = True, unit_scale: bool = False, file: TextIO | None = None):
    """A bar with tqdm's update / set_postfix / close / n, whichever way it is shown."""
    file = file or sys.stderr
    enabled = enabled and file is not None  # None: started with stderr closed (2>&-)
    if enabled and not on_terminal(file) and not _NOTEBOOK:
        return LineProgress(total, desc, unit, initial=initial, leave=leave,
                            unit_scale=unit_scale, file=file)
    return tqdm(total=total, initial=initial, desc=desc, unit=unit, unit_scale=unit_scale,
                leave=leave, file=file, disable=not enabled, dynamic_ncols=True)


def on_terminal(file: TextIO) -> bool:
    """A terminal with a width. A pseudo-terminal no one sized (`docker run -t` in CI) has
    0 columns, where tqdm draws its bar in nothing: a whole run without progress."""
    try:
        return file.isatty() and os.get_terminal_size(file.fileno()).columns > 0
    except (AttributeError, ValueError, OSError):  # no isatty or fileno, or closed
        return False


class LineProgress:
    """A tqdm bar's figures as whole lines: at most one every LINE_EVERY_S seconds, and the
    last when it closes (leave=True; a bar that clears itself leaves no line either)."""

    def __init__(self, total: int, desc: str, unit: str, initial: int = 0, leave: bool = True,
                 unit_scale: bool = False, file: TextIO | None = None):
        self.total, self.desc, self.unit, self.unit_scale = total, desc, unit, unit_scale
        self.n = self.initial = initial
        self.leave = leave
        self.file = file or sys.stderr
        self.postfix = ""
        self.started = self.last_line = time.monotonic()
        self.shown: tuple[int, str] | None = None  # (n, postfix) of the last line written
        self.closed = False

    def update(self, n: int = 1) -> None:
        self.n += n
        now = time.monotonic()
        # The last step's line is close's: written here, training's loss (set after the
        # step) came too late for it, and close wrote 100% a second time with the loss.
        last = self.leave and self.n >= self.total
        if now - self.last_line >= LINE_EVERY_S and not last:
            self._line(now)

    def set_postfix(self, refresh: bool = True, **values: Any) -> None:
        self.postfix = ", ".join(f"{name}={value}" for name, value in values.items())

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.leave and self.n > self.initial and self.shown != (self.n, self.postfix):
            self._line(time.monotonic())

    def _line(self, now: float) -> None:
        self.last_line, self.shown = now, (self.n, self.postfix)
        elapsed = now - self.started
        rate = (self.n - self.initial) / elapsed if elapsed > 0 else None
        text = tqdm.format_meter(self.n, self.total, elapsed, prefix=self.desc, unit=self.unit,
                                 unit_scale=self.unit_scale, rate=rate, initial=self.initial,
                                 postfix=self.postfix or None, bar_format=LINE_FORMAT)
        self.file.write(text + "\n")  # one write: whole lines, even beside other processes
        self.file.flush()

    def __enter__(self) -> "LineProgress":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
