"""`tinygen-train`: one subcommand per module in tinygen_trainer.commands.

Each command module defines HELP, add_arguments(parser) and run(args) -> int.
Modules are imported only when their command runs, so `--help` stays fast.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

from tinygen.errors import TinygenError
from tinygen.help_format import ArgumentParser, HelpFormatter

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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(command if command in COMMANDS else None)
    args = parser.parse_args(argv)
    with sigterm_as_ctrl_c():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        if args.command not in SEVERAL_PROCESSES and _under_torchrun():
            raise TinygenError(f"{args.command} runs in one process: run it without torchrun "
                               f"(only {' and '.join(SEVERAL_PROCESSES)} use several)")
        return args._run(args) or 0
    except TinygenError as exc:
        # One write: print() writes the text and the newline apart, and under torchrun, where
        # every process says its error, two processes' lines could run together.
        sys.stderr.write(f"tinygen-train: error: {exc}\n")
        return 2
    except OSError as exc:
        if exc.errno not in WRITE_FAILURES:
            raise  # anything else is a bug to see whole
        # A full disk or a read-only folder met anywhere (metrics.jsonl, TensorBoard, a cache):
        # what and where, not a traceback. Checkpoints and caches are written atomically.
        where = f" ({exc.filename})" if exc.filename else ""
        sys.stderr.write(f"tinygen-train: error: {exc.strerror}{where}; fix that and run the "
                         f"same command again (train and distill with --resume)\n")
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
