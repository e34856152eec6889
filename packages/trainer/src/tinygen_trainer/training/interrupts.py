"""A stop signal under torchrun, taken by every process at the end of the same step.

Ctrl-C reaches every process of a torchrun job (the terminal signals them all, and torchrun
passes on the one it gets), as does a scheduler's SIGTERM. Raised where it landed, one
process could leave its step while another sat in that step's all-reduce waiting for it:
both hung until torchrun killed them 30 s later, with no "interrupted" line (2 of 5 tries).
Inside `StepEnd` a signal only marks the process; after each step the processes compare
marks (one scalar all-reduce over gloo: 0.2-0.3 ms a step on a 2-core CPU) and, if any has
one, all stop there together, each as one process stops at Ctrl-C: the last checkpoint kept
and --resume said.
"""

from __future__ import annotations

import signal
import threading
from typing import Callable


class StepEnd:
    """Around the training steps; `check()` after each step raises KeyboardInterrupt on
    every process once any of them got SIGINT or SIGTERM. `any_process(flag)` says whether
    any process's flag is set (every process calls it); None: one process, where a signal
    stops it on the spot as usual."""

    def __init__(self, any_process: Callable[[bool], bool] | None = None):
        self.any_process = any_process
        self.asked = False
        self._before: dict[int, object] = {}

    def __enter__(self) -> "StepEnd":
        if self.any_process is not None and threading.current_thread() is threading.main_thread():
            for signum in (signal.SIGINT, signal.SIGTERM):
                self._before[signum] = signal.signal(signum, self._mark)
        return self

    def _mark(self, signum, frame) -> None:
        self.asked = True

    def check(self) -> None:
        if self._before and self.any_process(self.asked):
            raise KeyboardInterrupt

    def __exit__(self, *exc) -> None:
        # A signal after the last check, as the steps end, is dropped: raised here, on this
        # process alone, it would leave the others waiting in the final save.
        for signum, handler in self._before.items():
            signal.signal(signum, handler)
        self._before.clear()
