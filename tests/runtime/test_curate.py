"""`tinygen curate`, driven through a pseudo-terminal as a person would use it."""

import json
import os
import pty
import select
import subprocess
import sys
import time

from tinygen import TextGenerator


class Terminal:
    def __init__(self, argv):
        self.master, slave = pty.openpty()
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, close_fds=True)
        os.close(slave)
        self.screen = ""

    def expect(self, text, timeout=60):
        deadline = time.monotonic() + timeout
        while text not in self.screen:
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"waited for {text!r}; screen:\n{self.screen}"
            if select.select([self.master], [], [], remaining)[0]:
                try:
                    self.screen += os.read(self.master, 4096).decode("utf-8", "replace")
                except OSError:  # the child closed the terminal
                    break
        assert text in self.screen, self.screen
        index = self.screen.index(text) + len(text)
        seen, self.screen = self.screen[:index], self.screen[index:]
        return seen

    def send(self, line):
        os.write(self.master, (line + "\n").encode())

    def close(self):
        code = self.proc.wait(timeout=60)
        os.close(self.master)
        return code


def test_curate_pick_reroll_edit_undo_and_save(optimum_gpt2_dir, tmp_path):
    session_file = tmp_path / "story.json"
    term = Terminal([sys.executable, "-m", "tinygen.cli", "curate", "Once", "--model", str(optimum_gpt2_dir),
                     "-k", "3", "--seed", "10", "--max-new-tokens", "6", "--save", str(session_file)])
    term.expect("> ")                 # round 1: seeds 10, 11, 12
    term.send("r")                    # reroll: seeds 13, 14, 15
    term.expect("> ")
    term.send("2")                    # keep the candidate of seed 14
    term.expect("> ")
    term.send("e 1")                  # edit candidate 1 of the next round (seeds 16..18)
    term.expect("new text for [1]: ")
    term.send(" and then")
    term.expect("> ")
    term.send("1")                    # next round: seeds 19..21, keep seed 19
    term.expect("> ")
    term.send("u")                    # undo that choice
    term.expect("> ")
    term.send("x")                    # not a command: help, and nothing changes
    term.expect("? ")
    term.send("q")
    assert term.close() == 0

    saved = json.loads(session_file.read_text())
    rounds = saved["rounds"]
    assert [r["seeds"] for r in rounds] == [[13, 14, 15], [16, 17, 18]]
    assert [r["choice"] for r in rounds] == [1, 0] and rounds[1]["edited"] and rounds[1]["text"] == " and then"
    assert saved["text"] == "Once" + rounds[0]["text"] + " and then"
    # The kept candidate is exactly what its seed makes alone.
    gen = TextGenerator(optimum_gpt2_dir)
    [alone] = gen.generate("Once", seed=14, max_new_tokens=6)
    assert rounds[0]["text"] == str(alone) == rounds[0]["candidates"][1]


def test_a_choice_of_digits_int_cannot_read_is_not_a_command(optimum_gpt2_dir):
    """'²' passes str.isdigit but int() refuses it: it is asked again, not a traceback."""
    import io

    from tinygen.curate import run_curate

    out = io.StringIO()
    session = run_curate(TextGenerator(optimum_gpt2_dir), "Once", 3, 1, {"max_new_tokens": 3}, None,
                         io.StringIO("²\ne ²\n٢\nq\n"), out)
    assert out.getvalue().count("? [1-3] choose") == 2
    assert [r.choice for r in session.rounds] == [1]  # '٢' is an Arabic-Indic 2


def test_a_saved_session_goes_on_and_is_never_written_over(optimum_gpt2_dir, tmp_path):
    """Run again with --save, the session was replaced by an empty one; an edit cut off by the
    end of input was kept as an empty text."""
    import io

    import pytest

    from tinygen import TinygenError
    from tinygen.curate import run_curate

    gen, path = TextGenerator(optimum_gpt2_dir), tmp_path / "story.json"
    options = {"max_new_tokens": 3}
    first = run_curate(gen, "Once", 2, 1, options, str(path), io.StringIO("1\n2\n"), io.StringIO())
    assert len(first.rounds) == 2
    out = io.StringIO()
    again = run_curate(gen, "Once", 2, 50, options, str(path), io.StringIO("1\ne 2\n"), out)
    assert again.rounds[:2] == first.rounds and len(again.rounds) == 3  # the edit never came
    assert out.getvalue().startswith(first.text + "\n")
    saved = json.loads(path.read_text())
    assert saved["text"] == again.text and len(saved["rounds"]) == 3
    assert again.rounds[2].seeds == [50, 51]
    with pytest.raises(TinygenError, match=r"holds a session started from another prompt \('Once'\)"):
        run_curate(gen, "Twice", 2, 1, options, str(path), io.StringIO("q\n"), io.StringIO())
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes", encoding="utf-8")
    with pytest.raises(TinygenError, match="is not a curate session .* give another --save"):
        run_curate(gen, "Once", 2, 1, options, str(notes), io.StringIO("q\n"), io.StringIO())
    assert notes.read_text() == "my notes" and json.loads(path.read_text()) == saved
