"""The scripts under tools/ (bench, teacher, tinymodel) as a whole: --help says what each option's
default is (the parser each script builds, taken as it starts to parse, worded by its formatter),
and a Python without the dev venv's packages gets one line saying to use it."""

from __future__ import annotations

import argparse
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"
SCRIPTS = sorted(p for folder in ("bench", "teacher", "tinymodel")
                 for p in (TOOLS / folder).glob("*.py") if "ArgumentParser(" in p.read_text())


class _Parsing(BaseException):
    """Raised where the script's parser would parse: past run_main's handlers, with the parser."""


def script_parser(script: Path, monkeypatch) -> argparse.ArgumentParser:
    def stop(parser, *args, **kwargs):
        raise _Parsing(parser)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", stop)
    monkeypatch.setattr(sys, "argv", [str(script)])
    monkeypatch.setattr(sys, "path", list(sys.path))  # the scripts put tools/ folders on it
    with pytest.raises(_Parsing) as parsing:
        runpy.run_path(str(script), run_name="__main__")
    return parsing.value.args[0]


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_help_states_every_default(script, monkeypatch):
    """An option with a default shows it (or its help says what it is); a raw description
    formatter of argparse's own would drop them, and an option without help shows nothing."""
    parser = script_parser(script, monkeypatch)
    formatter = parser._get_formatter()
    unsaid = [action.option_strings[-1] for action in parser._actions
              if action.option_strings and action.nargs != 0
              and action.default is not None and action.default != argparse.SUPPRESS
              and not (isinstance(action.default, (str, list, tuple)) and not action.default)
              and "default" not in (formatter._get_help_string(action) if action.help else "")]
    assert unsaid == []


@pytest.mark.parametrize("script", ["bench/compare.py", "bench/venvs.py", "teacher/smollm2.py",
                                    "tinymodel/build.py", "tinymodel/corpus.py"])
def test_a_python_without_tinygen_is_told_to_use_the_dev_venv(script):
    """The Makefile's and README's entry points; -S: no site-packages, so no tinygen."""
    done = subprocess.run([sys.executable, "-S", str(TOOLS / script), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (2, "")
    assert done.stderr == (f"{Path(script).name}: error: {sys.executable} has no tinygen: run "
                           f"`make dev`, then this script with .venv/bin/python\n")
