"""`tinygen-train`: one subcommand per module in tinygen_trainer.commands.

Each command module defines HELP, add_arguments(parser) and run(args) -> int.
Modules are imported only when their command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import io
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

from tinygen.errors import TinygenError
from tinygen.help_format import ArgumentParser, HelpFormatter

from .notices import said_by_another

# name -> module under tinygen_trainer.commands
COMMANDS = {
    "tokenizer": "tokenizer",
    "encode": "encode",
    "train": "train",
    "teacher-cache": "teacher_cache",
    "distill": "distill",
    "export": "export",
}
# What torchrun may start several of; the rest would each do the whole job, side by side.
SEVERAL_PROCESSES = ("train", "distill")


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="tinygen-train",
        description="Train, finetune and export causal language models for the tinygen runtime.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        if command is not None and name != command:
            sub.add_parser(name)  # listed, arguments not loaded
            continue
        module = importlib.import_module(f"tinygen_trainer.commands.{module_name}")
        p = sub.add_parser(name, help=module.HELP, description=module.HELP,
                           formatter_class=HelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


# Writes that fail for the machine's reasons, not the program's.
WRITE_FAILURES = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}


# How long a torchrun process whose setup error another process says (notices.said_by_another)
# waits for torchrun to stop it, as it does once that one has said it and failed; past this
# it says the error itself. Leaving at once, it got the other stopped before its line.
SAID_WAIT = 10.0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = _parse(parser, argv)
    with sigterm_as_ctrl_c():
        return _run(args)


def _parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """parser.parse_args, whose usage error (one line, exit 2) goes through _say."""
    if not said_by_another():
        return parser.parse_args(argv)
    text = io.StringIO()
    try:
        with contextlib.redirect_stderr(text):
            return parser.parse_args(argv)
    except SystemExit as exc:
        (_say if exc.code else sys.stderr.write)(text.getvalue())
        raise


def _say(line: str) -> None:
    """Write an error line, unless another torchrun process says the same (said_by_another)."""
    if said_by_another():
        try:
            with sigterm_as_ctrl_c():  # a usage error comes before main's
                time.sleep(SAID_WAIT)
        except KeyboardInterrupt:  # torchrun stopping this process (SIGTERM), or Ctrl-C
            return
    sys.stderr.write(line)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command not in SEVERAL_PROCESSES and _under_torchrun():
            raise TinygenError(f"{args.command} runs in one process: run it without torchrun "
                               f"(only {' and '.join(SEVERAL_PROCESSES)} use several)")
        return args._run(args) or 0
    except TinygenError as exc:
        # One write: print() writes the text and the newline apart, and under torchrun, where
        # every process may say its error, two processes' lines could run together.
        _say(f"tinygen-train: error: {exc}\n")
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise  # anything else is a bug to see whole
        # A full disk or a read-only folder met anywhere (metrics.jsonl, TensorBoard, a cache):
        # what and where, not a traceback. Checkpoints and caches are written atomically.
        where = f" ({exc.filename})" if exc.filename else ""
        _say(f"tinygen-train: error: {exc.strerror}{where}; fix that and run the same "
             f"command again (train and distill with --resume)\n")
        return 2
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # Ctrl-C reaches every process: one says so
            sys.stderr.write("tinygen-train: interrupted\n")
        return 130


@contextlib.contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """SIGTERM (kill, docker stop, a scheduler's preemption, torchrun stopping the other
    processes) stops a command as Ctrl-C does: its temp files are removed and it says what
    it kept. The default action ended the process on the spot."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is not threading.main_thread():  # only it takes signals
        yield
        return
    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def _under_torchrun() -> bool:
    try:
        return int(os.environ.get("WORLD_SIZE") or 1) > 1
    except ValueError:  # train's own check names a bad WORLD_SIZE
        return False


if __name__ == "__main__":
    sys.exit(main())
