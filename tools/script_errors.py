"""How the Python scripts under tools/ end on bad input: one line on stderr, exit code 2.

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # tools/
    from script_errors import ArgumentParser, ScriptError, run_main  # first: no tinygen, one line

    parser = ArgumentParser(...)        # usage errors: `PROG: error: MESSAGE (see PROG --help)`
    ArgumentParser(description=__doc__, formatter_class=RawDescriptionHelpFormatter)  # as written
    raise ScriptError("--blocks must be >= 1")   # a refusal found past argparse
    if __name__ == "__main__":
        run_main(main)                  # ScriptError, TinygenError, a missing file: one line

A traceback is kept for what is not the user's input to fix (a bug in the script).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

try:
    from tinygen.errors import TinygenError
    from tinygen.help_format import ArgumentParser, HelpFormatter  # noqa: F401  (re-exported)
except ModuleNotFoundError as exc:  # a Python without the dev venv's packages: not a traceback
    if exc.name != "tinygen":
        raise
    print(f"{Path(sys.argv[0]).name}: error: {sys.executable} has no tinygen: run `make dev`, "
          f"then this script with .venv/bin/python", file=sys.stderr)
    sys.exit(2)


class RawDescriptionHelpFormatter(argparse.RawDescriptionHelpFormatter, HelpFormatter):
    """A description printed as written (a docstring with a usage block), and the defaults
    tinygen's formatter adds; argparse's own raw formatter would drop them."""


class ScriptError(Exception):
    """Bad input a script found itself: the message says what to fix."""


def run_main(main: Callable[[], int | None], prog: str | None = None) -> NoReturn:
    prog = prog or Path(sys.argv[0]).name
    try:
        code = main() or 0
    except (ScriptError, TinygenError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        code = 2
    except (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError) as exc:
        print(f"{prog}: error: {exc.strerror}: {exc.filename}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        code = 130
    sys.exit(code)
