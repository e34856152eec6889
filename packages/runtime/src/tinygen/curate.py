"""Curated generation: show k continuations, the user picks, rerolls or edits, and it goes on.

    tinygen curate "Once upon a time" -k 3 --save story.json

Every round's candidates have their own seeds (consecutive from --seed), and the
session file records the text, each choice and its seed after every round, so a
session can be reviewed, and any candidate made again alone. Run again with the same
prompt and --save, a session goes on from its last round.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TextIO

from .atomic import atomic_write_text
from .config import check_utf8
from .errors import TinygenError
from .generator import TextGenerator
from .sampling import draw_seed

HELP = "[1-{k}] choose   r reroll   e N edit candidate N   u undo   q finish"
# Each round makes all k candidates before it shows any, and shows them all for a person to
# read and compare: past a screenful that is waiting, not choosing (-k 100000000 made texts for
# hours before the first round, its candidates all held in memory).
MAX_K = 50


@dataclass
class Round:
    seeds: list[int | None]
    candidates: list[str]
    choice: int | None = None  # index into candidates
    text: str = ""  # what was kept: the chosen candidate, or the user's edit of it
    edited: bool = False


@dataclass
class Session:
    prompt: str
    rounds: list[Round] = field(default_factory=list)
    format_version: int = 1

    @property
    def text(self) -> str:
        return self.prompt + "".join(r.text for r in self.rounds if r.choice is not None)

    def save(self, path: Path) -> None:
        data = {"format_version": self.format_version, "prompt": self.prompt, "text": self.text,
                "rounds": [asdict(r) for r in self.rounds if r.choice is not None]}
        atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def load(cls, path: Path) -> "Session":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            session = cls(data["prompt"], [Round(**r) for r in data["rounds"]])
            ok = data.get("format_version") == 1 and isinstance(session.prompt, str) and all(
                isinstance(r.text, str) and isinstance(r.choice, int) for r in session.rounds)
        except (OSError, ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            raise TinygenError(f"{path} is not a curate session (or it is damaged), and saving "
                               f"would write over it; give another --save")
        return session


class Curator:
    def __init__(self, gen: TextGenerator, k: int, seed: int | None, options: dict):
        if k < 1:
            raise TinygenError(f"-k must be >= 1, got {k}")
        if k > MAX_K:
            raise TinygenError(f"-k must be at most {MAX_K}, the continuations a round shows to "
                               f"choose from (all made before any is shown), got {k}")
        self.gen, self.k, self.options = gen, k, options
        self.next_seed = draw_seed() if seed is None else seed
        config = gen.defaults.merged(**options)
        if config.greedy and k > 1:  # k copies of one text to choose from, every round
            raise TinygenError(f"greedy decoding makes all {k} candidates the same text; sample "
                               f"(drop --greedy) to choose between {k}, or use -k 1")
        self.room = prompt_room(gen.manifest.context_window, config.max_new_tokens, config.slide_window)

    def candidates(self, text: str) -> Round:
        # Keep the prompt inside the window, leaving room for the continuation.
        ids = self.gen.tokenizer.encode(text)
        prompt = ids[-self.room:] if len(ids) > self.room else (ids or text)
        texts = self.gen.generate(prompt, n=self.k, seed=self.next_seed, **self.options)
        self.next_seed += self.k
        return Round([t.seed for t in texts], [str(t) for t in texts])


def prompt_room(window: int, max_new: int, slide: bool) -> int:
    """How many tokens of the text so far to give as the prompt (always 1..window-1).

    Room for the whole continuation when it fits in the window. When it does not, the
    text either slides past the window, keeping its last half (so keep that much), or
    stops at the window (so keep one token and let it run as far as it can).
    """
    room = window - max_new
    if room < 1:
        room = window // 2 if slide else 1
    return max(1, min(window - 1, room))


def _read_line(inp: TextIO) -> str:
    """The user's next line, "" at the end of input; a stdin that decodes strictly fails on
    bytes that are not UTF-8, which is one line of error here, not a traceback."""
    try:
        return inp.readline()
    except UnicodeDecodeError:
        raise TinygenError("the input on stdin is not UTF-8 text; give it as UTF-8") from None


class _Screen:
    """The user's input and output together, knowing whether the output's last line is
    open: a prompt ("> ") not yet answered, or answered without an echo that ended its line
    (piped input is not echoed; a terminal echoes the Enter, but not Ctrl-C or Ctrl-D)."""

    def __init__(self, inp: TextIO, out: TextIO):
        self.inp, self.out = inp, out
        self.open = False
        self.echoed = bool(getattr(inp, "isatty", lambda: False)())

    def write(self, text: str) -> None:
        self.out.write(text)
        if text:
            self.open = not text.endswith("\n")

    def flush(self) -> None:
        self.out.flush()

    def readline(self) -> str:
        line = self.inp.readline()
        if self.echoed and line.endswith("\n"):
            self.open = False
        return line

    def end_line(self) -> None:
        if self.open:
            try:
                self.write("\n")
                self.flush()
            except (OSError, ValueError):  # the output is gone: nothing to end
                pass


def run_curate(gen: TextGenerator, prompt: str, k: int, seed: int | None, options: dict,
               save: str | None, inp: TextIO, out: TextIO) -> Session:
    screen = _Screen(inp, out)
    try:
        return _curate(gen, prompt, k, seed, options, save, screen, screen)
    except BaseException:  # its message (tinygen: error, interrupted) starts a line of its own
        screen.end_line()
        raise


def _curate(gen: TextGenerator, prompt: str, k: int, seed: int | None, options: dict,
            save: str | None, inp: _Screen, out: _Screen) -> Session:
    curator = Curator(gen, k, seed, options)
    session = Session(prompt)
    path = Path(save) if save else None
    if path and path.exists() and not path.is_dir():  # a session saved before: go on with it
        session = Session.load(path)
        if session.prompt != prompt:
            raise TinygenError(f"{path} holds a session started from another prompt "
                               f"({session.prompt[:60]!r}); give that prompt to go on with it, "
                               f"or another --save")
    if path:  # a path that cannot be written fails now, not after the first choice
        session.save(path)
    pending = curator.candidates(session.text)
    out.write(f"{session.text}\n")
    while True:
        for i, candidate in enumerate(pending.candidates, 1):
            out.write(f"[{i}] {candidate!r}\n")
        out.write(HELP.format(k=k) + "\n> ")
        out.flush()
        line = _read_line(inp)
        if not line:  # end of input: finish as with q
            line = "q"
        command = line.strip()
        if command == "q":
            break
        if command == "r":
            pending = curator.candidates(session.text)
            continue
        if command == "u":
            chosen = [r for r in session.rounds if r.choice is not None]
            if chosen:
                session.rounds.remove(chosen[-1])
            pending = curator.candidates(session.text)
        # isdecimal, not isdigit: int() refuses digits such as '²' that isdigit accepts.
        elif command.isdecimal() and 1 <= int(command) <= k:
            pending.choice, pending.text = int(command) - 1, pending.candidates[int(command) - 1]
        elif command.startswith("e") and command[1:].strip().isdecimal() and 1 <= int(command[1:]) <= k:
            index = int(command[1:]) - 1
            out.write(f"new text for [{index + 1}]: ")
            out.flush()
            # Its text goes to the tokenizer: bytes that are not UTF-8 (passed on as surrogates
            # under a C.UTF-8 locale) failed there with a TypeError.
            edit = check_utf8(_read_line(inp), "the edit")
            if not edit:  # end of input: finish as with q, not with an empty edit kept
                break
            pending.choice, pending.text, pending.edited = index, edit.rstrip("\n"), True
        else:
            out.write(f"? {HELP.format(k=k)}\n")
            continue
        if pending.choice is not None:
            session.rounds.append(pending)
            pending = curator.candidates(session.text)
        if path:
            session.save(path)
        out.write(f"\n{session.text}\n")
    if path:
        session.save(path)
    out.write(f"\n{session.text}\n")
    return session
