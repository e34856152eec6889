"""The `tinygen` CLI run in this process, for the runtime's tests."""

from __future__ import annotations

import io

from tinygen.cli import main


def run(argv, out=None) -> tuple[int, str, str]:
    """Exit code, stdout and stderr of `tinygen ARGV`; `out`: stdout to write to instead."""
    out, err = out or io.StringIO(), io.StringIO()
    code = main(argv, out=out, err=err)
    return code, out.getvalue(), err.getvalue()


class ClosedPipe(io.StringIO):
    """stdout read by `| head`, which leaves after the first write: every write after it fails."""

    def write(self, text):
        if self.getvalue():
            raise BrokenPipeError(32, "Broken pipe")
        return super().write(text)
